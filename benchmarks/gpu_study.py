"""Every throughput figure of benchmarks/RESULTS.md in one run (made for a short GPU lease).

    python -m benchmarks.gpu_study --out DIR               # on a CUDA machine: every section
    python -m benchmarks.gpu_study --out DIR --smoke       # tiny sizes on a CPU, to check the script
    python -m benchmarks.gpu_study --out DIR --sections levers convs --quick   # the next lease's run
    python -m benchmarks.gpu_study --out DIR --sections levers --rows "loop fp32 (seed)" "+ fused Adam"

Sections, each written to DIR/study.json as soon as it ends (a section that fails or runs out
of time is recorded as such and the next one starts):
  convs    - each distinct branch convolution of the seed configuration alone, at batch 32 and 64,
             by how it is computed (benchmarks.conv_kernels): where the step's time goes, layer by layer
  levers   - the seed configuration (ResNet18, share layer1, 48 branches, meta 12, batch 32,
             256 px): the reference loop and the batched network with one lever added at a time
  memory   - peak memory and images/s of ResNet18/34/50/ResNeXt50 x 48, with and without
             activation checkpointing
  eval     - Recall@K + MAP@R over 60,502 x 24,576 features (SOP scale)
  loader   - decode + augment images/s of the input pipeline alone, by worker count
  embed    - inference images/s of the seed configuration (what embedding a test set costs)

Each row of `levers` and `memory` runs in a fresh Python process, one at a time (benchmarks/study_rows.py:
the rows, and why): nothing an earlier row set or cached, cuDNN's algorithm choices above all, reaches
it. A row records its images/s, TFLOP/s, peak memory, step-0 loss, variant, `settings` (what torch
held when it ran, read back from torch, with the pid) and `seconds` (its process's wall time, start-up
included: ~5 s of imports on a 2-core CPU, plus CUDA's initialisation on a GPU). The parent measures
the matmul peak once, and computes `vs_loop` from the loop row of the same run. A row's process that
crashes, is killed or outlives the rest of --budget-s becomes its row's error, and the next row
starts. The other sections run in the parent.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch

from antimetric.model.device_plan import plan_for, to_device_batch
from antimetric.model.ensemble import build_model
from benchmarks import conv_kernels, evaluation, loader
from benchmarks.common import SEED, environment, model_config, sync, write_result
from benchmarks.study_rows import LOOP, run_row, selected_rows, unknown_row
from benchmarks.throughput import count_step_flops, measure_peak, parser, release_memory


def levers(args, device, peak) -> dict:
    flops = count_step_flops(args, device) / args.batch_size
    # filled in place, so that _checkpoint writes each row as soon as it is measured
    section = RESULT["levers"] = {"step_tflop": flops * args.batch_size / 1e12, "rows": {}}
    rows = section["rows"]
    for name in selected_rows(args, "levers"):
        rows[name] = run_row(args, "levers", name, flops, peak, args.deadline)
        loop = rows.get(LOOP, {}).get("images_per_s")
        for row in rows.values():  # against the loop of this run, measured in its own process too
            row["vs_loop"] = row["images_per_s"] / loop if loop and row["images_per_s"] else None
        _print_row(name, rows[name])
        _checkpoint(args)
    return section


def memory(args, device, peak) -> dict:
    rows = RESULT["memory"] = {}
    for name in selected_rows(args, "memory"):
        rows[name] = run_row(args, "memory", name, 0.0, peak, args.deadline)
        _print_row(name, rows[name])
        _checkpoint(args)
    return rows


def embed(args, device, peak) -> dict:
    plan = plan_for(device, backbone=args.backbone)
    with device:
        model = build_model(model_config(args)).eval()
    model.configure(plan)
    batch = 8 if args.smoke else 256
    images = to_device_batch(torch.randn(batch, 3, args.image_size, args.image_size), device, plan.channels_last)
    with torch.no_grad():  # embed() runs in the plan's precision itself
        for _ in range(2):
            model.embed(images)
        sync(device)
        start, reps = time.perf_counter(), (2 if args.smoke else 16)
        for _ in range(reps):
            model.embed(images)
        sync(device)
    rate = batch * reps / (time.perf_counter() - start)
    print(f"embedding: {rate:.0f} images/s (batch {batch})")
    return {"images_per_s": rate, "batch": batch, "images": batch * reps}


def loader_section(args, device, peak) -> dict:
    workers = [0, 1] if args.smoke else [0, 4, 8, 15]
    result = loader.run(workers, n_images=64 if args.smoke else 512, epochs=2 if args.smoke else 3)
    print(f"loader: {result['images_per_s_by_workers']}; from the resized cache: {result['cached_images_per_s_by_workers']}")
    return result


def eval_section(args, device, peak) -> dict:
    if args.smoke:
        return evaluation.run(str(device), 4000, SEED.ensemble_size * SEED.meta_class_size, SEED.ensemble_size, 1024)
    result = evaluation.run(str(device), evaluation.SOP_TEST_IMAGES, evaluation.SOP_FEATURE_DIM,
                            evaluation.SOP_BRANCHES, evaluation.CHUNK_SIZE)
    print(f"eval: {result['seconds']:.2f} s, peak {result['peak_memory_bytes'] / 2**30:.1f} GiB")
    return result


def convs_section(args, device, peak) -> dict:
    conv_args = conv_kernels.parser().parse_args([
        "--backbone", args.backbone, "--share-type", args.share_type, "--ensemble-size", str(args.ensemble_size),
        "--meta-class-size", str(args.meta_class_size), "--image-size", str(args.image_size),
        "--device", str(device.type), "--batches", *(["8"] if args.smoke else ["32", "64"]),
        "--reps", "2" if args.smoke else "5"])
    return conv_kernels.run(conv_args, RESULT.setdefault("convs", {}), on_row=lambda: _checkpoint(args))


SECTIONS = {"convs": convs_section, "levers": levers, "memory": memory, "eval": eval_section, "loader": loader_section,
            "embed": embed}
RESULT: dict = {}


def _print_row(name: str, row: dict) -> None:
    vs_loop = f" {row['vs_loop']:5.2f}x" if row.get("vs_loop") is not None else ""
    settings = row["settings"] or {}
    ran = (f"pid {settings['pid']}, cudnn.benchmark {settings['cudnn_benchmark']} limit "
           f"{settings['cudnn_benchmark_limit']}, " if settings else "")
    compiled = f" compile {row['compile_s']:.0f}s" if row["compile_s"] else ""
    error = f"  {row['error']}" if row["error"] else ""
    print(f"{name:54s} {row['images_per_s']:8.1f} img/s{vs_loop} {row['tflops_per_s']:7.1f} TFLOP/s "
          f"{row['peak_fraction']:6.1%} {row['peak_memory_bytes'] / 2**30:6.1f} GiB loss0 {row['loss_step0']:.4f} "
          f"[{ran}{row['seconds']:.0f} s]{compiled}{error}", flush=True)


def _checkpoint(args) -> None:
    write_result(Path(args.out) / "study.json", RESULT)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quick", action="store_true", help="levers: only the rows of QUICK_LEVERS (benchmarks/study_rows.py)")
    p.add_argument("--rows", nargs="+", metavar="NAME",
                   help="levers and memory: only these rows, in this order (their names as printed, quoted)")
    p.add_argument("--budget-s", type=float, default=480,
                   help="no section or row starts after this many seconds, and a row still running then is stopped")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = p.parse_args(argv)
    if unknown_row(args.rows or []):
        p.error(f"--rows: no row is named {unknown_row(args.rows)!r}; see LEVERS and MEMORY_ROWS in "
                "benchmarks/study_rows.py (quote a name, leading spaces included)")
    if args.smoke:
        args.backbone, args.ensemble_size, args.image_size, args.batch_size, args.steps = "tiny", 4, 32, 8, 2
    with _sigterm_exits():
        run_study(args)
    return 0


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM ends the study as sys.exit does (run_child then ends the row's process); the handler before it is
    back afterwards, so that main() may run inside another program (the tests run it in theirs)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_study(args: argparse.Namespace) -> None:
    """The sections of args.sections, in order, into DIR/study.json (a new study: nothing of an earlier run in
    this process)."""
    RESULT.clear()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    args.deadline = time.monotonic() + args.budget_s
    RESULT.update(**environment(device), pid=os.getpid(), date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv))
    print(" | ".join(f"{key} {RESULT[key]}" for key in ("device", "torch", "cuda", "cudnn", "driver", "triton",
                                                        "python", "cpu")), flush=True)
    peak = measure_peak(device, args.peak_size)
    release_memory(device)  # the rows' processes get the whole GPU
    RESULT["peak_tflops_per_s"] = peak / 1e12
    print(f"matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    for name in args.sections:
        if time.monotonic() > args.deadline:
            RESULT[name] = {"skipped": "time budget spent"}
            continue
        section_start = time.perf_counter()
        try:
            RESULT[name] = SECTIONS[name](args, device, peak)
        except Exception:  # record it beside the rows measured so far, and go on: one lease, one run
            partial = RESULT.get(name)
            RESULT[name] = {**(partial if isinstance(partial, dict) else {}), "error": traceback.format_exc()[-2000:]}
            print(RESULT[name]["error"], flush=True)
        release_memory(device)
        RESULT[name + "_seconds"] = time.perf_counter() - section_start
        _checkpoint(args)
    print(json.dumps({k: v for k, v in RESULT.items() if k.endswith("_seconds")}))


if __name__ == "__main__":
    sys.exit(main())
