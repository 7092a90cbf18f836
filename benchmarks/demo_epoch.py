"""A demo study trial end to end, epoch by epoch: loading, training step and evaluation together.

    python -m benchmarks.demo_epoch --data-path data --epochs 4 --threads 1 --json

Trains the demo's best-found ensemble shape (tiny ResNet x 8, meta 12, share layer1, with_random,
fc head, 64 px, batch 32, the 20 % validation split a study uses) as `antimetric.training.loop.fit` runs a
study trial: one thread (what Ray gives a trial of `cpus_per_trial=1`), images loaded in the main
process. Each variant is a whole run from the same seed, and adds one lever to the one before;
they run interleaved in one process:

  before   fp32, NCHW, every image decoded and resized every epoch (antimetric before 2026-11-29)
  memory   + resized images kept decoded in memory after the first epoch (--image-memory)
  bf16     + bf16 autocast (--precision bf16)
  after    + channels-last (what plan_for picks for the tiny backbone on a CPU): today's default on
           a CPU with native bf16

Reported per variant: the first epoch and the later ones (train seconds, evaluation seconds), the
whole fit, and the final test Recall@1. Needs torch and torchvision only.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from antimetric.data.demo import ensure_demo
from antimetric.training import session
from antimetric.training.config import RunConfig
from antimetric.training.loop import fit
from benchmarks.common import environment

# The ensemble `make demo` selected on 2026-11-29 (seed 0); fixed here so that every variant trains it.
TRIAL = {"data_name": "demo", "ensemble_size": 8, "meta_class_size": 12, "share_type": "layer1",
         "with_random": True, "with_fc": True, "lr": 4.137e-3, "val_fraction": 0.2, "num_workers": 0}
VARIANTS = {"before": {"precision": "fp32", "image_memory": 0}, "memory": {"precision": "fp32"},
            "bf16": {"precision": "bf16"}, "after": {"precision": "bf16"}}
NCHW = ("before", "memory", "bf16")  # the layout of CPU plans before 2026-11-29, which no option selects


@contextlib.contextmanager
def nchw_plans(active: bool):
    """Training's device plans without channels-last while active (the earlier CPU layout)."""
    if not active:
        yield
        return
    chosen = session.plan_for
    session.plan_for = lambda *args, **kwargs: dataclasses.replace(chosen(*args, **kwargs), channels_last=False)
    try:
        yield
    finally:
        session.plan_for = chosen


def run_variant(name: str, data_path: Path, epochs: int, output: Path) -> dict:
    config = RunConfig.from_flat({**TRIAL, **VARIANTS[name], "data_path": str(data_path), "num_epochs": epochs,
                                  "output_dir": str(output), "run_name": name})
    epochs_seen: list[dict[str, float]] = []
    resolved: dict = {}
    start = time.perf_counter()
    with nchw_plans(name in NCHW):
        result = fit(config, lambda r, save: epochs_seen.append(r.metrics) or resolved.update(r.decisions.as_dict()),
                     write_last=False)
    total = time.perf_counter() - start
    train = [m["epoch_seconds"] for m in epochs_seen]
    evaluation = [m["eval_seconds"] for m in epochs_seen]
    return {"fit_s": total, "first_epoch_train_s": train[0], "first_epoch_eval_s": evaluation[0],
            "later_epoch_train_s": statistics.median(train[1:]) if len(train) > 1 else None,
            "later_epoch_eval_s": statistics.median(evaluation[1:]) if len(evaluation) > 1 else None,
            "train_s": train, "eval_s": evaluation,
            "test_recall_at_1": epochs_seen[-1]["test_recall_at_1"], "best_epoch": result.best_epoch,
            "precision": resolved["precision"], "image_memory_mib": resolved["image_memory"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", type=Path, default=Path("data"), help="where the demo dataset is (made if absent)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a study trial on 2 cores: 1)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all variants, interleaved; medians reported")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ensure_demo(args.data_path / "demo")
    rounds: dict[str, list[dict]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as output:
        for repeat in range(args.repeats):
            for name in args.variants:
                rounds[name].append(run_variant(name, args.data_path, args.epochs, Path(output) / str(repeat)))
    result = {**environment(torch.device("cpu")), "threads": args.threads, "epochs": args.epochs,
              "trial": TRIAL, "command": " ".join(["python -m benchmarks.demo_epoch", *(argv or sys.argv[1:])]),
              "variants": {name: _median(runs) for name, runs in rounds.items()}}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result)
    return 0


def _median(runs: list[dict]) -> dict:
    """The run of median fit time, with every run's fit time beside it."""
    middle = sorted(runs, key=lambda r: r["fit_s"])[len(runs) // 2]
    return {**middle, "fit_s_samples": [r["fit_s"] for r in runs]}


def _print_table(result: dict) -> None:
    print(f"{result['device']}, torch {result['torch']}, {result['threads']} thread(s), {result['epochs']} epochs")
    print(f"{'variant':8s} {'fit s':>7s} {'epoch 1 train':>14s} {'eval':>6s} {'later train':>12s} {'eval':>6s} {'test R@1':>9s}")
    for name, v in result["variants"].items():
        print(f"{name:8s} {v['fit_s']:7.2f} {v['first_epoch_train_s']:14.2f} {v['first_epoch_eval_s']:6.2f} "
              f"{v['later_epoch_train_s'] or 0:12.2f} {v['later_epoch_eval_s'] or 0:6.2f} {v['test_recall_at_1']:9.4f}")


if __name__ == "__main__":
    sys.exit(main())
