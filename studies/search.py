"""`python -m studies.search NAME`: a Ray Tune study of the ensemble with Optuna (TPE) and ASHA,
every trial recorded in MLflow."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antimetric.config import DATASETS
from antimetric.data.splits import make_splits
from antimetric.errors import AntimetricError
from antimetric.session import load_index


@dataclass
class StudySettings:
    name: str  # dataset
    data_path: Path  # absolute
    num_samples: int
    max_epochs: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    address: str | None
    tracking_uri: str
    experiment: str
    storage_path: Path  # absolute; Ray's experiment folders
    resume: bool
    seed: int
    fixed: dict[str, Any]  # config values shared by every trial (beside the searched ones)


# Per dataset: trials, epochs, concurrent trials, CPUs per trial (a GPU per trial where there is one).
STUDY_DEFAULTS = {
    "demo": dict(num_samples=12, max_epochs=10, max_concurrent=2, cpus_per_trial=1),
    "cub": dict(num_samples=24, max_epochs=20, max_concurrent=1, cpus_per_trial=8),
    "car": dict(num_samples=24, max_epochs=20, max_concurrent=1, cpus_per_trial=8),
    "sop": dict(num_samples=16, max_epochs=40, max_concurrent=1, cpus_per_trial=8),
    "isc": dict(num_samples=16, max_epochs=40, max_concurrent=1, cpus_per_trial=8),
}
# --smoke-test: seconds, not minutes: few trials on small, low-resolution data.
SMOKE = dict(num_samples=3, max_epochs=2, fixed=dict(image_size=32, max_per_class=8))


def parse_args(argv: list[str] | None = None) -> StudySettings:
    parser = argparse.ArgumentParser(prog="python -m studies.search", description=__doc__)
    parser.add_argument("name", choices=DATASETS, help="dataset to study")
    parser.add_argument("--data-path", default="data", help="parent folder of the dataset folders (default: data)")
    parser.add_argument("--num-samples", type=int, help="trials to run")
    parser.add_argument("--max-epochs", type=int, help="epochs of a trial that ASHA does not stop")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU (default: 1 if CUDA, else 0)")
    parser.add_argument("--address", help="an existing Ray cluster, e.g. 10.0.0.5:6379 (default: start one here)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    parser.add_argument("--experiment", help="study name: MLflow experiment and Ray folder (default: <NAME>-study)")
    parser.add_argument("--storage-path", default="runs/studies", help="where Ray keeps trials and checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue the study of the same --experiment")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of every trial")
    parser.add_argument("--smoke-test", action="store_true", help="a study of a few seconds per trial")
    args = parser.parse_args(argv)

    from studies.tracking import default_tracking_uri

    defaults = dict(STUDY_DEFAULTS[args.name])
    fixed: dict[str, Any] = {}
    if args.smoke_test:
        defaults.update(num_samples=SMOKE["num_samples"], max_epochs=SMOKE["max_epochs"])
        fixed.update(SMOKE["fixed"])
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if _cuda_available() else 0.0
    return StudySettings(
        name=args.name,
        data_path=Path(args.data_path).resolve(),
        num_samples=args.num_samples or defaults["num_samples"],
        max_epochs=args.max_epochs or defaults["max_epochs"],
        max_concurrent=args.max_concurrent or defaults["max_concurrent"],
        cpus_per_trial=args.cpus_per_trial or defaults["cpus_per_trial"],
        gpus_per_trial=gpus,
        address=args.address,
        tracking_uri=args.tracking_uri or default_tracking_uri(),
        experiment=args.experiment or f"{args.name}-study",
        storage_path=Path(args.storage_path).resolve(),
        resume=args.resume,
        seed=args.seed,
        fixed=fixed,
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def trial_constants(settings: StudySettings) -> dict[str, Any]:
    """The config every trial shares; the searched keys are added per trial."""
    return {"data_name": settings.name, "data_path": str(settings.data_path), "num_epochs": settings.max_epochs,
            "seed": settings.seed, **settings.fixed}


def count_training_classes(settings: StudySettings) -> int:
    """Training classes left after the validation split: what meta-class sizes must fit."""
    from studies.trainable import trial_config

    config = trial_config(trial_constants(settings))
    index = load_index(config, progress=sys.stderr.isatty())
    return len(make_splits(index, config.data.val_fraction, config.data.max_per_class, config.train.seed).train_classes)


def main(argv: list[str] | None = None) -> int:
    # Save Ray's experiment state at every step rather than every ~10 s, so that a killed
    # driver leaves a state whose checkpoints still exist (Ray prunes old ones as trials go).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    try:
        settings = parse_args(argv)
        from studies.study import run_study

        return run_study(settings)
    except AntimetricError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
