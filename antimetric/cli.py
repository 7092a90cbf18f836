"""`python -m antimetric prepare|train|profile`. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from antimetric.config import BOXED_DATASETS, CROP_TYPES, DATASETS, IMPLEMENTATIONS, RunConfig, parse_recalls
from antimetric.data.cache import MAX_CACHE_SIZE
from antimetric.errors import AntimetricError, ConfigError, RunInterrupted
from antimetric.model.backbones import BACKBONES, SHARE_TYPES


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except AntimetricError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as interrupted:
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _recalls(text: str) -> tuple[int, ...]:
    try:
        return parse_recalls(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cache_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CACHE_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels from 1 to {MAX_CACHE_SIZE}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m antimetric", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="{prepare,train,profile}")

    prepare = commands.add_parser("prepare", help="check a dataset's layout and images, write its manifest")
    _add(prepare, "--data-path", default="data", help="parent folder of the dataset folders (default: data)")
    _add(prepare, "--data-name", required=True, choices=DATASETS, help="dataset folder name")
    _add(prepare, "--cache-size", type=_cache_size, metavar="PIXELS",
         help="also write every image resized for this --image-size (e.g. 256), which training then reads")
    _add(prepare, "--crop-type", choices=CROP_TYPES, help="with --cache-size: the --crop-type the cache is for "
         "(default: uncropped)")
    prepare.add_argument("--json", action="store_true", help="print the summary as JSON")
    prepare.set_defaults(command=_prepare)

    train = commands.add_parser("train", help="train and evaluate an ensemble (options of the seed's train.py)")
    _add(train, "--data-path", default="data", help="parent folder of cub/, car/, sop/, isc/ (default: data)")
    _add(train, "--data-name", default="demo", choices=DATASETS, help="dataset (default: demo, generated)")
    _add(train, "--crop-type", default="uncropped", choices=CROP_TYPES, help="cropped uses bounding boxes (cub, car)")
    _add(train, "--recalls", type=_recalls, help="Recall@K values, e.g. 1,2,4,8 (default: per dataset)")
    _add(train, "--backbone", "--backbone-type", choices=tuple(BACKBONES), help="default: resnet18 (tiny for demo)")
    _add(train, "--share-type", default="layer1", choices=SHARE_TYPES, help="last shared ResNet stage")
    _add(train, "--ensemble-size", type=int, help="number of branches (default: 48; demo 12)")
    _add(train, "--meta-class-size", type=int, help="meta-classes per branch (default: 12 cub/car, 512 sop, 192 isc, 6 demo)")
    _add(train, "--with-random", action="store_true", help="random softmax branch weights in training")
    _add(train, "--with-fc", action=argparse.BooleanOptionalAction, help="per-branch linear head")
    _add(train, "--load-ids", nargs="?", const="latest", metavar="PATH",
         help="reuse meta-class ids: a meta_ids.json, or none for the latest run of this dataset in --output-dir")
    _add(train, "--with-train", action="store_true", help="accepted for the seed's scripts; training is the default")
    _add(train, "--no-train", dest="train", action="store_false", help="only evaluate the untrained ensemble")
    _add(train, "--batch-size", type=int, default=32, help="training batch size (default: 32)")
    _add(train, "--num-epochs", type=int, help="default: 20 (cub, car), 40 (sop, isc), 10 (demo)")
    _add(train, "--lr", type=float, help="Adam learning rate (default: 1e-4; demo 2e-3)")
    _add(train, "--image-size", type=int, help="network input side in pixels (default: 256; demo 64)")
    _add(train, "--val-fraction", type=float, default=0.0, help="training classes held out to select the model")
    _add(train, "--max-per-class", type=int, default=300, help="training images kept per class (default: 300)")
    _add(train, "--pretrained", action=argparse.BooleanOptionalAction, help="ImageNet weights (default: on; demo off)")
    _add(train, "--weights-file", help="a local torchvision ImageNet .pth instead of downloading")
    _add(train, "--implementation", default="auto", choices=IMPLEMENTATIONS,
         help="branch formulation: auto (= batched, on every device) or reference (the seed's loop)")
    _add(train, "--activation-checkpointing", action=argparse.BooleanOptionalAction,
         help="recompute activations in the backward pass (default: turned on after a GPU out-of-memory)")
    _add(train, "--compile", action="store_true", help="torch.compile the network for training")
    _add(train, "--seed", type=int, default=0)
    _add(train, "--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    _add(train, "--num-workers", type=int, help="data-loader processes (default: from the CPU count)")
    _add(train, "--image-cache", action=argparse.BooleanOptionalAction, default=True,
         help="read the resized images of `prepare --cache-size` when they match (default: on)")
    _add(train, "--eval-batch-size", type=int)
    _add(train, "--chunk-size", type=int, default=4096, help="query rows per block of the exact kNN search")
    _add(train, "--output-dir", default="runs", help="run folders are created here (default: runs)")
    _add(train, "--run-name", help="run folder name (default: <dataset>-<time>, made unique)")
    _add(train, "--reuse-run-name", action="store_true",
         help="an existing --run-name folder: replace that run's files instead of stopping with an error")
    _add(train, "--resume", metavar="RUN_DIR",
         help="continue the run in RUN_DIR from its last.pt, with its own config (only --device and "
              "--num-workers may change)")
    train.add_argument("--json", action="store_true", help="print the best epoch's metrics as JSON at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    train.set_defaults(command=_train)

    profile = commands.add_parser("profile", help="parameters and FLOPs (thop) of an ensemble")
    _add(profile, "--backbone", "--backbone-type", default="resnet18", choices=tuple(BACKBONES))
    _add(profile, "--ensemble-size", type=int, default=48)
    _add(profile, "--meta-class-size", type=int, default=12)
    _add(profile, "--share-type", default="layer1", choices=SHARE_TYPES)
    _add(profile, "--with-fc", action="store_true")
    _add(profile, "--image-size", type=int, default=256)
    profile.add_argument("--json", action="store_true")
    profile.set_defaults(command=_profile)
    return parser


def _add(parser: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """An option under its dashed names and the seed's underscore spellings."""
    underscored = ["--" + n[2:].replace("-", "_") for n in names if "-" in n[2:]]
    parser.add_argument(*dict.fromkeys([*names, *underscored]), **kwargs)


