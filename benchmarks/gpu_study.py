"""Every throughput figure of benchmarks/RESULTS.md in one run (made for a short GPU lease).

    python -m benchmarks.gpu_study --out DIR               # on a CUDA machine, ~6 minutes
    python -m benchmarks.gpu_study --out DIR --smoke       # tiny sizes on a CPU, to check the script
    python -m benchmarks.gpu_study --out DIR --sections convs levers --quick   # the next lease's run

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
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from antimetric.model import build_model, plan_for
from antimetric.step import to_device_batch
from benchmarks import conv_kernels, evaluation, loader
from benchmarks.common import SEED, environment, model_config, sync, write_result
from benchmarks.throughput import (
    REFERENCE,
    Measurement,
    Variant,
    count_step_flops,
    fast_variant,
    measure_peak,
    parser,
    release_memory,
    safe_measure,
)

GPU = fast_variant(torch.device("cuda"))  # what `antimetric train` runs on a GPU


def gpu(**levers) -> Variant:
    """The GPU's default variant with some levers changed."""
    return dataclasses.replace(GPU, **levers)


EAGER = gpu(cudnn_benchmark=False, fused_adam=False)
LEVERS = [  # (name, variant): each row adds one lever to the row before, unless it says otherwise
    ("loop fp32 (seed)", REFERENCE),
    ("loop bf16+CL", dataclasses.replace(EAGER, implementation="reference")),
    ("batched bf16+CL", EAGER),
    ("+ cudnn.benchmark", dataclasses.replace(EAGER, cudnn_benchmark=True)),
    ("+ fused Adam", GPU),
    ("  same, NCHW", gpu(channels_last=False)),
    ("  same, Triton grouped convs", gpu(triton_convs=True)),
    ("  same, Triton grouped convs, batch 64", gpu(triton_convs=True, batch_size=64)),
    ("  same, act. checkpointing", gpu(activation_checkpointing=True)),
    ("  same, batch 64", gpu(batch_size=64)),
    ("  same, batch 128", gpu(batch_size=128)),
    ("+ torch.compile", gpu(compile="default")),
    ("+ compile reduce-overhead (CUDA graphs)", gpu(compile="reduce-overhead")),
]
# --quick: the rows that are new since the 2026-11-26 run, with the loop and the default beside them
QUICK_LEVERS = ["loop fp32 (seed)", "+ fused Adam", "  same, Triton grouped convs",
                "  same, Triton grouped convs, batch 64"]
BACKBONES = ["resnet18", "resnet34", "resnet50", "resnext50"]


def _measure(args, variant, device, flops, peak) -> Measurement:
    """safe_measure, with any error (a kernel that fails to compile, say) recorded as the row's result."""
    try:
        return safe_measure(args, variant, device, flops, peak)
    except Exception as exc:  # one lease, one run: keep the other rows
        release_memory(device)
        return Measurement(0.0, 0.0, 0.0, 0.0, 0, float("nan"), error=f"{type(exc).__name__}: {str(exc)[:300]}")


def levers(args, device, peak) -> dict:
    flops = count_step_flops(args, device) / args.batch_size
    # filled in place, so that _checkpoint writes each row as soon as it is measured
    section = RESULT["levers"] = {"step_tflop": flops * args.batch_size / 1e12, "rows": {}}
    rows = section["rows"]
    for name, variant in LEVERS:
        if args.smoke and variant.compile not in (None, "default"):
            continue
        if args.quick and name not in QUICK_LEVERS:
            continue
        steps = args.steps
        if variant.implementation == "reference":
            args.steps = max(3, steps // 2)  # the loop is slow; fewer steps give the same precision
        try:
            m = _measure(args, variant, device, flops, peak)
        finally:
            args.steps = steps
        rows[name] = {**dataclasses.asdict(m), "variant": dataclasses.asdict(variant)}
        _print_row(name, m)
        _checkpoint(args)
    return section


def memory(args, device, peak) -> dict:
    rows = RESULT["memory"] = {}
    base_steps, base_warmup = args.steps, args.warmup
    args.steps, args.warmup = 3, 1
    backbone = args.backbone
    try:
        for name in (["tiny"] if args.smoke else BACKBONES):
            args.backbone = name
            for ckpt in (False, True):
                m = _measure(args, gpu(activation_checkpointing=ckpt), device, 0.0, peak)
                rows[f"{name}{' +ckpt' if ckpt else ''}"] = dataclasses.asdict(m)
                _print_row(f"{name}{' +ckpt' if ckpt else ''}", m)
                _checkpoint(args)
    finally:
        args.backbone, args.steps, args.warmup = backbone, base_steps, base_warmup
    return rows


def embed(args, device, peak) -> dict:
    plan = plan_for(device)
    with device:
        model = build_model(model_config(args)).eval()
    model.configure(plan)
    batch = 8 if args.smoke else 256
    images = to_device_batch(torch.randn(batch, 3, args.image_size, args.image_size), device)
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


def _print_row(name: str, m) -> None:
    extra = f" compile {m.compile_s:.0f}s" if m.compile_s else ""
    error = f"  {m.error}" if m.error else ""
    print(f"{name:42s} {m.images_per_s:8.1f} img/s {m.tflops_per_s:7.1f} TFLOP/s {m.peak_fraction:6.1%} "
          f"{m.peak_memory_bytes / 2**30:6.1f} GiB loss0 {m.loss_step0:.4f}{extra}{error}", flush=True)


def _checkpoint(args) -> None:
    write_result(Path(args.out) / "study.json", RESULT)


def main() -> int:
    p = parser()
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quick", action="store_true", help="levers: only the rows named in QUICK_LEVERS")
    p.add_argument("--budget-s", type=float, default=480, help="skip sections that would start after this")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS))
    args = p.parse_args()
    if args.smoke:
        args.backbone, args.ensemble_size, args.image_size, args.batch_size, args.steps = "tiny", 4, 32, 8, 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    start = time.perf_counter()
    RESULT.update(**environment(device), date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv))
    peak = measure_peak(device)
    RESULT["peak_tflops_per_s"] = peak / 1e12
    print(f"{RESULT['device']} torch {torch.__version__}: matmul peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    for name in args.sections:
        if time.perf_counter() - start > args.budget_s:
            RESULT[name] = {"skipped": "time budget spent"}
            continue
        section_start = time.perf_counter()
        try:
            RESULT[name] = SECTIONS[name](args, device, peak)
        except Exception:  # record it beside the rows measured so far, and go on: one lease, one run
            partial = RESULT.get(name)
            RESULT[name] = {**(partial if isinstance(partial, dict) else {}), "error": traceback.format_exc()[-2000:]}
            print(RESULT[name]["error"], flush=True)
        RESULT[name + "_seconds"] = time.perf_counter() - section_start
        _checkpoint(args)
    print(json.dumps({k: v for k, v in RESULT.items() if k.endswith("_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
