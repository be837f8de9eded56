"""``python -m cloud retrain``: a challenger from the original data plus labelled production rows, scored against
the champion on the most recent labelled rows; registered and promoted only when it is better by a margin.

The candidate search, export and parity gate are ``cloud/workflow.py``'s, unchanged: a retrained model is
made exactly as ``train`` makes one. Both models are scored the same way, through their ONNX files with
onnxruntime (cloud/scoring.py), on rows neither was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cloud import workflow
from cloud.captured import Labels, join_labels, read_capture, records_frame
from cloud.data import default_target, prepare, read_table
from cloud.errors import DataError, ParityError
from cloud.evaluation import SELECTION_METRICS
from cloud.registry import Registry, RegistryEntry
from cloud.report import _html, write_report
from cloud.scoring import read_metadata, score_frame
from edge_module.model_contract import ModelMetadata

PROMOTED = 0
NOT_BETTER = 11
# Metrics score_frame computes, per task; the selection metric must be one of them.
COMPARABLE = {"classification": ("f1_macro", "accuracy"), "regression": ("rmse", "mae", "r2")}


@dataclass(frozen=True)
class RetrainOptions:
    target: str | None = None
    label_column: str = "label"
    holdout_since: datetime | None = None
    holdout_fraction: float = 0.2
    min_improvement: float = 0.01
    register_anyway: bool = False
    alias: str = "production"
    select_by: str | None = None
    train_options: dict[str, Any] = field(default_factory=dict)  # workflow.train's: algorithms, trials, cv, ...
    parity_tolerance: float = 1e-4


@dataclass(frozen=True)
class RetrainResult:
    exit_code: int
    summary: dict[str, Any]
    entry: RegistryEntry | None
    report: Path


def retrain(
    name: str,
    registry: Registry,
    data_source: str,
    capture_source: str,
    labels: Labels,
    options: RetrainOptions,
    out_dir: Path,
    monitor_report: Path | None = None,
) -> RetrainResult:
    champion = registry.get(name, alias="production")
    champion_path = registry.fetch(champion, out_dir)
    metadata = read_metadata(champion_path)
    if not metadata.features or metadata.task not in COMPARABLE:
        raise DataError(f"{name} version {champion.version} has no feature/task metadata for a classifier or regressor")
    features = metadata.feature_names
    metric = _selection_metric(metadata.task, options.select_by)
    higher_is_better = next(m.higher_is_better for m in SELECTION_METRICS[metadata.task] if m.name == metric)

    original = read_table(data_source)
    target = options.target or default_target(data_source, metadata.task)
    if target is None or target not in original.columns:
        raise DataError(f"--target: the original data {data_source} has no target column {target!r}")
    missing = [f for f in features if f not in original.columns]
    if missing:
        raise DataError(f"the original data {data_source} lacks the model's features {missing}")

    capture = read_capture(capture_source, name)
    production = records_frame(capture.records, features)
    joined = join_labels(production, labels)
    if joined.matched == 0:
        raise DataError(
            f"no captured row of {name} has a label in {labels.source} "
            f"({joined.unknown} labels with unknown ids, {joined.ambiguous} ambiguous)"
        )
    labelled = joined.frame.sort_values(["timestamp", "correlationId", "row"], kind="stable").reset_index(drop=True)
    labelled["label"] = _as_target(labelled["label"], original[target], metadata)
    recent, earlier = _split_recent(labelled, options)

    production_rows = earlier[list(features)].assign(**{target: earlier["label"].to_numpy()})
    combined = _concat([original[[*features, target]], production_rows])
    dataset = prepare(combined, source=f"{data_source} + {capture.source}", target=target, task=metadata.task)
    if dataset.report.task != metadata.task or tuple(f.name for f in dataset.schema) != features:
        raise DataError(
            f"the training data no longer has the champion's features {list(features)} "
            f"(prepared: {[f.name for f in dataset.schema]}, dropped: {dataset.report.dropped})"
        )
    run = workflow.train(dataset, select_by=metric, **options.train_options)
    model = workflow.export(run, name, registry.next_version(name), options.parity_tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(run, model.parity, out_dir / "challenger", f"{name} {model.metadata.version} (challenger)")

    holdout = recent[list(features)].assign(**{target: recent["label"].to_numpy()})
    champion_scores = score_frame(champion_path, metadata, holdout, target)
    challenger_scores = score_frame(model.onnx, model.metadata, holdout, target)
    improvement = challenger_scores[metric] - champion_scores[metric]
    if not higher_is_better:
        improvement = -improvement
    better = improvement >= options.min_improvement

    lineage = {
        "parent": {"name": name, "version": champion.version, "sha256": champion.sha256},
        "data": [
            {"role": "original", "source": data_source, "sha256": _source_sha256(data_source, original)},
            {"role": "capture", "source": capture.source, "sha256": capture.sha256},
            {"role": "labels", "source": labels.source, "sha256": labels.sha256},
        ],
        "productionRows": {"training": len(earlier), "holdout": len(recent)},
        "holdout": _holdout_description(recent, options),
        "monitorReport": _monitor_reference(monitor_report),
        "comparison": {
            "metric": metric,
            "champion": champion_scores[metric],
            "challenger": challenger_scores[metric],
            "improvement": round(improvement, 6),
            "minImprovement": options.min_improvement,
        },
    }
    summary: dict[str, Any] = {
        "model": name,
        "metric": metric,
        "higherIsBetter": higher_is_better,
        "champion": {"version": champion.version, "sha256": champion.sha256, "scores": _plain(champion_scores)},
        "challenger": {
            "version": model.metadata.version,
            "algorithm": model.algorithm,
            "params": {k: _jsonable(v) for k, v in model.params.items()},
            "scores": _plain(challenger_scores),
            "parity": model.parity.to_dict(),
        },
        "improvement": round(improvement, 6),
        "minImprovement": options.min_improvement,
        "data": {
            "original": dataset.report.to_dict(),
            "capture": capture.summary(),
            "labels": {"source": labels.source, "sha256": labels.sha256, **joined.summary()},
        },
        "lineage": lineage,
    }
    entry: RegistryEntry | None = None
    if not model.parity.passed:
        summary.update(decision="parity failed: not registered", exitCode=ParityError.exit_code)
        report = _write(summary, out_dir)
        raise ParityError(f"{model.parity.message}; the challenger was not registered (report: {report})")
    if better or options.register_anyway:
        tags = {"retrained_from": champion.version, "dataset": data_source}
        registration = workflow.register(model, registry, tags, lineage)
        entry = registration.entry
        summary["challenger"]["registered"] = entry.version
        # Bytes equal to the latest version's add nothing (idempotent registration): that version is the challenger.
        summary["challenger"]["unchanged"] = not registration.created
    if better:
        assert entry is not None
        entry = registry.promote(name, entry.version, alias=options.alias)
        summary.update(decision=f"promoted: {options.alias} -> version {entry.version}", exitCode=PROMOTED)
    else:
        registered = f"registered as version {entry.version}, " if entry is not None else "not registered, "
        summary.update(
            decision=f"not better by {options.min_improvement}: {registered}not promoted", exitCode=NOT_BETTER
        )
    return RetrainResult(summary["exitCode"], summary, entry, _write(summary, out_dir))


def _selection_metric(task: str | None, select_by: str | None) -> str:
    options = COMPARABLE[task or ""]
    metric = select_by or options[0]
    if metric not in options:
        raise DataError(f"retrain compares {task} models by one of {list(options)}, not {metric!r}")
    return metric


def _split_recent(labelled: Any, options: RetrainOptions) -> tuple[Any, Any]:
    """(recent holdout, earlier rows): the rows at or after --holdout-since, else the newest fraction."""
    if options.holdout_since is not None:
        is_recent = labelled["timestamp"] >= options.holdout_since
        recent, earlier = labelled[is_recent], labelled[~is_recent]
    else:
        if not 0 < options.holdout_fraction < 1:
            raise DataError("--holdout-fraction must be between 0 and 1")
        count = max(1, math.ceil(len(labelled) * options.holdout_fraction))
        recent, earlier = labelled.iloc[len(labelled) - count :], labelled.iloc[: len(labelled) - count]
    if len(recent) == 0:
        raise DataError("no labelled production rows in the holdout window: nothing to compare the models on")
    return recent.reset_index(drop=True), earlier.reset_index(drop=True)


def _holdout_description(recent: Any, options: RetrainOptions) -> dict[str, Any]:
    return {
        "rule": f"since {options.holdout_since.isoformat()}"
        if options.holdout_since
        else f"newest {options.holdout_fraction:.0%} of labelled production rows",
        "rows": len(recent),
        "from": recent["timestamp"].min().isoformat(),
        "to": recent["timestamp"].max().isoformat(),
    }


def _as_target(labels: Any, original_target: Any, metadata: ModelMetadata) -> Any:
    """Production labels in the original target's type (a CSV reads 1 and "1" and 1.0 differently)."""
    import pandas as pd

    if metadata.task == "regression":
        return pd.to_numeric(labels, errors="raise").astype(float)
    if pd.api.types.is_integer_dtype(original_target) or all(isinstance(c, int) for c in metadata.class_labels):
        numeric = pd.to_numeric(labels, errors="coerce")
        if numeric.notna().all() and (numeric % 1 == 0).all():
            return numeric.astype("int64")
    return labels.astype(str)


