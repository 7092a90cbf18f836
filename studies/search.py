"""`python -m studies.search NAME`: a Ray Tune study of the ensemble with Optuna (TPE) and ASHA,
every trial recorded in MLflow. Bad input: one line on stderr, exit code 2; Ctrl-C: exit code 130
and the command that resumes the study."""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from antimetric.config import DATASETS
from antimetric.errors import AntimetricError, ConfigError
from studies.settings import APPLIED, KEPT, SMOKE, STUDY_DEFAULTS, StudySettings, available_cpus, saved_settings
from studies.study import run_study, study_exists
from studies.tracking import default_tracking_uri

DEFAULT_STORAGE = "runs/studies"


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _number(convert: Callable[[str], Any], low: float, low_allowed: bool, what: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (value == low and not low_allowed):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


_count = _number(int, 1, True, "a whole number of 1 or more")
_seed = _number(int, 0, True, "a whole number of 0 or more")
_cpus = _number(float, 0, False, "a number of CPUs above 0")
_gpus = _number(float, 0, True, "a number of GPUs of 0 or more")


def _experiment(text: str) -> str:
    """A study's name is a folder of --storage-path: one plain name, not a path."""
    if not text or "/" in text or "\\" in text or text.startswith(".") or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a study name (a folder name: no '/', not starting with '.')")
    return text


def _address(text: str) -> str:
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379)")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m studies.search", description=__doc__)
    parser.add_argument("name", choices=DATASETS, help="dataset to study")
    parser.add_argument("--data-path", help="parent folder of the dataset folders (default: data)")
    parser.add_argument("--num-samples", type=_count, help="trials to run")
    parser.add_argument("--max-epochs", type=_count, help="epochs of a trial that ASHA does not stop")
    parser.add_argument("--max-concurrent", type=_count, help="trials running at once")
    parser.add_argument("--cpus-per-trial", type=_cpus, help="default: per dataset, at most the CPUs of this machine")
    parser.add_argument("--gpus-per-trial", type=_gpus, help="fractions share a GPU (default: 1 if CUDA, else 0)")
    parser.add_argument("--address", type=_address,
                        help="an existing Ray cluster, e.g. 10.0.0.5:6379 (default: start one here, on 127.0.0.1)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    parser.add_argument("--experiment", type=_experiment,
                        help="study name: MLflow experiment and Ray folder (default: <NAME>-study)")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help=f"where Ray keeps trials and checkpoints (default: {DEFAULT_STORAGE})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study of the same --experiment, with the options it was started with")
    parser.add_argument("--seed", type=_seed, help="seed of the TPE sampler and of every trial (default: 0)")
    parser.add_argument("--smoke-test", action="store_true", help="a study of a few seconds per trial")
    return parser


def parse_args(argv: list[str] | None = None) -> StudySettings:
    """The settings of the study to run. With --resume, the options a study keeps (KEPT) come from its
    settings file; one given with another value is refused."""
    args = _parser().parse_args(argv)
    given = {key: getattr(args, key) for key in (*KEPT, *APPLIED) if getattr(args, key, None) is not None}
    if args.data_path is not None:
        given["data_path"] = str(Path(args.data_path).resolve())
    if args.smoke_test:
        given["fixed"] = dict(SMOKE["fixed"])
    storage_path = Path(args.storage_path).resolve()
    experiment = args.experiment or f"{args.name}-study"
    values = _defaults(args.name, args.smoke_test, local=args.address is None)
    if args.resume:
        saved = saved_settings(storage_path / experiment)  # None: a study from before settings files
        for key, option in KEPT.items():
            if saved is not None and key in given and given[key] != saved[key]:
                raise ConfigError(_refusal(key, saved[key], given[key]))
        values.update(saved or {})
    values.update(given)
    return StudySettings(
        name=args.name, data_path=Path(values["data_path"]), num_samples=values["num_samples"],
        max_epochs=values["max_epochs"], max_concurrent=values["max_concurrent"],
        cpus_per_trial=values["cpus_per_trial"], gpus_per_trial=values["gpus_per_trial"], address=args.address,
        tracking_uri=values["tracking_uri"], experiment=experiment, storage_path=storage_path, resume=args.resume,
        seed=values["seed"], fixed=values["fixed"],
    )


def _defaults(name: str, smoke_test: bool, local: bool) -> dict[str, Any]:
    values: dict[str, Any] = {**STUDY_DEFAULTS[name], "data_path": str(Path("data").resolve()), "seed": 0,
                              "tracking_uri": default_tracking_uri(), "fixed": {},
                              "gpus_per_trial": 1.0 if torch.cuda.is_available() else 0.0}
    if smoke_test:
        values.update(num_samples=SMOKE["num_samples"], max_epochs=SMOKE["max_epochs"], fixed=dict(SMOKE["fixed"]))
    if local:  # a trial that asks for more CPUs than there are would wait for ever
        values["cpus_per_trial"] = min(values["cpus_per_trial"], available_cpus())
    return values


def _refusal(key: str, old: Any, new: Any) -> str:
    if key == "name":
        return f"--resume: this study is of dataset {old}, not {new}; pass {old} or start a new --experiment"
    if key == "fixed":
        old, new = ("on" if value else "off" for value in (old, new))
    return f"--resume: {KEPT[key]} was {old} for this study, not {new}; drop it or start a new --experiment"


def resume_command(settings: StudySettings) -> str:
    """The command that continues this study (the rest of its options come from its settings file)."""
    words = ["python", "-m", "studies.search", settings.name, "--storage-path", str(settings.storage_path),
             "--experiment", settings.experiment, "--resume",
             "--cpus-per-trial", f"{settings.cpus_per_trial:g}", "--gpus-per-trial", f"{settings.gpus_per_trial:g}"]
    if settings.address:
        words += ["--address", settings.address]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Save Ray's experiment state at every step rather than every ~10 s, so that a killed
    # driver leaves a state whose checkpoints still exist (Ray prunes old ones as trials go).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    settings = None
    try:
        settings = parse_args(argv)
        run_study(settings)
        return 0
    except AntimetricError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C; run_study saved what Tune had (StudyInterrupted) or was stopped at once
        if settings is not None and study_exists(settings):
            print(f"study interrupted; continue it with: {resume_command(settings)}", file=sys.stderr)
        else:
            print("interrupted before the study started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
