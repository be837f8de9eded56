"""``python -m cloud [COMMAND [ACTION]] --help`` exits 0 with a usage for every command the parser knows.

The command paths come from the parser itself, so a command added later is covered without touching this file.
Each runs in its own process, as a user types it: argparse formats help only then, and a bad help string
(e.g. a bare ``%``) crashes only then.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cloud.__main__ import build_parser, main


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for action in parser._actions:  # argparse offers no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in sorted(action.choices.items()):
                yield from command_paths(sub, (*prefix, name))


PATHS = list(command_paths(build_parser()))


def test_the_parser_has_commands_and_actions() -> None:
    # The discovery itself works: top level, commands, and the actions under some of them.
    assert () in PATHS and ("deploy",) in PATHS and ("deploy", "validate") in PATHS
    assert len(PATHS) > 12


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "(top level)")
def test_help_exits_0_with_a_usage(path: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloud", *path, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m cloud {' '.join(path)}".rstrip()), result.stdout
    assert len(result.stdout.splitlines()) > 2 and result.stderr == ""


MODEL_COMMANDS = (["train"], ["registry"], ["release"], ["evaluate"], ["endpoint", "deploy"])


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_model_commands_take_the_registry_location(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--registry LOCATION" in text
    assert "'azureml:'" in text and "$CLOUD_REGISTRY" in text
