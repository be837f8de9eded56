"""Offline validation against the official IoT Edge JSON schemas, plus the IoT Hub limits they do not encode.

The schemas are read from one folder (found by ``cloud.releases.schema_sources``) and nothing is fetched while
validating: every ``$ref`` resolves inside a local registry, and a reference to anything else is an error. No
schemas means no validation, and that is an error too, never a skip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from cloud.releases.errors import ManifestInvalid, SchemaUnavailable
from edge_module.release import ReleaseError, parse_release

SCHEMA_BASE_URI = "https://json.schemastore.org/"
DEPLOYMENT_SCHEMA = "azure-iot-edge-deployment-2.0.json"
TEMPLATE_SCHEMA = "azure-iot-edge-deployment-template-4.0.json"
SYSTEM_SCHEMAS = {
    "$edgeAgent": "azure-iot-edgeagent-deployment-{}.json",
    "$edgeHub": "azure-iot-edgehub-deployment-{}.json",
}
# Folders searched inside the schema directory; the first holding a file name wins.
SUBFOLDERS = ("", "schemastore", "azure-iot-cli-extension")
MAX_DESIRED_BYTES = 32 * 1024
MAX_DESIRED_DEPTH = 10
MAX_PROBLEMS = 20
CREATE_OPTIONS_CHUNK = 512  # IoT Hub's cap on a twin string value
CREATE_OPTIONS_KEYS = ("createOptions", *(f"createOptions{i:02d}" for i in range(1, 8)))


class SchemaSet:
    """The ``azure-iot-*.json`` schemas of one folder, resolvable offline by their ids."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @cached_property
    def _files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for sub in SUBFOLDERS:
            folder = self.directory / sub
            if folder.is_dir():
                for path in sorted(folder.glob("azure-iot-*.json")):
                    files.setdefault(path.name, path)
        if not files:
            raise SchemaUnavailable(f"no azure-iot-*.json schemas in {self.directory} (validation cannot be skipped)")
        return files

    def names(self) -> list[str]:
        return sorted(self._files)

    def has(self, name: str) -> bool:
        return name in self._files

    def load(self, name: str) -> dict[str, Any]:
        path = self._files.get(name)
        if path is None:
            raise SchemaUnavailable(f"schema {name} is not in {self.directory} (validation cannot be skipped)")
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    @cached_property
    def _registry(self) -> Any:
        from referencing import Registry, Resource
        from referencing.exceptions import NoSuchResource
        from referencing.jsonschema import DRAFT4

        def offline(uri: str) -> Resource[Any]:
            raise NoSuchResource(uri)  # never fetch: the schema set is all there is

        resources = []
        for name in self._files:
            contents = self.load(name)
            uri = contents.get("id") or contents.get("$id") or SCHEMA_BASE_URI + name
            resources.append((uri, Resource.from_contents(contents, default_specification=DRAFT4)))
        return Registry(retrieve=offline).with_resources(resources)  # type: ignore[call-arg]  # attrs init

    def problems(self, instance: Any, name: str, prefix: str = "") -> list[str]:
        from jsonschema import Draft4Validator
        from referencing.exceptions import Unresolvable

        schema = self.load(name)
        validator = Draft4Validator(schema, registry=self._registry)
        try:
            errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
            return [f"{prefix}{_describe(error)} ({name})" for error in errors]
        except Unresolvable as error:
            raise SchemaUnavailable(f"{name} refers to {error}, which is not among the local schemas") from None


def _where(path: Any) -> str:
    return "/" + "/".join(str(part) for part in path)


def _describe(error: Any) -> str:
    # For anyOf/oneOf the top message only says "not valid under any"; the deepest branch error says why.
    if error.context:
        closest = max(error.context, key=lambda e: len(e.absolute_path))
        return f"{_where(closest.absolute_path)}: {closest.message}"
    return f"{_where(error.absolute_path)}: {error.message}"


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(value) for value in node.values()), default=0)
    return 0


def twin_limit_problems(module: str, desired: Any) -> Iterator[str]:
    size = len(json.dumps(desired, separators=(",", ":")).encode())
    if size > MAX_DESIRED_BYTES:
        yield f"/modulesContent/{module}/properties.desired: {size} bytes, above IoT Hub's {MAX_DESIRED_BYTES}"
    if _depth(desired) > MAX_DESIRED_DEPTH:
        yield f"/modulesContent/{module}/properties.desired: nested deeper than IoT Hub's {MAX_DESIRED_DEPTH} levels"


