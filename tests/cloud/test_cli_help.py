"""`python -m cloud --help` and every subcommand's help render, and the registry location is documented in each
command that reads or writes models."""

from __future__ import annotations

import argparse

import pytest

from cloud.__main__ import build_parser, main

MODEL_COMMANDS = (["train"], ["registry"], ["release"], ["evaluate"], ["endpoint", "deploy"])


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "registry" in capsys.readouterr().out
    for name in subcommands(build_parser()):
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: python -m cloud {name}")


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_model_commands_take_the_registry_location(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--registry LOCATION" in text
    assert "'azureml:'" in text and "$CLOUD_REGISTRY" in text
