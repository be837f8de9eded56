"""The monitor's report: summary.json, report.md and report.html with PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud.report import _html


def write_monitor_report(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": out_dir / "summary.json"}
    files["summary.json"].write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    plots = _plots(summary, out_dir)
    files.update(plots)
    title = f"monitor: {summary['model']}"
    markdown = render_markdown(summary, title, [p.name for p in plots.values()])
    files["report.md"] = out_dir / "report.md"
    files["report.md"].write_text(markdown, encoding="utf-8")
    files["report.html"] = out_dir / "report.html"
    files["report.html"].write_text(_html(markdown, title), encoding="utf-8")
    return files


def render_markdown(summary: dict[str, Any], title: str, plots: list[str]) -> str:
    read = summary["capture"]["read"]
    skipped = {k: v for k, v in read["skipped"].items() if v}
    lines = [
        f"# {title}",
        "",
        f"**{summary['status']}** (exit {summary['exitCode']})",
        "",
    ]
    for signal in summary["signals"]:
        if signal["kind"] == "drift":
            lines.append(
                f"- drift on device `{signal['deviceId']}`, version {signal['version']}, window {signal['window']}: "
                f"PSI over {summary['psiThreshold']} for {', '.join(f'`{f}`' for f in signal['features'])}"
            )
        else:
            lines.append(
                f"- version {signal['version']}: {signal['metric']} {signal['live']} against {signal['registered']} "
                f"registered ({signal['relativeDrop']:.1%} worse; limit {summary['metricDrop']:.0%})"
            )
    lines += [
        "",
        "## Data",
        "",
        f"- capture: `{summary['capture']['source']}` (sha256 `{summary['capture']['sha256'][:16]}…`)",
        f"- files {read['files']}, messages {read['messages']}, records read {read['records']}; "
        f"{summary['capture']['records']} of {summary['model']} in the window "
        f"({summary['since'] or 'start'} to {summary['until'] or 'now'}), "
        f"{summary['capture']['outsideWindow']} outside it",
        f"- skipped: {', '.join(f'{k} {v}' for k, v in skipped.items()) or 'none'}",
        f"- other models: {', '.join(f'{k} ({v})' for k, v in summary['capture']['otherModels'].items()) or 'none'}",
        f"- versions not in the registry: "
        f"{', '.join(f'{k} ({v} records)' for k, v in summary['unknownVersions'].items()) or 'none'}",
    ]
    if summary["labels"] is not None:
        labels = summary["labels"]
        lines.append(
            f"- labels: `{labels['source']}`: {labels['matched']} joined, {labels['unknownIds']} with unknown ids, "
            f"{labels['ambiguous']} ambiguous (no row, multi-row request), {labels['duplicates']} duplicates"
        )
    lines += ["", "## Versions", ""]
    lines += [
        "| version | rows | worst feature (PSI) | prediction PSI | labelled | live | registered |",
        "|---|---|---|---|---|---|---|",
    ]
    for version, block in summary["versions"].items():
        drift = block["drift"]
        worst = max(drift, key=lambda f: drift[f]["psi"]) if drift else None
        worst_text = f"{worst} ({drift[worst]['psi']})" if worst else "-"
        live = block.get("live") or {}
        registered = {k: block["registered"][k] for k in live if k in block["registered"]}
        lines.append(
            f"| {version} | {block['rows']} | {worst_text} | {_cell(block['predictions'].get('psi'))} | "
            f"{block.get('labelledRows', '-')} | {_pairs(live)} | {_pairs(registered)} |"
        )
    lines += [
        "",
        f"## Device x version x window ({summary['window']})",
        "",
        f"Windows with fewer than {summary['minRows']} rows are shown, not judged.",
        "",
        "| device | version | window | rows | PSI max | over threshold | prediction PSI |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in summary["groups"]:
        over = ", ".join(group["overThreshold"]) or "-"
        if group["overThreshold"] and not group["enoughData"]:
            over += " (too few rows)"
        lines.append(
            f"| {group['deviceId']} | {group['version']} | {group['window']} | {group['rows']} | {group['psiMax']} | "
            f"{over} | {_cell(group['predictions'].get('psi'))} |"
        )
    if read["errors"]:
        lines += ["", "## Skipped input (first reasons)", ""] + [f"- {e}" for e in read["errors"]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _plots(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    for version, block in summary["versions"].items():
        drift = block["drift"]
        if not drift:
            continue
        names = list(drift)
        values = [drift[n]["psi"] for n in names]
        figure, axes = plt.subplots(figsize=(7, max(2.5, 0.22 * len(names))))
        colors = ["tab:red" if v > summary["psiThreshold"] else "tab:gray" for v in values]
        axes.barh(names, values, color=colors)
        axes.axvline(summary["psiThreshold"], linestyle="--", color="black")
        axes.set_xlabel("PSI against the training profile")
        axes.set_title(f"version {version}: feature drift over the window")
        axes.tick_params(axis="y", labelsize=7)
        name = f"psi-v{version}.png"
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=80)
        plt.close(figure)
        paths[name] = out_dir / name
    if summary["groups"]:
        figure, axes = plt.subplots(figsize=(7, 3.5))
        labels = [f"{g['deviceId']} v{g['version']}\n{g['window'][5:16]}" for g in summary["groups"]]
        axes.bar(range(len(labels)), [g["psiMax"] for g in summary["groups"]], color="tab:blue")
        axes.axhline(summary["psiThreshold"], linestyle="--", color="black")
        axes.set_xticks(range(len(labels)), labels, fontsize=6, rotation=45, ha="right")
        axes.set_ylabel("worst feature PSI")
        axes.set_title("per device x version x window")
        figure.tight_layout()
        figure.savefig(out_dir / "groups.png", dpi=80)
        plt.close(figure)
        paths["groups.png"] = out_dir / "groups.png"
    return paths


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "-"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