def _source_sha256(source: str, frame: Any) -> str:
    path = Path(source)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    # Not a single file (sklearn:, a folder, a URL): the hash of the table as read.
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def _monitor_reference(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.is_file():
        raise DataError(f"--monitor-report: no such file {path}")
    payload = path.read_bytes()
    reference: dict[str, Any] = {"path": str(path), "sha256": hashlib.sha256(payload).hexdigest()}
    try:
        report = json.loads(payload)
    except ValueError:
        return reference
    if isinstance(report, dict):
        for key in ("status", "driftedFeatures", "driftedDevices", "metricSignals", "since", "until"):
            if key in report:
                reference[key] = report[key]
    return reference


def _write(summary: dict[str, Any], out_dir: Path) -> Path:
    (out_dir / "retrain.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    markdown = render_markdown(summary)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    (out_dir / "report.html").write_text(_html(markdown, f"retrain: {summary['model']}"), encoding="utf-8")
    return out_dir / "report.md"


def render_markdown(summary: dict[str, Any]) -> str:
    champion, challenger = summary["champion"], summary["challenger"]
    metrics = [m for m in champion["scores"] if isinstance(champion["scores"][m], int | float)]
    lineage = summary["lineage"]
    lines = [
        f"# retrain: {summary['model']}",
        "",
        f"**{summary['decision']}** (exit {summary['exitCode']})",
        "",
        f"Selection metric `{summary['metric']}` ({'higher' if summary['higherIsBetter'] else 'lower'} is better): "
        f"improvement {summary['improvement']}, needed {summary['minImprovement']}.",
        "",
        f"## Champion and challenger on the recent holdout ({lineage['holdout']['rows']} rows, "
        f"{lineage['holdout']['rule']}: {lineage['holdout']['from']} to {lineage['holdout']['to']})",
        "",
        f"| metric | champion (version {champion['version']}) | challenger (version {challenger['version']}) |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {champion['scores'][m]} | {challenger['scores'].get(m)} |" for m in metrics]
    lines += [
        "",
        f"Challenger: `{challenger['algorithm']}` {json.dumps(challenger['params'])}; "
        f"parity: {challenger['parity']['message']}.",
        "",
        "## Lineage",
        "",
        f"- parent: {lineage['parent']['name']} version {lineage['parent']['version']} "
        f"(sha256 `{lineage['parent']['sha256'][:16]}…`)",
    ]
    lines += [f"- {d['role']}: `{d['source']}` sha256 `{d['sha256']}`" for d in lineage["data"]]
    rows = lineage["productionRows"]
    lines.append(f"- labelled production rows: {rows['training']} for training, {rows['holdout']} held out")
    labels = summary["data"]["labels"]
    lines.append(
        f"- labels: {labels['matched']} joined, {labels['unknownIds']} unknown ids, {labels['ambiguous']} ambiguous, "
        f"{labels['duplicates']} duplicates"
    )
    monitor = lineage["monitorReport"]
    lines.append(
        f"- monitor report: `{monitor['path']}` ({monitor.get('status', '?')})" if monitor else "- monitor report: none"
    )
    lines += ["", "The challenger's training report: [challenger/report.md](challenger/report.md)", ""]
    return "\n".join(lines)


def _concat(frames: list[Any]) -> Any:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _plain(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k != "confusion_matrix"}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
