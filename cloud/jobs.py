"""Azure ML jobs that run ``python -m cloud train`` on a compute cluster: a command job, or a sweep over it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from cloud.candidates import candidates_for
from cloud.evaluation import selection_metric
from cloud.training import search_label

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE_PARTS = ("cloud", "edge_module", "pyproject.toml", "README.md")
IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
PINNED = (
    "scikit-learn",
    "skl2onnx",
    "onnx",
    "onnxruntime",
    "numpy",
    "pandas",
    "pyarrow",
    "matplotlib",
    "tqdm",
    "pydantic",
    "pydantic-settings",
    "platformdirs",
)
# Azure ML reads metrics logged through MLflow; these let the training code log them inside a job.
TRACKING = ("mlflow-skinny", "azureml-mlflow")


@dataclass(frozen=True)
class JobSpec:
    data: str
    task: str
    name: str
    compute: str
    target: str | None = None
    experiment: str = "edge-inference"
    trials: int = 8
    cv: int = 3
    select_by: str | None = None
    algorithms: tuple[str, ...] = ()
    image: str = IMAGE
    sweep: bool = False
    max_trials: int = 8
    max_concurrent: int = 2
    timeout_minutes: int = 120


def stage_code(dest: Path) -> Path:
    """Copy only what the job needs (the packages and pyproject), not the venv or local runs."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for part in CODE_PARTS:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, dest / part)
    return dest


def conda_spec() -> dict[str, Any]:
    pins = [f"{name}=={importlib_metadata.version(name)}" for name in PINNED]
    return {
        "name": "edge-inference-train",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "pip", {"pip": [*pins, *TRACKING]}],
    }


def environment(image: str = IMAGE) -> Any:
    from azure.ai.ml.entities import Environment

    # Anonymous (no name): Azure ML registers it under a hash of the image and conda spec, so it is rebuilt
    # only when the pins change.
    return Environment(
        description="python -m cloud train: scikit-learn, skl2onnx, onnxruntime",
        image=image,
        conda_file=conda_spec(),
    )


def _train_command(spec: JobSpec, data_is_input: bool, algorithm_input: bool) -> str:
    parts = ["python -m cloud train", "--data", "${{inputs.data}}" if data_is_input else spec.data]
    parts += ["--task", spec.task, "--name", spec.name, "--trials", str(spec.trials), "--cv", str(spec.cv)]
    if spec.target:
        parts += ["--target", spec.target]
    if spec.select_by:
        parts += ["--select-by", spec.select_by]
    if algorithm_input:
        parts += ["--algorithm", "${{inputs.algorithm}}"]
    else:
        for algorithm in spec.algorithms:
            parts += ["--algorithm", algorithm]
    parts += ["--out", "${{outputs.report}}", "--registry", "${{outputs.registry}}", "--no-progress"]
    return " ".join(parts)


def command_node(spec: JobSpec, code: Path) -> Any:
    from azure.ai.ml import Input, Output, command

    data_is_input = not spec.data.startswith("sklearn:")
    inputs: dict[str, Any] = {}
    if data_is_input:
        inputs["data"] = Input(type="uri_file", path=spec.data)
    if spec.sweep:
        inputs["algorithm"] = (spec.algorithms or tuple(c.name for c in candidates_for(spec.task)))[0]
    return command(
        name=None,
        display_name=f"train-{spec.name}",
        experiment_name=spec.experiment,
        description=f"python -m cloud train for {spec.name} ({spec.task})",
        code=str(code),
        command=_train_command(spec, data_is_input, spec.sweep),
        environment=environment(spec.image),
        compute=spec.compute,
        inputs=inputs,
        outputs={"report": Output(type="uri_folder"), "registry": Output(type="uri_folder")},
        environment_variables={"PYTHONUNBUFFERED": "1"},
        tags={"model": spec.name, "task": spec.task},
    )


def sweep_node(spec: JobSpec, code: Path) -> Any:
    """A sweep over the candidate algorithms; each trial searches its own hyperparameters with CV and
    logs its cross-validated selection metric (``cv_<metric>``) through MLflow, which the sweep ranks."""
    from azure.ai.ml import Input
    from azure.ai.ml.sweep import Choice

    metric = selection_metric(spec.task, spec.select_by)
    algorithms = list(spec.algorithms or tuple(c.name for c in candidates_for(spec.task)))
    overrides: dict[str, Any] = {"algorithm": Choice(values=list[Any](algorithms))}
    if not spec.data.startswith("sklearn:"):
        overrides["data"] = Input(type="uri_file", path=spec.data)
    trial = command_node(spec, code)(**overrides)
    sweep = trial.sweep(
        primary_metric=f"{search_label(spec.task)}_{metric.name}",
        goal="maximize" if metric.higher_is_better else "minimize",
        sampling_algorithm="random",
        compute=spec.compute,
    )
    sweep.set_limits(
        max_total_trials=spec.max_trials, max_concurrent_trials=spec.max_concurrent, timeout=spec.timeout_minutes * 60
    )
    sweep.display_name = f"sweep-{spec.name}"
    sweep.experiment_name = spec.experiment
    return sweep


def build_node(spec: JobSpec, code: Path) -> Any:
    """What is submitted: a command node, or a sweep node over it."""
    return sweep_node(spec, code) if spec.sweep else command_node(spec, code)


def build_job(spec: JobSpec, code: Path) -> Any:
    """The job form of the node (``_to_job()``): what ``--dry-run`` prints and ``load_job`` reads back."""
    job = build_node(spec, code)._to_job()
    job.experiment_name = spec.experiment
    return job


def job_yaml(job: Any) -> str:
    import io

    buffer = io.StringIO()
    job.dump(buffer)
    return buffer.getvalue()
