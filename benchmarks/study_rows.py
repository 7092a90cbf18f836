"""The rows of gpu_study's `levers` and `memory` sections, each measured in a fresh Python process.

    python -m benchmarks.study_rows --section levers --row "+ fused Adam" --result FILE --peak-flops F [options]

run_row starts that command (this module's main) for one row and reads what it writes, so that a row
inherits nothing from the rows before it: torch caches cuDNN's algorithm choice per convolution shape
whatever cudnn.benchmark says, and in one process the first batch-32 row (benchmark off) likely chose
the algorithms of every later batch-32 row (issue 13). The process measures the row with
benchmarks.throughput's safe_measure, then writes (atomically) the measurement, the variant, and
`settings`: what torch held when it ran, read back from torch rather than from the variant
(cudnn.benchmark and benchmark_limit, the two TF32 switches, torch's threads) with its pid. A process
that crashes, is killed (the out-of-memory killer) or outlives its time limit becomes its row's error.

Test hook: with GPU_STUDY_KILL_ROW=NAME, row NAME's process kills itself (SIGKILL) before it measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import run_child, torch_settings, write_result
from benchmarks.throughput import REFERENCE, Measurement, Variant, fast_variant, parser, release_memory, safe_measure

GPU = fast_variant(torch.device("cuda"))  # what `antimetric train` runs on a GPU


def gpu(**levers) -> Variant:
    """The GPU's default variant with some levers changed."""
    return dataclasses.replace(GPU, **levers)


EAGER = gpu(cudnn_benchmark=False, fused_adam=False)
LOOP = "loop fp32 (seed)"
EXHAUSTIVE = "  same, cudnn.benchmark exhaustive (benchmark_limit 0)"
LEVERS = [  # (name, variant): each row adds one lever to the row before, unless it says otherwise
    (LOOP, REFERENCE),
    ("loop bf16+CL", dataclasses.replace(EAGER, implementation="reference")),
    ("batched bf16+CL", EAGER),
    ("+ cudnn.benchmark", dataclasses.replace(EAGER, cudnn_benchmark=True)),
    ("+ fused Adam", GPU),
    (EXHAUSTIVE, gpu(cudnn_benchmark_limit=0)),
    ("  same, NCHW", gpu(channels_last=False)),
    ("  same, Triton grouped convs", gpu(triton_convs=True)),
    ("  same, Triton grouped convs, batch 64", gpu(triton_convs=True, batch_size=64)),
    ("  same, act. checkpointing", gpu(activation_checkpointing=True)),
    ("  same, batch 64", gpu(batch_size=64)),
    ("  same, batch 128", gpu(batch_size=128)),
    ("+ torch.compile", gpu(compile="default")),
    ("+ compile reduce-overhead (CUDA graphs)", gpu(compile="reduce-overhead")),
]
# --quick: the loop, the default fast path, its exhaustive cuDNN search, and the Triton convolutions
QUICK_LEVERS = [LOOP, "+ fused Adam", EXHAUSTIVE, "  same, Triton grouped convs",
                "  same, Triton grouped convs, batch 64"]
BACKBONES = ["resnet18", "resnet34", "resnet50", "resnext50"]
MEMORY_ROWS = {f"{backbone}{' +ckpt' if ckpt else ''}": (backbone, gpu(activation_checkpointing=ckpt))
               for backbone in ("tiny", *BACKBONES) for ckpt in (False, True)}  # tiny: --smoke's
CONFIGURATION = ("device", "backbone", "share_type", "ensemble_size", "meta_class_size", "image_size", "batch_size",
                 "steps", "warmup")  # the study's options a row's process is given
MIN_ROW_S = 10.0  # no row starts with less time left: start-up alone takes ~5 s, and CUDA's initialisation
KILL_ROW_VARIABLE = "GPU_STUDY_KILL_ROW"


