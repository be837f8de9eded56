"""Draw the architecture picture of the README: ``python docs/architecture.py`` rewrites ``architecture.svg``.

Plain Python writing plain SVG, so the picture is deterministic and needs nothing installed;
``tests/test_docs.py`` checks that the committed SVG is what this file draws.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 980, 560
FONT = "font-family='Helvetica, Arial, sans-serif'"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int
    title: str
    lines: tuple[str, ...] = ()
    fill: str = "#ffffff"
    stroke: str = "#455a64"

    def svg(self) -> str:
        parts = [
            f"<rect x='{self.x}' y='{self.y}' width='{self.w}' height='{self.h}' rx='6' "
            f"fill='{self.fill}' stroke='{self.stroke}' stroke-width='1.2'/>",
            f"<text x='{self.x + 8}' y='{self.y + 17}' font-size='13' font-weight='bold'>{escape(self.title)}</text>",
        ]
        parts += [
            f"<text x='{self.x + 8}' y='{self.y + 33 + 14 * i}' font-size='11'>{escape(line)}</text>"
            for i, line in enumerate(self.lines)
        ]
        return "\n".join(parts)


@dataclass(frozen=True)
class Arrow:
    points: tuple[tuple[int, int], ...]
    label: str = ""
    label_at: tuple[int, int] = (0, 0)
    dashed: bool = False

    def svg(self) -> str:
        path = " ".join(f"{x},{y}" for x, y in self.points)
        dash = " stroke-dasharray='5,4'" if self.dashed else ""
        line = (
            f"<polyline points='{path}' fill='none' stroke='#263238' stroke-width='1.4'{dash} marker-end='url(#head)'/>"
        )
        if not self.label:
            return line
        x, y = self.label_at
        return line + f"\n<text x='{x}' y='{y}' font-size='11' font-style='italic'>{escape(self.label)}</text>"


def group(x: int, y: int, w: int, h: int, title: str, fill: str) -> str:
    return (
        f"<rect x='{x}' y='{y}' width='{w}' height='{h}' rx='10' fill='{fill}' stroke='#90a4ae' "
        "stroke-dasharray='6,4'/>\n"
        f"<text x='{x + 10}' y='{y + 20}' font-size='14' font-weight='bold' fill='#37474f'>{escape(title)}</text>"
    )


CLOUD = "#e3f2fd"
AZURE = "#fff8e1"
EDGE = "#e8f5e9"

GROUPS = (
    group(10, 10, 300, 540, "cloud/: python -m cloud", CLOUD),
    group(330, 10, 220, 540, "Azure", AZURE),
    group(570, 10, 400, 540, "IoT Edge device", EDGE),
)

BOXES = (
    Box(25, 40, 270, 58, "data", ("CSV, Parquet, sklearn:<name>,", "azureml:// URI, Blob URL, edge capture")),
    Box(25, 110, 270, 58, "train and compare", ("scikit-learn pipelines, seeded search + CV,", "report, plots")),
    Box(
        25,
        180,
        270,
        58,
        "export to ONNX + parity gate",
        ("skl2onnx; onnxruntime == scikit-learn", "within 1e-4, or exit 3"),
    ),
    Box(25, 250, 270, 58, "register", ("local registry (immutable versions,", "aliases) | Azure ML model")),
    Box(25, 320, 270, 58, "release", ("ed25519 signature; publish to a folder", "or Azure Blob (read-only SAS)")),
    Box(
        25,
        390,
        270,
        72,
        "deploy",
        (
            "manifest from deployment.template.json,",
            "validated offline; layered deployment;",
            "module twin patch; fleet status",
        ),
    ),
    Box(25, 474, 270, 58, "CI/CD", ("Azure Pipelines, GitHub Actions:", "tests, train, release, canary, fleet")),
    Box(345, 320, 190, 58, "Blob storage", ("model.onnx per version", "+ sha256 metadata")),
    Box(
        345, 390, 190, 72, "IoT Hub", ("deployments, module twins", "desired: models.<name>", "reported: state, drift")
    ),
    Box(
        345,
        40,
        190,
        86,
        "Azure ML",
        ("training jobs and sweeps,", "model registry, managed", "online endpoint running", "the same image"),
    ),
    Box(585, 390, 120, 72, "edgeHub", ("routes, store", "and forward")),
    Box(585, 40, 370, 300, "edge-inference module (one process)", (), "#ffffff", "#2e7d32"),
    Box(600, 90, 165, 58, "twin sync", ("releases, reports,", "direct methods")),
    Box(600, 160, 165, 58, "fetch and verify", ("https + Range resume,", "sha256, ed25519, vetting")),
    Box(600, 230, 165, 72, "model store", ("content-addressed blobs,", "active + last-known-good,", "crash-safe")),
    Box(780, 90, 150, 58, "HTTPS + gRPC: V2", ("JSON, binary, raw tensors;", "Triton-compatible")),
    Box(780, 160, 150, 58, "data plane", ("validation, batching,", "hot swap + probation")),
    Box(780, 230, 150, 58, "onnxruntime", ("one session per", "loaded version")),
    Box(780, 300, 150, 30, "metrics, drift, capture"),
    Box(
        730,
        390,
        225,
        72,
        "/metrics, status page, telemetry",
        ("Prometheus, browser on the LAN,", "edgeHub output metrics; drift", "vs the training profile; capture"),
    ),
    Box(585, 480, 370, 50, "clients", ("tritonclient, curl, browsers (HTTPS :8000, gRPC :8001)",)),
)

ARROWS = (
    Arrow(((160, 98), (160, 110))),
    Arrow(((160, 168), (160, 180))),
    Arrow(((160, 238), (160, 250))),
    Arrow(((160, 308), (160, 320))),
    Arrow(((160, 378), (160, 390))),
    Arrow(((295, 349), (345, 349)), "publish", (300, 342)),
    Arrow(((295, 426), (345, 426)), "apply", (305, 419)),
    Arrow(((295, 279), (322, 279), (322, 83), (345, 83)), "--azure", (326, 170), dashed=True),
    Arrow(((535, 426), (585, 426)), "twin", (543, 419)),
    Arrow(((645, 390), (645, 370), (575, 370), (575, 119), (600, 119)), "desired", (577, 365)),
    Arrow(((480, 320), (480, 189), (600, 189)), "download", (485, 250)),
    Arrow(((682, 148), (682, 160))),
    Arrow(((682, 218), (682, 230))),
    Arrow(((765, 266), (780, 189))),
    Arrow(((855, 148), (855, 160))),
    Arrow(((855, 218), (855, 230))),
    Arrow(((855, 330), (855, 390))),
    Arrow(((730, 426), (705, 426)), "", (0, 0)),
    Arrow(((860, 480), (860, 462))),
    Arrow(((945, 480), (945, 119), (930, 119)), "", (0, 0)),
    Arrow(((645, 480), (645, 462)), "", (0, 0)),
    Arrow(
        ((585, 440), (540, 440), (540, 500), (305, 500), (305, 60), (295, 60)),
        "capture, telemetry upstream",
        (360, 515),
        dashed=True,
    ),
)


def render() -> str:
    head = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}' {FONT} fill='#263238'>\n"
        "<title>edge-inference architecture</title>\n"
        "<defs><marker id='head' markerWidth='8' markerHeight='8' refX='7' refY='4' orient='auto'>"
        "<path d='M0,0 L8,4 L0,8 z' fill='#263238'/></marker></defs>\n"
        f"<rect width='{WIDTH}' height='{HEIGHT}' fill='#ffffff'/>\n"
    )
    body = "\n".join([*GROUPS, *(box.svg() for box in BOXES), *(arrow.svg() for arrow in ARROWS)])
    return head + body + "\n</svg>\n"


def main() -> int:
    target = Path(__file__).with_name("architecture.svg")
    target.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