def _models_problems(where: str, models: Any) -> Iterator[str]:
    if not isinstance(models, dict):
        yield f"{where}: 'models' must be an object of releases"
        return
    for name, block in models.items():
        if block is None:  # null removes the model
            continue
        try:
            parse_release(name, block)
        except ReleaseError as error:
            yield f"{where}/{name}: {error}"


def _create_options_problems(agent: Any) -> Iterator[str]:
    desired = agent.get("properties.desired") if isinstance(agent, dict) else None
    if not isinstance(desired, dict):
        return
    for group in ("systemModules", "modules"):
        modules = desired.get(group)
        for name, module in modules.items() if isinstance(modules, dict) else ():
            settings = module.get("settings") if isinstance(module, dict) else None
            if not isinstance(settings, dict):
                continue
            where = f"/modulesContent/$edgeAgent/properties.desired/{group}/{name}/settings"
            chunks = [settings[key] for key in CREATE_OPTIONS_KEYS if isinstance(settings.get(key), str)]
            extra = sorted(k for k in settings if re.fullmatch(r"createOptions\d+", k) and k not in CREATE_OPTIONS_KEYS)
            if extra:
                yield f"{where}: {', '.join(extra)}: IoT Edge reads createOptions01 to createOptions07 only"
            if any(len(chunk) > CREATE_OPTIONS_CHUNK for chunk in chunks):
                yield f"{where}: a createOptions value is longer than IoT Hub's {CREATE_OPTIONS_CHUNK} characters"
            if chunks:
                try:
                    json.loads("".join(chunks))
                except json.JSONDecodeError as error:
                    yield f"{where}: createOptions (joined) is not valid JSON: {error}"


def manifest_problems(manifest: Any, schemas: SchemaSet, module: str | None = None) -> list[str]:
    problems = schemas.problems(manifest, DEPLOYMENT_SCHEMA)
    content = manifest.get("modulesContent") if isinstance(manifest, dict) else None
    if not isinstance(content, dict):
        return problems
    for key, pattern in SYSTEM_SCHEMAS.items():
        desired = content.get(key, {}).get("properties.desired") if isinstance(content.get(key), dict) else None
        version = desired.get("schemaVersion") if isinstance(desired, dict) else None
        if not isinstance(version, str):
            continue  # the deployment schema has reported it
        name = pattern.format(version)
        if not schemas.has(name):
            known = [n for n in schemas.names() if n.startswith(pattern.split("{")[0])]
            problems.append(f"/modulesContent/{key}: no schema for schemaVersion {version!r} (have {known})")
            continue
        problems += schemas.problems({key: content[key]}, name, prefix="/modulesContent")
    problems += _create_options_problems(content.get("$edgeAgent"))
    for key, twin in content.items():
        if isinstance(twin, dict) and "properties.desired" in twin:
            problems += twin_limit_problems(key, twin["properties.desired"])
    if module is not None:
        desired = content.get(module, {}).get("properties.desired", {}) if isinstance(content.get(module), dict) else {}
        if "models" in desired:
            problems += _models_problems(f"/modulesContent/{module}/properties.desired/models", desired["models"])
    return problems


def _merge(problems: list[str]) -> list[str]:
    """One line per problem, naming every schema that reported it."""
    merged: dict[str, list[str]] = {}
    for problem in problems:
        text, _, schema = problem.rpartition(" (")
        if not text or not schema.endswith(".json)"):
            text, schema = problem, ""
        merged.setdefault(text, [])
        if schema:
            merged[text].append(schema.rstrip(")"))
    return [f"{text} ({', '.join(names)})" if names else text for text, names in merged.items()]


def validate_manifest(manifest: Any, schemas: SchemaSet, source: str, module: str | None = None) -> None:
    problems = _merge(manifest_problems(manifest, schemas, module))
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise ManifestInvalid(f"{source} is not a valid IoT Edge deployment manifest:", shown)


def validate_template(template: Any, schemas: SchemaSet, source: str) -> None:
    problems = schemas.problems(template, TEMPLATE_SCHEMA)
    if problems:
        raise ManifestInvalid(f"{source} is not a valid deployment template (schema-template 4.0):", problems)
