"""Training throughput of the seed-style per-branch loop and the fast (batched) path, side by side.

    python -m benchmarks.throughput --device cuda --json          # the seed configuration
    python -m benchmarks.throughput --device cpu --backbone tiny --ensemble-size 8 --image-size 64 --steps 5

Both paths start from the same weights and train on the same random batch with Adam, so
their step-0 losses agree. Reported per path: images/s, achieved TFLOP/s (torch's flop
counter on one step), fraction of a peak measured in this run (a large bf16 matmul on CUDA,
fp32 on CPU), and peak memory. Needs torch and torchvision only.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import kernels
from antimetric.model.device_plan import DevicePlan, plan_for
from antimetric.model.ensemble import build_model
from antimetric.training.step import make_optimizer, prepare_device, training_step
from benchmarks.common import add_configuration_arguments, add_device_argument, environment, model_config, sync


@dataclass(frozen=True)
class Variant(DevicePlan):
    """How one path trains: the branch formulation, and the device plan (the speed levers) it follows."""

    implementation: str = "batched"  # or "reference" (the seed's loop)
    batch_size: int | None = None  # None: the benchmark's --batch-size
    cpu_autocast: bool = False  # with bf16: autocast on a CPU too (a CPU's own plan; plans for a GPU stay fp32 there)
    # how many algorithms cudnn.benchmark times per convolution (0: all of them); None leaves torch's
    # setting as it is, its default (10) in the fresh process gpu_study runs each variant in
    cudnn_benchmark_limit: int | None = None


REFERENCE = Variant("reference")  # the seed's: fp32, NCHW, unfused Adam (DevicePlan's defaults)


def fast_variant(device: torch.device, backbone: str | None = None) -> Variant:
    """What `antimetric train` does by default on this device: the batched network and plan_for's plan."""
    plan = plan_for(device, backbone=backbone)
    return with_precision(Variant("batched", **dataclasses.asdict(plan)), "auto", device)


def with_precision(variant: Variant, precision: str, device: torch.device) -> Variant:
    """`variant` computing in `precision` (auto, fp32, bf16) on `device`, as --precision would train it."""
    bf16 = plan_for(device, precision=precision).bf16
    return dataclasses.replace(variant, bf16=bf16, cpu_autocast=bf16 and device.type == "cpu")


@dataclass
class Measurement:
    images_per_s: float
    step_ms: float
    tflops_per_s: float
    peak_fraction: float
    peak_memory_bytes: int
    loss_step0: float
    compile_s: float | None = None
    error: str | None = None


def measure_peak(device: torch.device, size: int | None = None) -> float:
    """FLOP/s of a large matmul: bf16 on CUDA, fp32 on CPU (the dtype training runs in there), of side `size`
    (default 8192 on CUDA, 2048 on a CPU: large enough to reach the peak; a smaller one is quicker and reads
    lower, for runs that check the script rather than time it, such as the tests')."""
    n = size or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, best = (20 if device.type == "cuda" else 5), float("inf")
    for _ in range(3):  # best of three
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best


def count_step_flops(args: argparse.Namespace, device: torch.device | None = None) -> float:
    """FLOPs of one training step: 3 x the forward pass (backward = input + weight gradients),
    counted by torch's flop counter on the meta device (no memory, no time). Within 0.1 % of
    torch's count of a whole step of the loop (which skips the image gradient); counting the
    step directly would be wrong here, as the counter overcounts grouped-conv backward passes."""
    with torch.device("meta"):
        model = build_model(model_config(args), "batched")
        images = torch.empty(args.batch_size, 3, args.image_size, args.image_size)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return 3.0 * counter.get_total_flops()


def build_step(args: argparse.Namespace, variant: Variant, device: torch.device) -> Callable[[], torch.Tensor]:
    """One call = one antimetric.training.step.training_step of `variant` on a fixed random batch; returns the loss."""
    batch = variant.batch_size or args.batch_size
    prepare_device(variant)
    if variant.cudnn_benchmark_limit is not None:  # process-wide, like prepare_device's cudnn.benchmark
        torch.backends.cudnn.benchmark_limit = variant.cudnn_benchmark_limit
    torch.manual_seed(0)  # the same weights for every variant
    with device:
        model = build_model(model_config(args), variant.implementation)
    if variant.triton_convs:
        kernels.register()  # the Triton convolutions, outside the antimetric package
    step_model = model.configure(variant)
    images, targets = _batch(args, batch, device)
    if variant.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 1e-4, variant)
    # gpu_study --smoke runs the GPU's plans on a CPU, in fp32 there unless the variant asks for CPU autocast
    autocast_enabled = variant.bf16 and (device.type == "cuda" or variant.cpu_autocast)

    def step():
        return training_step(step_model, images, targets, optimizer, bf16=autocast_enabled)[0]

    return step


