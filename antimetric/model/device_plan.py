"""How an ensemble trains on a device: every device-dependent choice, made in plan_for().

The model follows a plan (EnsembleNet.configure: memory format, activation checkpointing, the
experimental Triton convolutions, torch.compile), and so do the training step and the optimiser
(antimetric.step: bf16 autocast, cudnn.benchmark, fused Adam). The benchmarks measure plans
(benchmarks/throughput.py's Variant is one), so that what they time is what training runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
    triton_convs: bool = False  # grouped convolutions by antimetric.experimental.triton_convs (experimental)


def plan_for(device: torch.device, implementation: str = "batched", *, activation_checkpointing: bool | None = None,
             compile: bool = False, triton_convs: bool = False) -> DevicePlan:
    """What trains fastest on `device` (benchmarks/RESULTS.md), given the run's options.

    CUDA: bf16 autocast, channels-last and cudnn.benchmark (H100: 2.0x the seed's loop with fused Adam).
    CPUs: fp32 and NCHW. Fused Adam on both (on CPUs 8x less optimiser time). The order of work is the
    same everywhere: layer by layer, all branches at once. activation_checkpointing None (auto): off,
    turned on when a step of the batched network runs out of GPU memory."""
    cuda = device.type == "cuda"
    return DevicePlan(
        channels_last=cuda,
        bf16=cuda,
        cudnn_benchmark=cuda,
        fused_adam=device.type in ("cuda", "cpu"),
        activation_checkpointing=bool(activation_checkpointing),
        checkpoint_after_oom=cuda and implementation == "batched" and activation_checkpointing is None,
        compile="default" if compile else None,
        triton_convs=triton_convs,
    )