def _prepare(args: argparse.Namespace) -> int:
    from antimetric.data.cache import CacheForm
    from antimetric.data.manifest import prepare

    cache = None
    if args.cache_size is not None:
        cache = CacheForm(args.crop_type or "uncropped", args.cache_size)
        if cache.crop_type == "cropped" and args.data_name not in BOXED_DATASETS:
            raise ConfigError(f"--crop-type cropped needs bounding boxes, which {args.data_name} does not have; "
                              "drop --crop-type")
    elif args.crop_type is not None:
        raise ConfigError("prepare --crop-type only says which cache --cache-size writes; add --cache-size "
                          "(e.g. 256) or drop --crop-type")
    report = prepare(args.data_name, Path(args.data_path), progress=sys.stderr.isatty(), cache=cache)
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


_NOT_CONFIG = ("command", "json", "quiet", "with_train", "resume")


def _train(args: argparse.Namespace) -> int:
    from antimetric.train import fit, resume_run

    values = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if args.resume is not None:
        defaults = vars(_parser().parse_args(["train"]))
        overrides = {k: v for k, v in values.items() if v != defaults[k]}
        result = resume_run(Path(args.resume), _epoch_printer(args), progress=not args.quiet and sys.stderr.isatty(),
                            overrides=overrides)
        return _print_result(args, result)
    if values["load_ids"] == "latest":
        values["load_ids"] = str(_latest_meta_ids(Path(args.output_dir), args.data_name))
    config = RunConfig.from_flat(values)
    result = fit(config, _epoch_printer(args), progress=not args.quiet and sys.stderr.isatty())
    return _print_result(args, result)


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
    try:
        return json.loads((run_dir / "config.json").read_text()).get("data_name")
    except (OSError, ValueError):
        return None


def _profile(args: argparse.Namespace) -> int:
    from antimetric.config import ModelConfig
    from antimetric.profile import profile

    config = ModelConfig(backbone=args.backbone, share_type=args.share_type, ensemble_size=args.ensemble_size,
                         meta_class_size=args.meta_class_size, with_fc=args.with_fc, pretrained=False)
    if config.ensemble_size < 1 or config.meta_class_size < 2 or args.image_size < 32:
        raise ConfigError("--ensemble-size must be >= 1, --meta-class-size >= 2 and --image-size >= 32")
    counts = profile(config, args.image_size)
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"params {counts['params']:,}  flops {counts['flops']:,} (thop, one 3x{args.image_size}x{args.image_size} image)")
    return 0