def row_arguments(section: str, name: str, args: argparse.Namespace) -> tuple[Variant, argparse.Namespace]:
    """The variant row `name` of `section` measures, and the study's options as that row changes them."""
    row_args = argparse.Namespace(**vars(args))
    if section == "levers":
        variant = dict(LEVERS)[name]
        if variant.implementation == "reference":
            row_args.steps = max(3, args.steps // 2)  # the loop is slow; fewer steps give the same precision
    else:
        row_args.backbone, variant = MEMORY_ROWS[name]
        row_args.steps, row_args.warmup = 3, 1
    return variant, row_args


def selected_rows(args: argparse.Namespace, section: str) -> list[str]:
    """The rows of `section` a study measures: --rows' in their order if given, else --quick's or all."""
    if section == "memory":
        names = [name for name, (backbone, _) in MEMORY_ROWS.items() if (backbone == "tiny") == args.smoke]
    else:  # CUDA graphs need CUDA: --smoke leaves them out
        names = [name for name, v in LEVERS if not (args.smoke and v.compile not in (None, "default"))]
        if args.quick and not args.rows:
            names = [name for name in names if name in QUICK_LEVERS]
    return [name for name in args.rows if name in names] if args.rows else names


def unknown_row(names: list[str]) -> str | None:
    """The first of `names` that is no row of either section, if any."""
    return next((name for name in names if name not in dict(LEVERS) and name not in MEMORY_ROWS), None)


def run_row(args: argparse.Namespace, section: str, name: str, flops_per_image: float, peak: float,
            deadline: float) -> dict:
    """Row `name` of `section`, measured by a process of its own that must end by `deadline` (time.monotonic()).
    Its measurement, variant and settings, and `seconds`: the process's wall time, start-up included."""
    variant, _ = row_arguments(section, name, args)
    remaining = deadline - time.monotonic()
    if remaining < MIN_ROW_S:
        return _failed(variant, "not started: --budget-s is spent", 0.0)
    options = [word for key in CONFIGURATION for word in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    with tempfile.TemporaryDirectory(prefix="gpu-study-row-") as folder:
        result_path = Path(folder) / "row.json"
        child = run_child([sys.executable, "-m", "benchmarks.study_rows", "--section", section, "--row", name,
                           "--result", str(result_path), "--peak-flops", repr(peak),
                           "--flops-per-image", repr(flops_per_image), *options],
                          result_path, timeout_s=remaining, cwd=Path(__file__).resolve().parents[1])
    if child.error is not None:
        print(child.output[-3000:], flush=True)
        error = child.error + (" (the rest of --budget-s)" if child.error.startswith("timed out") else "")
        return {**_failed(variant, error, child.seconds), "output": child.output[-3000:]}
    return {**child.result["measurement"], "variant": child.result["variant"], "settings": child.result["settings"],
            "seconds": child.seconds}


def _failed(variant: Variant, error: str, seconds: float) -> dict:
    return {**dataclasses.asdict(_no_measurement(error)), "variant": dataclasses.asdict(variant), "settings": None,
            "seconds": seconds}


def _no_measurement(error: str) -> Measurement:
    return Measurement(0.0, 0.0, 0.0, 0.0, 0, float("nan"), error=error)


def measure(args: argparse.Namespace, variant: Variant, device: torch.device, flops_per_image: float,
            peak: float) -> Measurement:
    """safe_measure, with any error (a kernel that fails to compile, say) recorded as the row's result."""
    try:
        return safe_measure(args, variant, device, flops_per_image, peak)
    except Exception as exc:  # one lease, one run: keep the other rows
        release_memory(device)
        return _no_measurement(f"{type(exc).__name__}: {str(exc)[:300]}")


def main(argv: list[str] | None = None) -> int:
    """One row, in this process: what run_row starts."""
    p = parser()
    p.add_argument("--section", choices=("levers", "memory"), required=True)
    p.add_argument("--row", required=True, help="the row's name, as gpu_study prints it")
    p.add_argument("--result", required=True, help="the JSON file to write")
    p.add_argument("--peak-flops", type=float, required=True, help="the device's peak FLOP/s, as the study measured it")
    p.add_argument("--flops-per-image", type=float, default=0.0, help="FLOPs of one image's training step")
    args = p.parse_args(argv)
    if args.row not in (dict(LEVERS) if args.section == "levers" else MEMORY_ROWS):
        p.error(f"--row: {args.section} has no row named {args.row!r}; see LEVERS and MEMORY_ROWS in {__file__}")
    variant, row_args = row_arguments(args.section, args.row, args)
    if os.environ.get(KILL_ROW_VARIABLE) == args.row:
        os.kill(os.getpid(), signal.SIGKILL)
    measurement = measure(row_args, variant, torch.device(args.device), args.flops_per_image, args.peak_flops)
    write_result(Path(args.result), {"measurement": dataclasses.asdict(measurement),
                                     "variant": dataclasses.asdict(variant), "settings": torch_settings()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
