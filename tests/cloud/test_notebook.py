"""The example notebook runs top to bottom in a real kernel (the venv's python), so it never rots."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "train_to_edge.ipynb"

pytestmark = pytest.mark.slow


def test_example_notebook_runs_from_dataset_to_served_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernelspec ipykernel installs into the venv comes first; jupyter_client runs its "python" as
    # sys.executable, so the kernel is this venv's interpreter on any machine scripts/setup built.
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")  # the kernel is not under pytest's warning filters
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in notebook.cells]
    assert outputs[1].strip() == sys.executable or Path(outputs[1].strip()).resolve() == Path(sys.executable).resolve()
    assert any("parity passed" in text for text in outputs)
    assert any(text.startswith("edge:") for text in outputs)
    assert (tmp_path / "registry" / "wine-notebook" / "1" / "model.onnx").is_file()
