"""What a run needs in memory, estimated before anything is built, against what the device has: a run, a study's
space entry or a loaded ensemble that cannot fit is refused in one line before any data is read.

The estimate is a lower bound, so that no configuration that fits is refused: it counts one branch and the trunk
on the meta device (no memory, no 1e9-branch model) and scales by the ensemble size, batch and precision.
Checked against the peaks of benchmarks/RESULTS.md on an 80 GB H100 (ResNet18/34/50/ResNeXt50 x 48, batch 32,
256 px, bf16: the estimate is 83-91 % of the peak with activation checkpointing, 79-83 % without; the seed's loop
of ResNet18s, fp32 and bf16: 84 % and 65 %) and against the peak resident memory of two training steps on the
2-core CPU (tiny x 4-16 at 32-256 px, ResNet18 x 4-8 at 64-128 px, ResNet50 x 2 at 128 px, fp32 and bf16:
26-89 % of it; tests/training/test_memory_estimate.py keeps the H100 rows).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from antimetric.errors import ConfigError
from antimetric.model.backbones.family import get_backbone
from antimetric.model.device_plan import DevicePlan, plan_for
from antimetric.model.ensemble import build_model
from antimetric.model.settings import ModelConfig
from antimetric.training.config import RunConfig

TRAINING_BYTES_PER_PARAMETER = 16  # fp32 weights, their gradients and Adam's two moments
INFERENCE_BYTES_PER_PARAMETER = 4
# Of the outputs of every layer (convolution, BatchNorm, ReLU, pooling), the share a training step keeps for the
# backward pass, at least: in-place ReLUs share their input's memory. Less the parameters' share, the H100 peaks
# above hold 69-77 % of them (bf16) and the seed's fp32 loop 67 %; half is a margin below both.
KEPT_LAYER_OUTPUTS = 0.5
MEMINFO = Path("/proc/meminfo")
_CGROUP_LIMITS = ((Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),  # cgroup v2
                  (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                   Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")))  # cgroup v1


@dataclass(frozen=True)
class Footprint:
    """Counts of the trunk and of one branch for one image, from a 1-branch network on the meta device."""

    trunk_params: int
    branch_params: int  # without the head, which depends on the meta-class size
    trunk_values: int  # elements of every layer output
    branch_values: int
    branch_block_values: int  # elements of the batched blocks' outputs: all that activation checkpointing keeps
    trunk_largest: int  # the largest single layer output, which inference must hold
    branch_largest: int


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # bytes: the weights, and in training their gradients and Adam's moments
    activations: int  # bytes: kept for the backward pass (training) or of one batch (inference)

    @property
    def total(self) -> int:
        return self.parameters + self.activations


def estimate_memory(config: RunConfig, device: torch.device, training: bool = True, *,
                    plan: DevicePlan | None = None) -> MemoryEstimate:
    """The least memory a resolved config needs on `device` to train (or, training=False, to embed a batch of
    --eval-batch-size images), following `plan` (default: plan_for the config on `device`): the larger of a
    training step and an evaluation batch."""
    model = config.model
    if plan is None:
        plan = plan_for(device, model.implementation, precision=config.train.precision, backbone=model.backbone,
                        activation_checkpointing=model.activation_checkpointing)
    counts = footprint(model.backbone, model.share_type, config.data.image_size)
    head = (get_backbone(model.backbone).feature_width + 1) * model.meta_class_size if model.with_fc else 0
    params = counts.trunk_params + model.ensemble_size * (counts.branch_params + head)
    element = 2 if plan.bf16 else 4
    evaluation = config.eval.eval_batch_size * element * (counts.trunk_largest + model.ensemble_size
                                                          * counts.branch_largest)
    if not training:
        return MemoryEstimate(INFERENCE_BYTES_PER_PARAMETER * params, evaluation)
    checkpointing = plan.activation_checkpointing or plan.checkpoint_after_oom
    branch = counts.branch_block_values if checkpointing else KEPT_LAYER_OUTPUTS * counts.branch_values
    step = config.train.batch_size * element * (KEPT_LAYER_OUTPUTS * counts.trunk_values + model.ensemble_size * branch)
    return MemoryEstimate(TRAINING_BYTES_PER_PARAMETER * params, int(max(step, evaluation)))


@functools.lru_cache(maxsize=64)
def footprint(backbone: str, share_type: str, image_size: int) -> Footprint:
    """Parameters and layer outputs of the trunk and one branch, for one image of image_size pixels."""
    config = ModelConfig(backbone=backbone, share_type=share_type, ensemble_size=1, meta_class_size=1, with_fc=False,
                         pretrained=False, weights_file=None)
    with torch.device("meta"):
        model = build_model(dataclasses.replace(config, with_fc=True)).eval()  # a head: the last stage may be shared
        image = torch.empty(1, 3, image_size, image_size)
    outputs: dict[str, list[int]] = {"trunk": [], "branches": [], "blocks": []}

    def record(part: str):
        return lambda module, inputs, output: outputs[part].append(output.numel())
    hooks = [module.register_forward_hook(record(part)) for part in ("trunk", "branches")
             for module in getattr(model, part).modules() if not list(module.children())]
    hooks += [block.register_forward_hook(record("blocks")) for block in model.branches.blocks()]
    model(image)
    for hook in hooks:
        hook.remove()
    head = get_backbone(backbone).feature_width + 1
    return Footprint(_count(model.trunk), _count(model.branches) - head, sum(outputs["trunk"]),
                     sum(outputs["branches"]), sum(outputs["blocks"]), max(outputs["trunk"], default=0),
                     max(outputs["branches"], default=0))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def available_memory(device: torch.device) -> int | None:
    """Bytes the device has: a GPU's whole memory (other processes' share may be theirs only for now); on the
    CPU what the kernel can still give (MemAvailable), or less where a cgroup limits this process. None where
    it cannot be told."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(device.index or 0).total_memory  # needs no CUDA context
    if device.type != "cpu":
        return None
    found = []
    try:
        line = next(line for line in MEMINFO.read_text().splitlines() if line.startswith("MemAvailable:"))
        found.append(int(line.split()[1]) * 1024)
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    for limit_file, usage_file in _CGROUP_LIMITS:
        try:
            limit, usage = limit_file.read_text().strip(), int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            found.append(max(0, int(limit) - usage))
    return min(found, default=None)


def check_memory(config: RunConfig, device: torch.device, *, training: bool = True,
                 available: int | None = None, plan: DevicePlan | None = None) -> None:
    """Refuse in one line a resolved config whose estimate exceeds the memory `device` has (`available`
    bytes, else available_memory(device)); nothing is refused where that cannot be told."""
    available = available_memory(device) if available is None else available
    if available is None:
        return
    need = estimate_memory(config, device, training, plan=plan)
    if need.total <= available:
        return
    has = f"the {device} has {_size(available)}{' available' if device.type == 'cpu' else ''}"
    parts = f"parameters {_size(need.parameters)} + activations {_size(need.activations)}"
    if not training:
        raise ConfigError(f"this ensemble needs about {_size(need.total)} ({parts}) to embed a batch of "
                          f"{config.eval.eval_batch_size} images, but {has}; load it on a device with more memory")
    lower = ("--ensemble-size (or --meta-class-size with --with-fc)" if need.parameters > need.activations
             else "--batch-size, --image-size or --ensemble-size")
    raise ConfigError(f"this run needs about {_size(need.total)} ({parts}), but {has}; lower {lower}")


def _size(n_bytes: float) -> str:
    value, unit = n_bytes / 2**20, "MiB"
    for larger in ("GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"
