"""Kernel-level profile of the training step `antimetric train` runs (antimetric.training.step.training_step),
on the fast path training picks for the device; by default the seed configuration on CUDA.

    python -m benchmarks.profile_step [--nchw]
    python -m benchmarks.profile_step --device cpu --backbone tiny --ensemble-size 2 --image-size 32 --batch-size 2

The step is benchmarks.throughput's: same weights, batch and optimiser as the throughput figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import add_configuration_arguments, add_device_argument, sync
from benchmarks.throughput import build_step, fast_variant


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_configuration_arguments(p)
    add_device_argument(p)
    p.add_argument("--nchw", action="store_true", help="NCHW tensors instead of channels-last")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the profile")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--rows", type=int, default=22, help="kernels listed, most time first")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    variant = fast_variant(device, args.backbone)
    if args.nchw:
        variant = dataclasses.replace(variant, channels_last=False)
    step = build_step(args, variant, device)
    for _ in range(args.warmup):
        step()
    sync(device)
    activity, clock = (ProfilerActivity.CUDA, "cuda") if device.type == "cuda" else (ProfilerActivity.CPU, "cpu")
    with profile(activities=[activity]) as prof:
        for _ in range(args.steps):
            step()
        sync(device)
    print(prof.key_averages().table(sort_by=f"{clock}_time_total", row_limit=args.rows, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
