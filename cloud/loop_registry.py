"""The registry as ``monitor`` and ``retrain`` use it: the one place they open it and reach a version's file.

Kept small on purpose: when the registry location (``--registry`` / ``$CLOUD_REGISTRY``: a folder or Azure ML)
arrives, ``open_registry`` becomes a call of its ``open_registry(location)`` and ``model_file`` of
``Registry.fetch``; nothing else in monitor or retrain touches the registry's type.
"""

from __future__ import annotations

from pathlib import Path

from cloud.registry import LocalRegistry, RegistryEntry

REGISTRY_HELP = "the registry: a folder (default: $CLOUD_REGISTRY_DIR or ./registry)"


def open_registry(location: str | None) -> LocalRegistry:
    return LocalRegistry(Path(location) if location else None)


def model_file(registry: LocalRegistry, entry: RegistryEntry, folder: Path) -> Path:
    """A local path to the version's ONNX file (``folder`` is where a remote registry would download it)."""
    return entry.path
