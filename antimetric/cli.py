"""`python -m antimetric prepare|train|evaluate|index|retrieve|profile`. Bad input: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from antimetric.base.extensions import RUN_TRACKER, extension
from antimetric.base.process_exit import exit_with
from antimetric.data.cache import MAX_CACHE_SIZE
from antimetric.data.settings import check_crop_type
from antimetric.data.table import TABLE
from antimetric.errors import AntimetricError, AntimetricWarning, ConfigError, RunInterrupted
from antimetric.options import OneLineParser, add_config_arguments, add_config_option, given_options
from antimetric.retrieval.cli import add_retrieval_commands
from antimetric.training.config import RunConfig, check_device, resolve


def run() -> NoReturn:
    """`python -m antimetric` and the `antimetric` command: main() with its exit code."""
    exit_with(main)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.command(args)
    except AntimetricError as exc:
        if _process() == 0:  # the processes of a torchrun launch refuse the same input alike: one line, not N
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as interrupted:
        if _process() != 0:
            return 130
        if interrupted.last_epoch:
            print(f"interrupted; epochs 1-{interrupted.last_epoch} are kept; continue with: "
                  f"python -m antimetric train --resume {interrupted.run_dir}", file=sys.stderr)
        else:
            print(f"interrupted before the first epoch ended; nothing to resume in {interrupted.run_dir}",
                  file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


_show_default = warnings.showwarning


def _process() -> int:
    """This process's rank in a torchrun launch (0 outside one), read before any group forms."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """antimetric's own warnings as one line, `warning: ...`; any other as Python shows it."""
    if issubclass(category, AntimetricWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _show_default(message, category, filename, lineno, file, line)


def _cache_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CACHE_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels from 1 to {MAX_CACHE_SIZE}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m antimetric", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="{prepare,train,evaluate,index,retrieve,profile}")

    prepare = commands.add_parser("prepare", help="check a dataset's layout and images, write its manifest")
    add_config_option(prepare, "data_path", "parent folder of the dataset folders (default: data); with a --data "
                      "table: the folder its paths start from (default: the table's folder)")
    add_config_option(prepare, "data_name", "dataset folder name")
    add_config_option(prepare, "data", "your own images instead: a folder of class subfolders or a table (.csv, "
                      ".parquet) with columns label, path, split")
    _add(prepare, "--cache-size", type=_cache_size, metavar="PIXELS",
         help="also write every image resized for this --image-size (e.g. 256), which training then reads")
    add_config_option(prepare, "crop_type", "with --cache-size: the --crop-type the cache is for (default: uncropped)")
    prepare.add_argument("--json", action="store_true", help="print the summary as JSON")
    prepare.set_defaults(command=_prepare)

    train = commands.add_parser("train", help="train and evaluate an ensemble (options of the seed's train.py)")
    add_config_arguments(train)
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its last.pt, with its own config (only --device and "
                            "--num-workers may change)")
    train.add_argument("--json", action="store_true", help="print the best epoch's metrics as JSON at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    train.add_argument("--tracking-uri", nargs="?", const="", metavar="URI",
         help="also record the run in MLflow, as a study's trial is (alone: the studies' store mlruns/mlflow.db; "
              "needs the studies extras)")
    train.add_argument("--experiment", metavar="NAME",
                       help="MLflow experiment of --tracking-uri (default: <DATA_NAME>-study, where that dataset's "
                            "studies are)")
    train.set_defaults(command=_train)

    evaluate = commands.add_parser("evaluate", help="Recall@K, MAP@R and R-precision of a trained ensemble on a "
                                   "dataset's test split")
    evaluate.add_argument("--model", required=True, metavar="SOURCE",
                          help="a run folder, best.pt/last.pt, an MLflow run id or models:/NAME/VERSION")
    add_config_option(evaluate, "data_path", "parent folder of the dataset folders (default: the one it was trained on)")
    add_config_option(evaluate, "data_name", "dataset (default: the one the ensemble was trained on)")
    add_config_option(evaluate, "data", "your own images instead: a folder of class subfolders (its test classes "
                      "drawn as in training) or a table with columns label, path, split")
    add_config_option(evaluate, "crop_type", "default: the ensemble's own, where the dataset has boxes")
    add_config_option(evaluate, "device", "auto (CUDA if present), cpu or cuda:N", default=_default("device"))
    _add(evaluate, "--tracking-uri", help="MLflow store of an MLflow SOURCE (default: $MLFLOW_TRACKING_URI, "
         "else mlruns/mlflow.db)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(command=_evaluate)

    add_retrieval_commands(commands)

    profile = commands.add_parser("profile", help="parameters, FLOPs (thop MACs and torch GFLOPs per image) and embedding size of an ensemble")
    seed = TABLE["cub"].training  # by default the seed's ensemble: CUB's 48 ResNet-18 branches, 12 meta-classes each
    add_config_option(profile, "backbone", default=seed.backbone)
    add_config_option(profile, "ensemble_size", default=seed.ensemble_size)
    add_config_option(profile, "meta_class_size", default=seed.meta_class_size)
    add_config_option(profile, "share_type", default=_default("share_type"))
    add_config_option(profile, "with_fc")
    add_config_option(profile, "image_size", default=seed.image_size)
    profile.add_argument("--json", action="store_true")
    profile.set_defaults(command=_profile)
    return parser


def _add(parser: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """An option under its dashed names and the seed's underscore spellings."""
    underscored = ["--" + n[2:].replace("-", "_") for n in names if "-" in n[2:]]
    parser.add_argument(*dict.fromkeys([*names, *underscored]), **kwargs)


