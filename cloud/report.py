"""The training report: Markdown and HTML with PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from cloud.parity import ParityReport
from cloud.training import TrainingRun


def write_report(run: TrainingRun, parity: ParityReport | None, out_dir: Path, title: str) -> dict[str, Path]:
    """Write report.md, report.html, comparison.json, data.json and the plots; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["comparison.json"] = _write_json(out_dir / "comparison.json", run.comparison())
    files["data.json"] = _write_json(out_dir / "data.json", run.dataset.report.to_dict())
    if parity is not None:
        files["parity.json"] = _write_json(out_dir / "parity.json", parity.to_dict())
    for name, path in _plots(run, out_dir).items():
        files[name] = path
    markdown = render_markdown(run, parity, title, [p.name for k, p in files.items() if k.endswith(".png")])
    files["report.md"] = out_dir / "report.md"
    files["report.md"].write_text(markdown, encoding="utf-8")
    files["report.html"] = out_dir / "report.html"
    files["report.html"].write_text(_html(markdown, title), encoding="utf-8")
    return files


def comparison_table(run: TrainingRun) -> str:
    """The comparison as a Markdown table (also readable in a console)."""
    rows = run.comparison()
    columns = [c for c in rows[0] if c != "params"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render_markdown(run: TrainingRun, parity: ParityReport | None, title: str, plots: list[str]) -> str:
    data = run.dataset.report
    best = run.best
    lines = [
        f"# {title}",
        "",
        "## Data",
        "",
        f"- source: `{data.source}`; task: **{data.task}**; target: `{data.target}`",
        f"- rows: {data.rows} (train {len(run.x_train)}, test {len(run.x_test)}); feature columns: {data.columns}",
        f"- column types: {', '.join(f'`{k}` {v}' for k, v in data.column_types.items())}",
        f"- dropped: {', '.join(f'`{k}` ({v})' for k, v in data.dropped.items()) or 'none'}",
        f"- missing %: {', '.join(f'`{k}` {v}' for k, v in data.missing_percent.items() if v) or 'none'}",
    ]
    if data.class_balance:
        lines.append(f"- class balance: {', '.join(f'{k}: {v}' for k, v in data.class_balance.items())}")
    lines += [
        "",
        "## Candidates",
        "",
        f"Selected by cross-validated `{run.select_by.name}` "
        f"({'higher' if run.select_by.higher_is_better else 'lower'} is better); metrics below are on the holdout.",
        "",
        comparison_table(run),
        "",
        f"**Selected: `{best.name}`** with {json.dumps({k: _plain(v) for k, v in best.params.items()})}",
        "",
    ]
    if "per_class" in best.metrics:
        lines += [
            "### Per class (selected model)",
            "",
            "| class | precision | recall | f1 | support |",
            "|---|---|---|---|---|",
        ]
        for label, m in best.metrics["per_class"].items():
            lines.append(f"| {label} | {m['precision']} | {m['recall']} | {m['f1']} | {m['support']} |")
        lines.append("")
    if parity is not None:
        lines += [
            "## Parity gate (onnxruntime vs scikit-learn)",
            "",
            f"**{'PASSED' if parity.passed else 'FAILED'}**: {parity.message}",
            "",
        ]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _plots(run: TrainingRun, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}

    def save(figure: Any, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=80)
        plt.close(figure)
        paths[name] = out_dir / name

    metric = run.select_by.name
    figure, axes = plt.subplots(figsize=(6, 3.5))
    names = [r.name for r in run.results]
    values = [r.metrics.get(metric) or 0.0 for r in run.results]
    colors = ["tab:green" if r.name == run.best.name else "tab:gray" for r in run.results]
    axes.barh(names, values, color=colors)
    axes.set_xlabel(f"holdout {metric}")
    axes.set_title("candidates")
    save(figure, "comparison.png")

    best = run.best
    task = run.dataset.task
    if task == "classification":
        from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

        figure, axes = plt.subplots(figsize=(5, 4.5))
        ConfusionMatrixDisplay(
            np.array(best.metrics["confusion_matrix"]), display_labels=list(best.pipeline.classes_)
        ).plot(ax=axes, colorbar=False)
        axes.set_title(f"confusion matrix: {best.name}")
        save(figure, "confusion_matrix.png")

        figure, axes = plt.subplots(figsize=(5, 4.5))
        probabilities = best.pipeline.predict_proba(run.x_test)
        y = np.asarray(run.y_test)
        for index, label in enumerate(best.pipeline.classes_):
            if len(set((y == label).tolist())) == 2:
                RocCurveDisplay.from_predictions(y == label, probabilities[:, index], name=f"class {label}", ax=axes)
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray")
        axes.set_title(f"ROC (one vs rest): {best.name}")
        save(figure, "roc.png")
    elif task == "regression":
        predicted = best.pipeline.predict(run.x_test)
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
        left.scatter(run.y_test, predicted, s=10)
        lo, hi = float(np.min(run.y_test)), float(np.max(run.y_test))
        left.plot([lo, hi], [lo, hi], linestyle="--", color="gray")
        left.set_xlabel("actual")
        left.set_ylabel("predicted")
        right.scatter(predicted, np.asarray(run.y_test) - predicted, s=10)
        right.axhline(0, linestyle="--", color="gray")
        right.set_xlabel("predicted")
        right.set_ylabel("residual")
        figure.suptitle(f"residuals: {best.name}")
        save(figure, "residuals.png")
    else:
        labels = best.pipeline.predict(run.x_test)
        clusters, counts = np.unique(labels, return_counts=True)
        figure, axes = plt.subplots(figsize=(5, 3.5))
        axes.bar([str(c) for c in clusters], counts)
        axes.set_xlabel("cluster")
        axes.set_ylabel("test rows")
        axes.set_title(f"cluster sizes: {best.name}")
        save(figure, "clusters.png")
    return paths


def _html(markdown: str, title: str) -> str:
    """A dependency-free HTML rendering: tables, headings, images, list items; the rest as paragraphs."""
    body: list[str] = []
    table: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("- ") for c in cells):
                continue
            tag = "th" if not table else "td"
            table.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            source = line[line.index("(") + 1 : -1]
            body.append(f'<p><img src="{html.escape(source)}" alt="{html.escape(source)}"></p>')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;padding:.2em .5em}"
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2, default=_plain) + "\n", encoding="utf-8")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (str, int, float, bool, list, dict)) or value is None else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)
