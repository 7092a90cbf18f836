"""How wide the demo's confirmed intervals are for a candidate demo design: the demo's default configuration trained
as the confirmation stage trains repeat r (its seed, the study's split seed, validation fold r % 4), and the test
Recall@1 of its best validation epoch; mean, sample standard deviation and the 95 % Student-t half-width over n.

    python -m benchmarks.demo_spread --classes 60 --per-class 30 --size 64 --epochs 5 --repeats 3

The demo generator's class count, images per class and image side are set while it generates; the data is
generated into a temporary folder, removed afterwards. Needs torch and torchvision only (the repeats' seeds
derived here as the studies derive them).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import stats

from antimetric.data import demo
from antimetric.training.config import RunConfig
from antimetric.training.loop import fit

FOLDS = 4  # what --val-fraction 0.2 leaves of 30 training classes (6 each); more repeats reuse them


def repeat_seeds(study_seed: int, repeat: int) -> dict[str, int]:
    """The seeds of a study's confirmation repeat, as studies.design.seeds derives them (a benchmark imports no
    studies; tests/test_benchmarks.py checks the two agree)."""
    seed = int(np.random.SeedSequence([study_seed, 2, repeat]).generate_state(1)[0])
    return {"seed": seed, "split_seed": study_seed, "val_fold": repeat}


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample standard deviation, 95 % t half-width) of n >= 2 values."""
    sd = statistics.stdev(values)
    return statistics.fmean(values), sd, stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))


@contextlib.contextmanager
def demo_design(classes: int, per_class: int, size: int) -> Iterator[None]:
    """The demo generator's class count, images per class and image side, while generating; the generator's own
    afterwards, so that main() leaves the process as it found it (the tests call it in theirs)."""
    design = demo.N_CLASSES, demo.IMAGES_PER_CLASS, demo.SIZE
    demo.N_CLASSES, demo.IMAGES_PER_CLASS, demo.SIZE = classes, per_class, size
    try:
        yield
    finally:
        demo.N_CLASSES, demo.IMAGES_PER_CLASS, demo.SIZE = design


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=demo.N_CLASSES)
    parser.add_argument("--per-class", type=int, default=demo.IMAGES_PER_CLASS)
    parser.add_argument("--size", type=int, default=demo.SIZE)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="demo-spread-"))
    try:
        with demo_design(args.classes, args.per_class, args.size):
            demo.ensure_demo(work / "data" / "demo")
        values, seconds = [], []
        for r in range(args.repeats):
            config = RunConfig.from_flat(dict(
                data_name="demo", data_path=str(work / "data"), output_dir=str(work / "runs"), run_name=f"r{r}",
                image_size=args.size, num_epochs=args.epochs, batch_size=args.batch_size, val_fraction=0.2,
                num_workers=0, **{**repeat_seeds(0, r), "val_fold": r % FOLDS}))
            start = time.perf_counter()
            values.append(100 * fit(config).best_metrics["test_recall_at_1"])
            seconds.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mean, sd, half = spread(values) if len(values) > 1 else (values[0], math.nan, math.nan)
    result = {**vars(args), "test_recall_at_1": [round(v, 1) for v in values], "mean": round(mean, 1),
              "sd": round(sd, 1), "half_width": round(half, 1), "seconds_per_run": [round(s, 1) for s in seconds]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.classes} classes x {args.per_class} images, {args.size} px, {args.epochs} epochs: test R@1 "
              f"{result['test_recall_at_1']} -> {mean:.1f} ± {half:.1f} % (sd {sd:.1f}, n={len(values)}); "
              f"{statistics.fmean(seconds):.0f} s per run")
    return result


if __name__ == "__main__":
    main()