def _prepare(args: argparse.Namespace) -> int:
    from antimetric.data.cache import CacheForm
    from antimetric.data.manifest.prepare import prepare
    from antimetric.data.readers.source import benchmark, own_data

    if bool(args.data) == bool(args.data_name):
        raise ConfigError("prepare needs the data: --data-name NAME (a benchmark in --data-path) or --data PATH "
                          "(your own folder or table), one of them")
    source = own_data(args.data, args.data_path) if args.data else benchmark(args.data_name, args.data_path or "data")
    cache = None
    if args.cache_size is not None:
        cache = CacheForm(args.crop_type or "uncropped", args.cache_size)
        if not source.own:
            check_crop_type(args.data_name, cache.crop_type)
    elif args.crop_type is not None:
        raise ConfigError("prepare --crop-type only says which cache --cache-size writes; add --cache-size "
                          "(e.g. 256) or drop --crop-type")
    report = prepare(source, progress=sys.stderr.isatty(), cache=cache)
    summary = report.to_json()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for split, counts in summary["splits"].items():
            print(f"{split:8s} {counts['images']:7d} images {counts['classes']:6d} classes")
        print(f"unreadable {summary['unreadable']}; manifest written to {summary['manifest']}")
        if summary["cache"] is not None:
            print(f"resized images written to {summary['cache']} (read by train --crop-type {cache.crop_type} "
                  f"--image-size {args.cache_size})")
        for path in summary["unreadable_files"]:
            print(f"  unreadable: {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train, or continue a run; under `torchrun --nproc-per-node N` branch-parallel on N processes, process 0
    alone printing and recording (training/parallel/distributed.py)."""
    from antimetric.training.parallel.distributed import (
        check_launch,
        join_process_group,
        launched_size,
        leave_process_group,
    )

    values = given_options(args)
    config = None
    if args.resume is None:
        if values.get("load_ids") == "latest":
            dataset = str(Path(values["data"]).expanduser().absolute()) if values.get("data") else \
                values.get("data_name", _default("data_name"))
            values["load_ids"] = str(_latest_meta_ids(Path(values.get("output_dir", _default("output_dir"))), dataset))
        config = RunConfig.from_flat(values)
    device = values.get("device", _default("device"))
    if launched_size() > 1:
        if config is not None:  # a resumed run's ensemble is checked when its config is read, before its data
            check_launch(resolve(config).model.ensemble_size, device)
        join_process_group(device)
    try:
        return _train_here(args, values, config)
    finally:
        leave_process_group()


def _train_here(args: argparse.Namespace, values: dict, config: RunConfig | None) -> int:
    from antimetric.training.loop import fit, resume_run
    from antimetric.training.parallel.distributed import rank

    first = rank() == 0
    progress = not args.quiet and sys.stderr.isatty() and first
    tracker = _run_tracker(args, config) if first else None
    printer = _epoch_printer(args) if first else None
    report = printer if tracker is None else tracker.callback(printer)
    try:
        if args.resume is not None:
            result = resume_run(Path(args.resume), report, progress=progress, overrides=values)
        else:
            result = fit(config, report, progress=progress)
    except BaseException as error:  # the MLflow run ends KILLED (Ctrl-C) or FAILED, then the CLI reports it
        if tracker is not None:
            tracker.end(error)
        raise
    if not first:
        return 0
    if tracker is not None:
        tracker.finish(result)
        if not args.json:
            print(f"recorded as {tracker.describe()}")
    return _print_result(args, result)


def _run_tracker(args: argparse.Namespace, config: RunConfig | None):
    """train --tracking-uri: the run's MLflow recorder (studies/extensions/run_tracker.py), which checks the store before
    training starts; None without the option."""
    if args.tracking_uri is None:
        if args.experiment is not None:
            raise ConfigError("--experiment names the MLflow experiment of --tracking-uri; add --tracking-uri")
        return None
    tracker = extension(RUN_TRACKER, "train --tracking-uri")
    return tracker(args.tracking_uri, args.experiment, config,
                   resume_dir=None if args.resume is None else Path(args.resume))


def _default(name: str):
    return RunConfig().to_flat()[name]


def _epoch_printer(args: argparse.Namespace):
    def report(result, _save):
        if not args.quiet:
            m = result.metrics
            shown = {k: m[k] for k in ("loss", "branch_accuracy", "images_per_s") if k in m}
            shown.update({k: v for k, v in m.items() if k.startswith(("val_recall", "test_recall")) or k.endswith("map_at_r")})
            text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
            print(f"epoch {result.epoch}: {text}{' *best' if result.is_best else ''}", flush=True)
    return report


def _print_result(args: argparse.Namespace, result) -> int:
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "best_epoch": result.best_epoch, **result.best_metrics}))
    else:
        print(f"best epoch {result.best_epoch}; run folder {result.run_dir}")
    return 0


def _latest_meta_ids(output_dir: Path, data_name: str) -> Path:
    candidates = sorted(output_dir.glob("*/meta_ids.json"), key=lambda p: p.stat().st_mtime)
    candidates = [p for p in candidates if _run_dataset(p.parent) == data_name]
    if not candidates:
        raise ConfigError(f"--load-ids: no earlier {data_name} run with meta_ids.json in {output_dir}; pass a path")
    return candidates[-1]


def _run_dataset(run_dir: Path) -> str | None:
    """What a run folder trained on: a user's own data by its absolute path, a benchmark by its name."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("data") or config.get("data_name")


def _evaluate(args: argparse.Namespace) -> int:
    from antimetric.retrieval.evaluate_model import evaluate_model, trained_data_path
    from antimetric.retrieval.trained import load

    check_device(args.device)
    if args.data and args.data_name:
        raise ConfigError("--data and --data-name each name the data to evaluate on; give one")
    ensemble = load(args.model, device=args.device, tracking_uri=args.tracking_uri)
    if args.data:
        data_path = Path(args.data_path) if args.data_path else None
    else:
        data_path = Path(args.data_path) if args.data_path else trained_data_path(ensemble)
    metrics = evaluate_model(ensemble, data_path, args.data_name, args.crop_type, data=args.data,
                             progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(metrics))
    else:
        print(" ".join(f"{key}={value:.4f}" for key, value in metrics.items()))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from antimetric.model.cost import ensemble_cost
    from antimetric.model.profile import profile
    from antimetric.model.settings import ModelConfig

    config = ModelConfig(backbone=args.backbone, share_type=args.share_type, ensemble_size=args.ensemble_size,
                         meta_class_size=args.meta_class_size, with_fc=args.with_fc, pretrained=False)
    if config.ensemble_size < 1 or config.meta_class_size < 2 or args.image_size < 32:
        raise ConfigError("--ensemble-size must be >= 1, --meta-class-size >= 2 and --image-size >= 32")
    counts = profile(config, args.image_size)
    cost = ensemble_cost(config, args.image_size)
    counts.update(embedding_dims=cost.embedding_dims, gflops_per_image=cost.gflops_per_image)
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"params {counts['params']:,}  flops {counts['flops']:,} (thop, one 3x{args.image_size}x{args.image_size} image)"
              f"  embedding dims {cost.embedding_dims:,}  GFLOPs/image {cost.gflops_per_image:.2f} (torch, multiply-add = 2)")
    return 0
