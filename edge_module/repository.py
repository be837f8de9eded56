"""The in-memory set of loaded models. Swaps are a single reference assignment.

A request takes one ``OnnxModel`` reference when it starts and finishes on it, so an in-flight
request completes on the version it started on, whatever is swapped meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edge_module.errors import ModelNotFound
from edge_module.runtime import OnnxModel


@dataclass(frozen=True)
class ServedModel:
    active: OnnxModel
    versions: Mapping[str, OnnxModel]
    source: str = "store"  # "store", "file" or "default"


class ModelRepository:
    def __init__(self) -> None:
        self._models: Mapping[str, ServedModel] = MappingProxyType({})

    def publish(self, name: str, active: OnnxModel, versions: Mapping[str, OnnxModel], source: str = "store") -> None:
        served = ServedModel(active=active, versions=MappingProxyType(dict(versions)), source=source)
        # Copy-on-write: readers see the old mapping or the new one, never a half-updated one.
        self._models = MappingProxyType({**self._models, name: served})

    def drop(self, name: str) -> bool:
        if name not in self._models:
            return False
        self._models = MappingProxyType({key: value for key, value in self._models.items() if key != name})
        return True

    def get(self, name: str, version: str | None = None) -> OnnxModel:
        served = self._models.get(name)
        if served is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if not version:
            return served.active
        model = served.versions.get(version)
        if model is None:
            available = ", ".join(served.versions)
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'; available: {available}")
        return model

    def served(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def snapshot(self) -> Mapping[str, ServedModel]:
        return self._models

    @property
    def ready(self) -> bool:
        return bool(self._models)
