"""What the cloud writes into an ONNX file's metadata and the edge reads back.

The cloud side imports this module, so both sides agree on one definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PREFIX = "edge."
KEY_NAME = PREFIX + "name"
KEY_VERSION = PREFIX + "version"
KEY_TASK = PREFIX + "task"
KEY_FEATURES = PREFIX + "features"
KEY_CLASS_LABELS = PREFIX + "class_labels"
KEY_METRICS = PREFIX + "metrics"
KEY_PROFILE = PREFIX + "profile"
KEY_LIBRARIES = PREFIX + "libraries"
KEY_ALLOW_MISSING = PREFIX + "allow_missing"

TASKS = ("classification", "regression", "clustering")
FEATURE_TYPES = ("numeric", "string")


@dataclass(frozen=True)
class Feature:
    name: str
    type: str = "numeric"


@dataclass(frozen=True)
class ModelMetadata:
    """Metadata a model carries. Every field is optional: any ONNX model can be served."""

    name: str | None = None
    version: str | None = None
    task: str | None = None
    features: tuple[Feature, ...] = ()
    class_labels: tuple[Any, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    # True when the graph imputes missing values, so NaN is a legitimate input.
    allow_missing: bool = False

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def to_props(self) -> dict[str, str]:
        props: dict[str, str] = {}
        if self.name is not None:
            props[KEY_NAME] = self.name
        if self.version is not None:
            props[KEY_VERSION] = self.version
        if self.task is not None:
            props[KEY_TASK] = self.task
        if self.features:
            props[KEY_FEATURES] = json.dumps([{"name": f.name, "type": f.type} for f in self.features])
        if self.class_labels:
            props[KEY_CLASS_LABELS] = json.dumps(list(self.class_labels))
        if self.metrics:
            props[KEY_METRICS] = json.dumps(self.metrics, sort_keys=True)
        if self.profile:
            props[KEY_PROFILE] = json.dumps(self.profile, sort_keys=True)
        if self.libraries:
            props[KEY_LIBRARIES] = json.dumps(self.libraries, sort_keys=True)
        props[KEY_ALLOW_MISSING] = "true" if self.allow_missing else "false"
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse leniently: a malformed optional field is dropped, never fatal to serving."""

        def load(key: str) -> Any:
            raw = props.get(key)
            if raw is None:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                return None

        features_raw = load(KEY_FEATURES)
        features: tuple[Feature, ...] = ()
        if isinstance(features_raw, list):
            features = tuple(
                Feature(name=str(item["name"]), type=str(item.get("type", "numeric")))
                for item in features_raw
                if isinstance(item, dict) and "name" in item
            )
        labels = load(KEY_CLASS_LABELS)
        metrics = load(KEY_METRICS)
        profile = load(KEY_PROFILE)
        libraries = load(KEY_LIBRARIES)
        task = props.get(KEY_TASK)
        return cls(
            name=props.get(KEY_NAME),
            version=props.get(KEY_VERSION),
            task=task if task in TASKS else None,
            features=features,
            class_labels=tuple(labels) if isinstance(labels, list) else (),
            metrics=metrics if isinstance(metrics, dict) else {},
            profile=profile if isinstance(profile, dict) else {},
            libraries=libraries if isinstance(libraries, dict) else {},
            allow_missing=props.get(KEY_ALLOW_MISSING, "false").lower() == "true",
        )
