"""How an ensemble trains on a device: every device-dependent choice, made in plan_for().

The model follows a plan (EnsembleNet.configure: memory format, activation checkpointing, the
experimental Triton convolutions, torch.compile), and so do the training step and the optimiser
(antimetric.training.step: bf16 autocast, cudnn.benchmark, fused Adam). The benchmarks measure plans
(benchmarks/throughput.py's Variant is one), so that what they time is what training runs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from antimetric.model.settings import PRECISIONS, check_name

# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic, which oneDNN's bf16 convolutions and
# matmuls use: without them torch emulates bf16 in fp32 units, slower than plain fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
# Backbones whose grouped convolutions oneDNN runs faster channels-last on a CPU, in bf16: the demo's tiny
# ensemble trains faster channels-last than NCHW (and a demo trial takes less time), ResNet18 slower.
# Measured: benchmarks/RESULTS.md, "CPU bf16 autocast", "Channels-last on a CPU" and "The demo end to end".
CPU_CHANNELS_LAST_BACKBONES = frozenset({"tiny"})


@dataclass(frozen=True, kw_only=True)
class DevicePlan:
    """The defaults are plain PyTorch as the seed trained: fp32, NCHW, one Adam kernel per operation."""

    channels_last: bool = False  # NHWC weights and images, cuDNN's fast layout
    bf16: bool = False  # bf16 autocast for the forward pass and the loss
    cudnn_benchmark: bool = False  # cuDNN times its algorithms for our fixed input sizes and keeps the fastest
    fused_adam: bool = False  # one pass over each parameter instead of one per operation
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    checkpoint_after_oom: bool = False  # turn activation checkpointing on when a step runs out of GPU memory
    compile: str | None = None  # a torch.compile mode ("default", "reduce-overhead", ...); None: eager
    triton_convs: bool = False  # convolutions by the kernels registered in model/kernel_hook.py (experimental)


def plan_for(device: torch.device, implementation: str = "batched", *, precision: str = "auto",
             backbone: str | None = None, activation_checkpointing: bool | None = None, compile: bool = False,
             triton_convs: bool = False) -> DevicePlan:
    """What trains fastest on `device` (benchmarks/RESULTS.md), given the run's options.

    CUDA: bf16 autocast, channels-last and cudnn.benchmark (with fused Adam, faster than the seed's loop).
    CPUs: bf16 autocast where the CPU computes bf16 natively (faster than fp32 there, for the demo's tiny
    ensemble and for ResNet18 x 8), else fp32; NCHW, but channels-last for the backbones of
    CPU_CHANNELS_LAST_BACKBONES. Fused Adam on both (less optimiser time on CPUs too). The order of work is
    the same everywhere: layer by layer, all branches at once. activation_checkpointing None (auto): off,
    turned on when a step of the batched network runs out of GPU memory. Measured: benchmarks/RESULTS.md,
    "GPU: one NVIDIA H100", "CPU bf16 autocast" and "CPU: this development machine"."""
    cuda = device.type == "cuda"
    return DevicePlan(
        channels_last=cuda or (device.type == "cpu" and backbone in CPU_CHANNELS_LAST_BACKBONES),
        bf16=resolve_precision(precision, device) == "bf16",
        cudnn_benchmark=cuda,
        fused_adam=device.type in ("cuda", "cpu"),
        activation_checkpointing=bool(activation_checkpointing),
        checkpoint_after_oom=cuda and implementation == "batched" and activation_checkpointing is None,
        compile="default" if compile else None,
        triton_convs=triton_convs,
    )


def to_device_batch(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on `device`, in the memory format of the network's plan (DevicePlan.channels_last)."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def resolve_precision(precision: str, device: torch.device) -> str:
    """`fp32` or `bf16`: what `--precision` (PRECISIONS: auto, fp32, bf16) means on `device`."""
    check_name("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()) else "fp32"


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU multiplies bf16 natively (read from Linux's CPU flags; False where they are not)."""
    flags = (cpuinfo_value("flags", cpuinfo) or "").split()
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def cpuinfo_value(key: str, cpuinfo: Path = CPUINFO) -> str | None:
    """The value of the first `key : value` line of Linux's /proc/cpuinfo (`flags`, `model name`), or None."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() == key:
            return value.strip()
    return None
