"""Reading the CI definitions: the shell bodies of a pipeline file, its step names, and the `python -m cloud`
calls they make, parsed by the real CLI. Shared by test_pipelines.py and test_monitor_pipelines.py."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.__main__ import build_parser


def shell_scripts(node: Any) -> list[str]:
    """Every shell body in a pipeline file, in order (GitHub `run`, Azure Pipelines `bash`/`script`)."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key in ("run", "bash", "script") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(shell_scripts(value))
        return found
    if isinstance(node, list):
        return [script for item in node for script in shell_scripts(item)]
    return []


def step_names(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node[key] for key in ("name", "displayName") if isinstance(node.get(key), str) and "run" in node]
        own += [node["displayName"]] if "bash" in node and isinstance(node.get("displayName"), str) else []
        return own + [name for value in node.values() for name in step_names(value)]
    if isinstance(node, list):
        return [name for item in node for name in step_names(item)]
    return []


def cloud_calls(script: str) -> list[list[str]]:
    """The argument lists of every `python -m cloud ...` in a shell script (up to a redirect, pipe or `;`)."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        for match in re.finditer(r"python -m cloud (.*)", line):
            command = re.split(r"\s(?:>|\||;|&&)\s?|;", match.group(1), maxsplit=1)[0]
            calls.append(shlex.split(command))
    return calls


def pipeline_calls(path: Path) -> list[list[str]]:
    scripts = shell_scripts(yaml.safe_load(path.read_text())) if path.suffix == ".yml" else [path.read_text()]
    return [call for script in scripts for call in cloud_calls(script)]


# Numeric options come from pipeline variables; argparse checks them with a value of the variable's kind.
NUMERIC_VARIABLES = {
    "$RING_TIMEOUT": "1800",
    "$RING_POLL": "30",
    "$SHADOW_MIN_AGREEMENT": "0.98",
    "$SHADOW_MIN_COMPARED": "500",
    "$SHADOW_TIMEOUT": "14400",
}


def parse(call: list[str]) -> Any:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args([NUMERIC_VARIABLES.get(arg, arg) for arg in call])
    except SystemExit:
        pytest.fail(f"`python -m cloud {shlex.join(call)}` is refused by the CLI: {stderr.getvalue().strip()}")


def script_with(path: Path, command: str) -> str:
    """The one shell body of a pipeline file that runs `python -m cloud <command> ...`."""
    (script,) = [s for s in shell_scripts(yaml.safe_load(path.read_text())) if f"python -m cloud {command} " in s]
    return script


def assert_secrets_from_the_store(path: Path, secrets: list[str]) -> None:
    """No secret literal in the file, and each secret reaches its steps only from the CI's secret store."""
    text = path.read_text()
    assert not re.search(r"SharedAccessKey=|AccountKey=|BEGIN [A-Z ]*PRIVATE KEY|[?&]sig=", text)
    for name in secrets:
        sources = re.findall(rf"^\s*{name}: (.+)$", text, re.MULTILINE)
        assert sources, f"{name} is not passed to any step of {path.name}"
        allowed = {f"${{{{ secrets.{name} }}}}", f"$({name})"}
        assert set(sources) <= allowed, sources
