"""The status page in real headless Chromium against the real module process: rendered DOM and a screenshot."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_module.module import default_model_dir, default_model_manifest
from tests.observability.conftest import cancer_request
from tests.observability.models import breast_cancer_model
from tests.support.server import ModuleProcess
from tests.support.system import require_binary

SCREENSHOT_COPY = Path("/tmp/status-page.png")


class Cells(HTMLParser):
    """Text of each models-table cell by (model, version, class)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self._row: tuple[str, str] | None = None
        self._cls: str | None = None
        self.loaded = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body" and attributes.get("data-loaded") == "true":
            self.loaded = True
        if tag == "tr" and attributes.get("data-model"):
            self._row = (attributes["data-model"] or "", attributes.get("data-version") or "")
            self.rows[self._row] = {}
        elif tag == "td" and self._row is not None:
            self._cls = (attributes.get("class") or "").split()[-1] if attributes.get("class") else ""

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cls is not None:
            self.rows[self._row][self._cls] = self.rows[self._row].get(self._cls, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cls = None
        elif tag == "tr":
            self._row = None


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,860",
        "--virtual-time-budget=5000",  # lets the page poll /status.json a few times
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


@contextlib.contextmanager
def steady_load(url: str, rows: np.ndarray, limit: int = 2000) -> Iterator[None]:
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(limit):
                if stop.is_set():
                    return
                client.post("/v2/models/cancer/infer", json=cancer_request(rows[i % 100 : i % 100 + 3]))
                time.sleep(0.01)

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=30)


@pytest.mark.slow
def test_status_page_renders_live_data_in_chromium(tmp_path: Path) -> None:
    binary = require_binary("chromium")
    model = breast_cancer_model()
    model_file = tmp_path / "cancer.onnx"
    model_file.write_bytes(model.onnx)
    store = tmp_path / "store"
    store.mkdir()
    wine_file = default_model_dir() / default_model_manifest()["file"]
    args = ["--model", f"cancer={model_file}", "--model", f"wine={wine_file}"]
    module = ModuleProcess(store, env={"EDGE_DRIFT_MIN_ROWS": "50"}, args=args)
    module.start()
    try:
        shifted = model.x_holdout.copy()
        shifted[:, model.feature_names.index("mean_area")] *= np.float32(1.5)
        with httpx.Client(base_url=module.url, timeout=10) as client:
            for start in range(0, 140, 7):
                response = client.post("/v2/models/cancer/infer", json=cancer_request(shifted[start : start + 7]))
                assert response.status_code == 200, response.text
            for _ in range(3):
                assert client.post("/v2/models/cancer/infer", json=cancer_request(shifted[:1, :3])).status_code == 400
            wine = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": [[13.2] * 13]}]}
            for _ in range(11):
                assert client.post("/v2/models/wine/infer", json=wine).status_code == 200
            page = client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "http://" not in page.text and "https://" not in page.text  # no external assets
            status = client.get("/status.json").json()
        profile = tmp_path / "chromium-profile"
        dom = chromium(binary, profile, "--dump-dom", module.url + "/").stdout
        screenshot = tmp_path / "status-page.png"
        with steady_load(module.url, shifted):  # so the screenshot's charts move
            chromium(binary, profile, f"--screenshot={screenshot}", module.url + "/")
    finally:
        module.stop()

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    shutil.copyfile(screenshot, SCREENSHOT_COPY)

    cells = Cells()
    cells.feed(dom)
    assert cells.loaded, dom[:2000]
    cancer = cells.rows[("cancer", "1")]
    assert cancer["model-name"] == "cancer" and cancer["model-version"] == "1 (active)"
    assert cancer["requests"] == "20" and cancer["failures"] == "3"
    assert float(cancer["p50"]) > 0
    drift = status["models"][0]["drift"]
    assert drift["drifted"] and drift["feature"] == "mean_area"
    assert cancer["drift"].startswith(f"{drift['psi_max']:.3f} (mean_area)")
    wine_version = default_model_manifest().get("version", "1")
    wine_row = cells.rows[("wine", str(wine_version))]
    assert wine_row["requests"] == "11" and wine_row["failures"] == "0"
    assert "<polyline" in dom  # the live charts drew lines