def measure(args: argparse.Namespace, variant: Variant, device: torch.device, flops_per_image: float,
            peak: float) -> Measurement:
    batch = variant.batch_size or args.batch_size
    step = build_step(args, variant, device)
    compile_s = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss0 = step().item()  # compiles, if compiling
    if variant.compile:
        compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    images_per_s = batch / seconds
    tflops = flops_per_image * images_per_s
    return Measurement(images_per_s, seconds * 1e3, tflops / 1e12, tflops / peak, peak_memory, loss0, compile_s)


def _batch(args: argparse.Namespace, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, args.image_size, args.image_size, generator=g)
    targets = torch.randint(0, args.meta_class_size, (batch, args.ensemble_size), generator=g)
    return images.to(device), targets.to(device)


def release_memory(device: torch.device) -> None:
    """After a measurement: the model, optimiser and (after an error) the failed step's frames go,
    with the compiled graphs."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def safe_measure(args, variant, device, flops_per_image, peak) -> Measurement:
    """A variant that runs out of memory is reported as such, and the rest go on."""
    try:
        result = measure(args, variant, device, flops_per_image, peak)
    except torch.cuda.OutOfMemoryError as exc:
        result = Measurement(0.0, 0.0, 0.0, 0.0, 0, float("nan"), error=f"out of memory: {str(exc)[:120]}")
    release_memory(device)
    return result


def compare(args: argparse.Namespace, fast: Variant | None = None, reference: Variant = REFERENCE) -> dict:
    device = torch.device(args.device)
    fast = fast or fast_variant(device, args.backbone)
    if args.fast_implementation:
        fast = dataclasses.replace(fast, implementation=args.fast_implementation)
    if getattr(args, "fast_precision", None):
        fast = with_precision(fast, args.fast_precision, device)
    if getattr(args, "fast_layout", None):
        fast = dataclasses.replace(fast, channels_last=args.fast_layout == "channels-last")
    peak = measure_peak(device, getattr(args, "peak_size", None))
    flops_per_image = count_step_flops(args, device) / args.batch_size
    # interleaved repeats, each path's median: a shared machine's drift hits both paths alike
    samples: dict[str, list[Measurement]] = {"reference": [], "fast": []}
    for _ in range(args.repeats):
        samples["reference"].append(safe_measure(args, reference, device, flops_per_image, peak))
        samples["fast"].append(safe_measure(args, fast, device, flops_per_image, peak))
    ref, fst = (_median(samples[name]) for name in ("reference", "fast"))
    return {
        **environment(device),
        "config": {k: getattr(args, k) for k in ("backbone", "share_type", "ensemble_size", "meta_class_size",
                                                 "batch_size", "image_size", "steps", "repeats")},
        "step_tflop": flops_per_image * args.batch_size / 1e12,
        "peak_tflops_per_s": peak / 1e12,
        "reference": {**asdict(ref), "variant": asdict(reference)},
        "fast": {**asdict(fst), "variant": asdict(fast)},
        "speedup": fst.images_per_s / ref.images_per_s if ref.images_per_s else float("nan"),
        "images_per_s_samples": {name: [m.images_per_s for m in ms] for name, ms in samples.items()},
    }


def _median(measurements: list[Measurement]) -> Measurement:
    """The measurement of median speed (the upper middle one of an even count)."""
    return sorted(measurements, key=lambda m: m.images_per_s)[len(measurements) // 2]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_configuration_arguments(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure both paths this many times, interleaved, and report each one's median")
    add_device_argument(p)
    p.add_argument("--peak-size", type=int,
                   help="side of the square matmul that measures the peak (default: 8192 on CUDA, 2048 on a CPU); "
                        "a smaller one is quicker and reads a lower peak")
    p.add_argument("--fast-implementation", choices=("batched", "reference"),
                   help="override the fast path's formulation (default: what training picks for the device)")
    p.add_argument("--fast-precision", choices=("fp32", "bf16"),
                   help="the fast path's arithmetic (default: what training picks for the device; the loop stays fp32)")
    p.add_argument("--fast-layout", choices=("nchw", "channels-last"),
                   help="the fast path's memory format (default: what training picks for the device and backbone)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def print_table(result: dict) -> None:
    print(f"{result['device']}, torch {result['torch']}, {result['config']}")
    print(f"one step = {result['step_tflop']:.3f} TFLOP; measured peak {result['peak_tflops_per_s']:.1f} TFLOP/s")
    print(f"{'path':10s} {'images/s':>10s} {'TFLOP/s':>9s} {'of peak':>8s} {'peak MiB':>9s} {'loss@0':>8s}")
    for name in ("reference", "fast"):
        m = result[name]
        print(f"{name:10s} {m['images_per_s']:10.1f} {m['tflops_per_s']:9.2f} {m['peak_fraction']:8.1%} "
              f"{m['peak_memory_bytes'] / 2**20:9.0f} {m['loss_step0']:8.4f}")
    print(f"speedup {result['speedup']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = compare(args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
