from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "submit"
HELP = "run 'train' as an Azure ML command job (or a sweep over algorithms) on a compute cluster"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="azureml:// URI, Blob URL, local file (uploaded) or sklearn:<name>"
    )
    parser.add_argument("--target", help="target column")
    parser.add_argument("--task", required=True, choices=("classification", "regression", "clustering"))
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--compute", required=True, help="Azure ML compute cluster")
    parser.add_argument("--experiment", default="edge-inference")
    parser.add_argument("--algorithm", action="append", default=[], help="candidates (repeatable; default: all)")
    parser.add_argument("--trials", type=int, default=8, help="parameter settings per candidate in each job")
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--select-by", help="selection metric (also the sweep's primary metric)")
    parser.add_argument("--sweep", action="store_true", help="a sweep job with one trial per algorithm")
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--image", help="base image of the job environment")
    parser.add_argument(
        "--code-dir", type=Path, default=Path(".azureml-code"), help="where the job's code is staged (%(default)s)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the job YAML (loads with load_job); submit nothing"
    )


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.jobs import IMAGE, JobSpec, build_job, build_node, job_yaml, stage_code

    try:
        spec = JobSpec(
            data=args.data,
            task=args.task,
            name=args.name,
            compute=args.compute,
            target=args.target,
            experiment=args.experiment,
            trials=args.trials,
            cv=args.cv,
            select_by=args.select_by,
            algorithms=tuple(args.algorithm),
            image=args.image or IMAGE,
            sweep=args.sweep,
            max_trials=args.max_trials,
            max_concurrent=args.max_concurrent,
        )
        code = stage_code(args.code_dir.resolve())
        if args.dry_run:
            sys.stdout.write(job_yaml(build_job(spec, code)))
            return 0
        from cloud.azureml import ml_client

        created = ml_client().jobs.create_or_update(build_node(spec, code))
        sys.stdout.write(f"submitted {created.type} job {created.name}: {created.studio_url or ''}\n")
        return 0
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
