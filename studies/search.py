"""`python -m studies.search NAME`: a Ray Tune study of the ensemble with Optuna (TPE) and ASHA,
every trial recorded in MLflow. Bad input: one line on stderr, exit code 2; Ctrl-C: exit code 130
and the command that resumes the study (SIGTERM: the same, exit code 143); a store that fails while the
study runs, or a study without a trial that succeeded: one line, exit code 1."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from antimetric.base.cpus import available_cpus
from antimetric.base.process_exit import exit_with
from antimetric.data.settings import DATASETS
from antimetric.errors import AntimetricError, ConfigError
from antimetric.options import OneLineParser, add_config_arguments, given_options
from studies.design.own_data import (
    dataset_constants,
    dataset_label,
    image_root,
    is_own_data,
    measured_defaults,
    own_space,
    own_study_values,
    printed_space,
)
from studies.design.settings import (
    APPLIED,
    CONFIRM_DEFAULTS,
    KEPT,
    OBJECTIVES,
    PARETO_COSTS,
    SMOKE,
    STUDY_DEFAULTS,
    TRIAL_DEFAULTS,
    StudySettings,
    default_experiment,
    saved_settings,
)
from studies.design.space_file import STUDY_OWN_KEYS, check_space, check_trial, load_space
from studies.design.spaces import SPACES
from studies.lifecycle.study import run_study, study_exists
from studies.lifecycle.study_end import StudyFailed, sigterm_as_ctrl_c, sigterm_received
from studies.record.tracking import default_tracking_uri
from studies.trials.metric_names import check_study_recalls
from studies.trials.trial_workers import check_branches_per_worker, workers_and_gpus

DEFAULT_STORAGE = "runs/studies"


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
    parser = OneLineParser(prog="python -m studies.search", description=__doc__)
    parser.add_argument("name", metavar="NAME|PATH", help=f"dataset to study: {', '.join(DATASETS)}, or your own "
                        "images: a folder of class subfolders or a table (.csv, .parquet) with columns label, path, split")
    parser.add_argument("--print-space", action=_PrintSpace, nargs=0,
                        help="print the built-in search space of NAME (the --space form) and exit")
    parser.add_argument("--data-path", "--data_path", help="parent folder of the dataset folders (default: data)")
    parser.add_argument("--num-samples", type=_count, help="trials to run")
    parser.add_argument("--max-epochs", "--num-epochs", "--num_epochs", dest="max_epochs", type=_count,
                        help="epochs of a trial that ASHA does not stop (each trial's --num-epochs)")
    parser.add_argument("--max-concurrent", type=_count, help="trials running at once")
    parser.add_argument("--cpus-per-trial", type=_cpus, help="default: per dataset, at most the CPUs of this machine")
    parser.add_argument("--gpus-per-trial", type=_gpus,
                        help="fractions share a GPU; N above 1 trains each trial on N workers with a GPU each, its "
                             "ensemble's branches split among them (default: 1 if CUDA, else 0)")
    parser.add_argument("--workers-per-trial", type=_count, metavar="N",
                        help="train each trial on N workers on CPUs, its branches split among them, sharing "
                             "--cpus-per-trial (for testing what --gpus-per-trial N does; default: 1)")
    parser.add_argument("--address", type=_address,
                        help="an existing Ray cluster, e.g. 10.0.0.5:6379 (default: start one here, on 127.0.0.1)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    parser.add_argument("--experiment", type=_experiment,
                        help="study name: MLflow experiment and Ray folder (default: <NAME>-study)")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help=f"where Ray keeps trials and checkpoints (default: {DEFAULT_STORAGE})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study of the same --experiment, with the options it was started with")
    parser.add_argument("--seed", type=_seed, help="seed of the TPE sampler, of every trial's own seed and of the "
                                                   "validation classes (default: 0)")
    parser.add_argument("--objective", choices=OBJECTIVES,
                        help="recall: maximise validation Recall@1 (default); pareto: maximise it and minimise --cost, "
                             "ending with the Pareto-optimal trials")
    parser.add_argument("--cost", choices=PARETO_COSTS,
                        help="what a Pareto study minimises: the retrieval vector's length (default) or the GFLOPs "
                             "of embedding one image")
    parser.add_argument("--confirm-top", type=_seed, metavar="K",
                        help="after the search, train the K best configurations (in a Pareto study: the Pareto "
                             "trials) and the default one again (--repeats times each, on other validation classes) "
                             "and report them with 95 %% intervals; 0: no confirmation stage (default: 3)")
    parser.add_argument("--repeats", type=_count, metavar="N",
                        help="runs of each configuration the confirmation stage trains (default: 3)")
    parser.add_argument("--smoke-test", action="store_true", help="a study of a few seconds per trial")
    parser.add_argument("--space", metavar="FILE", type=Path,
                        help="search this space (JSON or YAML, the form --print-space shows) instead of the built-in one")
    training = parser.add_argument_group(
        "training options", "the options of `python -m antimetric train`, each fixing its value for every trial "
        "(a searched one is then no longer searched)")
    add_config_arguments(training, exclude=STUDY_OWN_KEYS)
    return parser


class _PrintSpace(argparse.Action):
    """--print-space: the built-in space of the dataset named so far, as JSON, then exit 0."""

    def __call__(self, parser, namespace, values, option_string=None):
        name = getattr(namespace, "name", None)
        if name is None:
            parser.error("--print-space comes after NAME, e.g. `python -m studies.search cub --print-space`")
        try:
            space = printed_space(name, getattr(namespace, "backbone", None), getattr(namespace, "data_path", None))
        except AntimetricError as error:
            parser.error(str(error))
        print(json.dumps(space, indent=1))
        parser.exit(0)


def parse_args(argv: list[str] | None = None) -> StudySettings:
    """The settings of the study to run. With --resume, the options a study keeps (KEPT) come from its
    settings file; one given with another value is refused."""
    args = _parser().parse_args(argv)
    if is_own_data(args.name):  # a path: recorded absolute, as a trial (in its own folder) reads it
        args.name = str(Path(args.name).expanduser().absolute())
    # --space is a file: its parsed space is compared with the saved one below, not its path
    given = {key: getattr(args, key) for key in (*KEPT, *APPLIED) if key != "space" and getattr(args, key, None) is not None}
    if args.data_path is not None:
        given["data_path"] = str(Path(args.data_path).resolve())
    training = given_options(args, exclude=STUDY_OWN_KEYS)
    if training.get("load_ids") == "latest":
        raise ConfigError("--load-ids in a study needs the path of a meta_ids.json")
    if args.smoke_test or training:
        given["fixed"] = {**(SMOKE["fixed"] if args.smoke_test else {}), **training}
    storage_path = Path(args.storage_path).resolve()
    experiment = args.experiment or default_experiment(dataset_label(args.name))
    values = _defaults(args.name, args.smoke_test, local=args.address is None, backbone=training.get("backbone"))
    saved = saved_settings(storage_path / experiment) if args.resume else None  # None: a study without one
    if saved is not None:
        for key in KEPT:
            if key == "fixed" and key in given:  # each training option given must be the one saved
                given[key] = {**saved[key], **given[key]}
            if key in given and given[key] != saved[key]:
                raise ConfigError(_refusal(key, saved[key], given[key]))
        values.update(saved)
    values.update(given)
    if is_own_data(args.name):
        values["data_path"] = image_root(args.name, given.get("data_path"))
        if saved is None:  # what the data decides of each trial's config, measured once (own_data.MEASURED)
            values["fixed"] = {**measured_defaults(_constants(args.name, values)), **values["fixed"]}
    if values["fixed"].get("recalls") is not None:  # else the dataset's, which start with Recall@1
        check_study_recalls(values["fixed"]["recalls"])
    if "cost" in given and values["objective"] != "pareto":
        raise ConfigError(f"--cost {given['cost']} ranks trials only in a Pareto study; add --objective pareto or "
                          "drop --cost")
    values["workers_per_trial"], values["gpus_per_trial"] = workers_and_gpus(values, given, saved)
    if values["workers_per_trial"] > 1 and "cpus_per_trial" not in given and saved is None and args.address is None:
        values["cpus_per_trial"] = min(max(values["cpus_per_trial"], values["workers_per_trial"]), available_cpus())
    if saved is None and "max_concurrent" not in given and args.address is None:
        values["max_concurrent"] = _concurrent_trials(values["cpus_per_trial"], values["gpus_per_trial"])
    if saved is None or args.space is not None:
        raw = load_space(args.space) if args.space is not None else _space(args.name, values["fixed"])
        where = "--space" if args.space else f"the built-in {args.name} space"
        values["space"] = _searched(raw, values, args.name, where, local=args.address is None)
        if saved is not None and values["space"] != saved["space"]:
            raise ConfigError(_refusal("space", saved["space"], values["space"]))
    return StudySettings(
        name=args.name, data_path=Path(values["data_path"]), num_samples=values["num_samples"],
        max_epochs=values["max_epochs"], max_concurrent=values["max_concurrent"],
        cpus_per_trial=values["cpus_per_trial"], gpus_per_trial=values["gpus_per_trial"], address=args.address,
        tracking_uri=values["tracking_uri"], experiment=experiment, storage_path=storage_path, resume=args.resume,
        seed=values["seed"], fixed=values["fixed"], space=values["space"], objective=values["objective"],
        cost=values["cost"], confirm_top=values["confirm_top"], repeats=values["repeats"],
        workers_per_trial=values["workers_per_trial"],
    )


def _searched(raw: dict[str, Any], values: dict[str, Any], name: str, where: str,
              local: bool) -> dict[str, dict[str, Any]]:
    """The space to search: `raw` without the keys a training option fixes, checked (in a local study, also
    against the memory of the trials' device)."""
    space = {key: spec for key, spec in raw.items() if key not in values["fixed"]}
    constants = _constants(name, values)
    device = _trial_device(constants.get("device", "auto"), values["gpus_per_trial"]) if local else None
    try:
        check_trial(constants, device)
    except ConfigError as error:
        raise ConfigError(f"training options: {error}") from None
    check_space(space, constants, where, device)
    if not space:
        raise ConfigError("nothing left to search: the training options fix every key of the space; "
                          "drop one or pass a --space")
    check_branches_per_worker(values["workers_per_trial"], space, constants, where)
    return space


def _constants(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The config every trial of the study shares (the searched keys aside)."""
    return {**dataset_constants(name, values["data_path"]), "num_epochs": values["max_epochs"], "seed": values["seed"],
            **TRIAL_DEFAULTS, **values["fixed"]}


def _space(name: str, fixed: dict[str, Any]) -> dict[str, Any]:
    """The built-in space of a benchmark, or of a user's data (with the backbone the study fixes)."""
    return own_space(fixed.get("backbone")) if is_own_data(name) else SPACES[name]()


def _trial_device(device: str, gpus_per_trial: float) -> torch.device | None:
    """Where a local trial trains: --device, or with auto a GPU when trials get one (Ray hides the GPUs from
    a trial that gets none). None for a --device that is not one (resolve says so)."""
    if device == "auto":
        return torch.device("cuda" if gpus_per_trial > 0 else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        return None


def _defaults(name: str, smoke_test: bool, local: bool, backbone: str | None = None) -> dict[str, Any]:
    study = own_study_values(backbone) if is_own_data(name) else STUDY_DEFAULTS[name]
    values: dict[str, Any] = {**study, "data_path": str(Path("data").resolve()), "seed": 0,
                              **CONFIRM_DEFAULTS,
                              "tracking_uri": default_tracking_uri(), "fixed": {},
                              "objective": StudySettings.objective, "cost": StudySettings.cost,
                              "gpus_per_trial": 1.0 if torch.cuda.is_available() else 0.0}
    if smoke_test:
        values.update(num_samples=SMOKE["num_samples"], max_epochs=SMOKE["max_epochs"], fixed=dict(SMOKE["fixed"]))
    if local:  # a trial that asks for more CPUs than there are would wait for ever
        values["cpus_per_trial"] = min(values["cpus_per_trial"], available_cpus())
    return values


def _concurrent_trials(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """As many trials at once as this machine's CPUs (and GPUs) hold."""
    fitting = available_cpus() // cpus_per_trial
    if gpus_per_trial > 0:
        fitting = min(fitting, torch.cuda.device_count() // gpus_per_trial)
    return max(1, int(fitting))


def _refusal(key: str, old: Any, new: Any) -> str:
    if key == "name":
        return f"--resume: this study is of dataset {old}, not {new}; pass {old} or start a new --experiment"
    if key == "fixed":
        changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        option = "--" + changed[0].replace("_", "-")
        return (f"--resume: {option} was {old.get(changed[0], 'not given')} for this study, not "
                f"{new.get(changed[0], 'not given')}; drop it or start a new --experiment")
    if key == "space":
        return "--resume: this study searches another space than the --space given; drop --space or start a new " \
               "--experiment"
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
    previous_sigterm = sigterm_as_ctrl_c(fresh=True)
    try:
        settings = parse_args(argv)
        run_study(settings)
        return 0
    except AntimetricError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyFailed as exc:
        then = f"; then continue it with: {resume_command(settings)}" if exc.resumable and settings else ""
        print(f"error: {exc}{then}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C; run_study saved what Tune had (StudyInterrupted) or was stopped at once
        how = " (SIGTERM)" if sigterm_received() else ""
        if settings is not None and study_exists(settings):
            print(f"study interrupted{how}; continue it with: {resume_command(settings)}", file=sys.stderr)
        else:
            print(f"interrupted{how} before the study started", file=sys.stderr)
        return 143 if sigterm_received() else 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    exit_with(main)
