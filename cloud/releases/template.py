"""Render ``deployment.template.json`` into a deployment manifest for one platform and a set of releases.

Placeholders are ``${NAME}`` inside JSON string values; every one must be defined. ``EDGE_MODULE_IMAGE``
comes from ``EDGE_MODULE_IMAGE_<PLATFORM>`` (e.g. ``EDGE_MODULE_IMAGE_ARM64V8``) unless given directly.
``createOptions`` objects become JSON strings, split into 512-character twin values the way IoT Edge reads
them back (``createOptions``, ``createOptions01`` ... ``createOptions07``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud.releases.errors import TemplateError

PLATFORMS = ("amd64", "arm64v8")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
IMAGE_VARIABLE = "EDGE_MODULE_IMAGE"
DEFAULT_MODULE = "edge-inference"
TEMPLATE_MARKER = "$schema-template"
# IoT Hub caps a twin string value at 512 bytes; edgeAgent concatenates up to 8 numbered values.
CREATE_OPTIONS_CHUNK = 512
CREATE_OPTIONS_MAX_CHUNKS = 8


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TemplateError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise TemplateError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a JSON object")
    return data


def platform_variables(platform: str, variables: Mapping[str, str]) -> dict[str, str]:
    """``variables`` plus ``PLATFORM`` and the module image for ``platform``."""
    if platform not in PLATFORMS:
        raise TemplateError(f"unknown platform {platform!r}: use one of {', '.join(PLATFORMS)}")
    result = dict(variables)
    result["PLATFORM"] = platform
    per_platform = f"{IMAGE_VARIABLE}_{platform.upper()}"
    if per_platform in variables:
        result[IMAGE_VARIABLE] = variables[per_platform]
    return result


def substitute(template: Any, variables: Mapping[str, str]) -> Any:
    """Replace every ``${NAME}``; raise TemplateError naming each undefined placeholder and where it is."""
    missing: dict[str, list[str]] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, f"{path}/{key}") for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, f"{path}/{index}") for index, value in enumerate(node)]
        if isinstance(node, str):

            def replace(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in variables:
                    missing.setdefault(name, []).append(path or "/")
                    return match.group(0)
                return variables[name]

            return PLACEHOLDER.sub(replace, node)
        return node

    result = walk(template, "")
    if missing:
        details = "; ".join(f"${{{name}}} at {', '.join(paths)}" for name, paths in sorted(missing.items()))
        raise TemplateError(f"undefined placeholders: {details} (give them with --set NAME=VALUE or the environment)")
    return result


def chunk_create_options(options: Any, where: str) -> dict[str, str]:
    text = options if isinstance(options, str) else json.dumps(options, separators=(",", ":"))
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise TemplateError(f"{where}: createOptions is not valid JSON: {error}") from None
    chunks = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)] or ["{}"]
    if len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
        raise TemplateError(
            f"{where}: createOptions is {len(text)} characters; IoT Edge takes at most "
            f"{CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_CHUNKS}"
        )
    return {("createOptions" if i == 0 else f"createOptions{i:02d}"): chunk for i, chunk in enumerate(chunks)}


def stringify_create_options(manifest: dict[str, Any]) -> None:
    desired = manifest.get("modulesContent", {}).get("$edgeAgent", {}).get("properties.desired", {})
    groups = [("systemModules", desired.get("systemModules", {})), ("modules", desired.get("modules", {}))]
    for group, modules in groups:
        for module_name, module in modules.items():
            settings = module.get("settings") if isinstance(module, dict) else None
            if not isinstance(settings, dict) or "createOptions" not in settings:
                continue
            where = f"$edgeAgent {group}.{module_name}"
            chunks = chunk_create_options(settings.pop("createOptions"), where)
            for key in [k for k in settings if k.lower().startswith("createoptions")]:
                del settings[key]
            settings.update(chunks)


def render_manifest(
    template: dict[str, Any],
    platform: str,
    variables: Mapping[str, str],
    models: dict[str, Any],
    module: str = DEFAULT_MODULE,
) -> dict[str, Any]:
    """The deployment manifest (``{"modulesContent": ...}``) with ``models`` as the module's desired models."""
    manifest = copy.deepcopy(template)
    manifest.pop(TEMPLATE_MARKER, None)
    modules_content = manifest.get("modulesContent")
    if not isinstance(modules_content, dict):
        raise TemplateError("the template has no modulesContent object")
    agent_modules = modules_content.get("$edgeAgent", {}).get("properties.desired", {}).get("modules", {})
    if module not in agent_modules:
        raise TemplateError(f"module {module!r} is not among the template's $edgeAgent modules {sorted(agent_modules)}")
    # Releases are inserted after substitution: a SAS query string must not be read as a placeholder.
    manifest = substitute(manifest, platform_variables(platform, variables))
    module_twin = manifest["modulesContent"].setdefault(module, {}).setdefault("properties.desired", {})
    module_twin["models"] = copy.deepcopy(models)
    stringify_create_options(manifest)
    result: dict[str, Any] = manifest
    return result


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TemplateError(f"--set expects NAME=VALUE, got {pair!r}")
        result[name] = value
    return result


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=VALUE`` lines (``#`` comments, optional quotes), like the ``.env`` files iotedgedev reads."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TemplateError(f"cannot read {path}: {error.strerror}") from None
    result = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TemplateError(f"{path}:{number}: expected NAME=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[name] = value
    return result
