"""The sidecar's Python API (for notebooks and the CLI): load data, train, compare, export, register.

from cloud import workflow
dataset = workflow.load_data("sklearn:wine")
run = workflow.train(dataset, trials=4)
print(workflow.compare(run))
model = workflow.export(run, "wine", version="1")      # ONNX bytes + metadata, parity checked
registration = workflow.register(model, open_registry("registry"))   # or "azureml:"
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from cloud.data import Dataset, load_dataset
from cloud.errors import ParityError, RegistryError, VersionTaken
from cloud.export import pipeline_to_onnx
from cloud.parity import TOLERANCE as PARITY_TOLERANCE
from cloud.parity import ParityReport, check_parity
from cloud.profile import prediction_profile, training_profile
from cloud.registry import Registration, Registry, RegistryEntry, validate_name
from cloud.report import comparison_table, write_report
from cloud.training import Budget, TrainingRun, train_candidates
from edge_module.model_contract import ModelMetadata

LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas")
REGISTER_ATTEMPTS = 5


@dataclass(frozen=True)
class ExportedModel:
    name: str
    onnx: bytes
    metadata: ModelMetadata
    parity: ParityReport
    algorithm: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    run: TrainingRun
    model: ExportedModel
    entry: RegistryEntry | None
    report: dict[str, Path]
    created: bool = True  # False: the bytes equal the latest version's, nothing was added


def load_data(source: str, target: str | None = None, task: str | None = None, drop: tuple[str, ...] = ()) -> Dataset:
    return load_dataset(source, target=target, task=task, drop=drop)


def train(
    dataset: Dataset,
    *,
    algorithms: tuple[str, ...] = (),
    trials: int = 8,
    seconds: float | None = None,
    cv: int = 3,
    select_by: str | None = None,
    test_size: float = 0.25,
    seed: int = 0,
    progress: bool = False,
) -> TrainingRun:
    return train_candidates(
        dataset,
        algorithms=algorithms,
        budget=Budget(trials=trials, seconds=seconds, cv=cv),
        select_by=select_by,
        test_size=test_size,
        seed=seed,
        progress=progress,
    )


def compare(run: TrainingRun) -> str:
    return comparison_table(run)


def library_versions() -> dict[str, str]:
    import platform

    versions = {name: importlib_metadata.version(name) for name in LIBRARIES}
    versions["python"] = platform.python_version()
    return versions


def export(run: TrainingRun, name: str, version: str, tolerance: float = PARITY_TOLERANCE) -> ExportedModel:
    """Convert the selected candidate to ONNX with its metadata, and run the parity gate on the test split."""
    validate_name(name)
    best = run.best
    dataset = run.dataset
    labels: tuple[Any, ...] = ()
    if dataset.task == "classification":
        labels = tuple(label.item() if hasattr(label, "item") else label for label in best.pipeline.classes_)
    scalar_metrics = {k: v for k, v in best.metrics.items() if isinstance(v, (int, float))}
    profile = training_profile(run.x_train, dataset.schema)
    predictions = prediction_profile(dataset.task, best.pipeline.predict(run.x_test))
    if predictions is not None:
        profile["predictions"] = predictions
    metadata = ModelMetadata(
        name=name,
        version=version,
        task=dataset.task,
        features=dataset.schema,
        class_labels=labels,
        metrics={"algorithm": best.name, **scalar_metrics},
        profile=profile,
        libraries=library_versions(),
        # The graph imputes numeric NaN (and one-hot ignores unseen or empty strings).
        allow_missing=True,
    )
    onnx_bytes = pipeline_to_onnx(best.pipeline, dataset.schema, dataset.task, metadata)
    parity = check_parity(onnx_bytes, best.pipeline, dataset.task, run.x_test, dataset.schema, tolerance)
    return ExportedModel(name, onnx_bytes, metadata, parity, best.name, dict(best.params))


def register(
    model: ExportedModel,
    registry: Registry,
    tags: dict[str, str] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Registration:
    """Register a model that passed parity; one that did not is refused."""
    if not model.parity.passed:
        raise ParityError(model.parity.message)
    assert model.metadata.version is not None
    return registry.register(
        model.name,
        model.onnx,
        metrics=dict(model.metadata.metrics),
        tags={"task": str(model.metadata.task), "algorithm": model.algorithm, **(tags or {})},
        metadata=registry_metadata(model, lineage),
        version=model.metadata.version,
    )


def registry_metadata(model: ExportedModel, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = model.metadata
    record: dict[str, Any] = {
        "task": meta.task,
        "features": [{"name": f.name, "type": f.type} for f in meta.features],
        "class_labels": list(meta.class_labels),
        "algorithm": model.algorithm,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in model.params.items()},
        "parity": model.parity.to_dict(),
        "libraries": meta.libraries,
    }
    if lineage:
        record["lineage"] = lineage
    return record


def train_and_register(
    dataset: Dataset,
    name: str,
    registry: Registry,
    out_dir: Path,
    *,
    tags: dict[str, str] | None = None,
    parity_tolerance: float = PARITY_TOLERANCE,
    **train_options: Any,
) -> Outcome:
    """The CLI's whole flow. The report is written whether or not parity passes; a failing model is not
    registered and ParityError is raised after the report is on disk.

    Idempotent: the model is first exported with the latest version's number (the number is part of the ONNX
    metadata); if those bytes equal the latest version's, nothing is registered (``Outcome.created`` False).
    Otherwise it is exported again with the next number and registered under it."""
    run = train(dataset, **train_options)
    lineage = {"dataset": dataset.report.source, "rows": dataset.report.rows, "training": _settings(train_options)}
    latest = registry.latest(name)
    if latest is not None:
        model = _export_checked(run, name, latest.version, parity_tolerance, out_dir, dataset)
        if hashlib.sha256(model.onnx).hexdigest() == latest.sha256:
            report = write_report(run, model.parity, out_dir, f"{name} {latest.version}: {dataset.report.source}")
            return Outcome(run, model, latest, report, created=False)
    for _ in range(REGISTER_ATTEMPTS):
        model = _export_checked(run, name, registry.next_version(name), parity_tolerance, out_dir, dataset)
        report = write_report(run, model.parity, out_dir, f"{name} {model.metadata.version}: {dataset.report.source}")
        try:
            registration = register(model, registry, {"dataset": dataset.report.source, **(tags or {})}, lineage)
        except VersionTaken:
            continue  # someone registered that version meanwhile: export again with the next one
        return Outcome(run, model, registration.entry, report, created=registration.created)
    raise RegistryError(f"could not claim a version of {name} after {REGISTER_ATTEMPTS} attempts")


def _export_checked(
    run: TrainingRun, name: str, version: str, tolerance: float, out_dir: Path, dataset: Dataset
) -> ExportedModel:
    model = export(run, name, version, tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(model.onnx)
    if not model.parity.passed:
        write_report(run, model.parity, out_dir, f"{name} {version}: {dataset.report.source}")
        raise ParityError(f"{model.parity.message}; the model was not registered (report: {out_dir})")
    return model


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items()) if k != "progress"}
