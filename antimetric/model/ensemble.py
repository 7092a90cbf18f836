"""The ensemble: a shared backbone trunk feeding ensemble_size branches."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from antimetric.errors import ConfigError
from antimetric.model.backbones.family import get_backbone
from antimetric.model.batched import BatchedBranches
from antimetric.model.convert import batched_to_reference, block_state, replicate_tail
from antimetric.model.device_plan import DevicePlan
from antimetric.model.kernel_hook import swap_conv_kernels
from antimetric.model.reference import ReferenceBranches
from antimetric.model.settings import IMPLEMENTATIONS, ModelConfig, check_name


class EnsembleNet(nn.Module):
    def __init__(self, trunk: nn.Sequential, branches: BatchedBranches | ReferenceBranches, with_random: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.branches = branches
        self.ensemble_size: int = branches.ensemble_size
        self.with_random = with_random
        self.plan = DevicePlan()  # how configure() set it up: plain fp32 until then
        # The branches these are of the whole ensemble: all of them, unless this process holds one block of them
        # (branch-parallel training, as_block).
        self.whole_size, self.block = self.ensemble_size, range(self.ensemble_size)

    def as_block(self, whole_size: int, block: range) -> "EnsembleNet":
        """Mark this network as the branches `block` of an ensemble of `whole_size` (model/convert.py's
        block_state gives its weights): with_random then draws every branch's weight and keeps its block's, so
        that each branch sees the draws of a one-process run with the same seed."""
        if len(block) != self.ensemble_size or not 0 <= block.start < block.stop <= whole_size:
            raise ValueError(f"a network of {self.ensemble_size} branches cannot be branches {block} of {whole_size}")
        self.whole_size, self.block = whole_size, block
        return self

    def configure(self, plan: DevicePlan) -> nn.Module:
        """Follow `plan` (antimetric.model.device_plan.plan_for): memory format, activation checkpointing,
        the experimental Triton convolutions. Returns the module to train with: this one, or its
        torch.compile'd wrapper (which shares its parameters)."""
        self.plan = plan
        if plan.channels_last:
            self.to(memory_format=torch.channels_last)
        self.set_grad_checkpointing(plan.activation_checkpointing)
        if plan.triton_convs:
            swap_conv_kernels(self)  # what kernels/ registered (model/kernel_hook.py); the core never imports it
        return torch.compile(self, mode=plan.compile) if plan.compile else self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the branches' activations in the backward pass instead of keeping them (the batched
        network; the reference loop refuses)."""
        self.branches.set_grad_checkpointing(enable)

    @property
    def grad_checkpointing(self) -> bool:
        return self.branches.grad_checkpointing

    def branch_weights(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """Per-sample, per-branch scale of the shared feature (b, m), or None for 1.

        Training draws softmax(uniform) weights; evaluation uses their expectation 1/m, so that
        the branches' BatchNorm statistics, gathered on scaled features, still apply.
        """
        if not self.with_random:
            return None
        if self.training:
            drawn = torch.rand(batch, self.whole_size, device=device).softmax(dim=1)  # (b, whole)
            return drawn[:, self.block.start:self.block.stop]
        return torch.full((batch, self.ensemble_size), 1.0 / self.whole_size, device=device)

    def forward(self, images: torch.Tensor, branch_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-branch logits (b, m, d). `branch_weights` overrides the drawn ones (tests)."""
        shared = self.trunk(images)  # (b, c, h, w)
        if branch_weights is None:
            branch_weights = self.branch_weights(images.shape[0], images.device)
        return self.branches(shared, branch_weights)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, per_branch: bool = False) -> torch.Tensor:
        """The retrieval embedding: L2-normalised branch outputs, concatenated (b, m*d), or (b, m, d) with
        per_branch; float32, computed in bf16 where the plan it was configured with trains in it."""
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.plan.bf16):
            outputs = self(images)  # (b, m, d)
        outputs = F.normalize(outputs.float(), dim=-1)
        return outputs if per_branch else outputs.flatten(1)


def cosine(dot: torch.Tensor | float, ensemble_size: int) -> torch.Tensor | float:
    """The cosine similarity of two embeddings (EnsembleNet.embed) from their dot product. Each concatenates
    ensemble_size unit vectors, so its norm is sqrt(ensemble_size) and cosine = dot / ensemble_size: the mean of
    the branches' cosines, from -1 to 1, ranked exactly as evaluation ranks by the dot product."""
    return dot / ensemble_size


def build_model(config: ModelConfig, implementation: str = "batched") -> EnsembleNet:
    """An ensemble from a resolved ModelConfig.

    Every branch starts from the same ImageNet tail when pretrained, or from its own random
    draw otherwise. The reference loop gets the very weights the batched network drew, so the
    two implementations of one seed start equal.
    """
    check_name("implementation", implementation, IMPLEMENTATIONS)
    backbone = get_backbone(config.backbone)
    net = backbone.build(bool(config.pretrained), config.weights_file)
    trunk, tail = backbone.split(net, config.share_type)
    check_branch_output(config, backbone.feature_width, has_tail=len(tail) > 0)
    args = (tail, config.ensemble_size, backbone.feature_width, config.meta_class_size, config.with_fc)
    branches = BatchedBranches(*args, family=backbone.family)
    if config.pretrained or config.weights_file:
        state = replicate_tail(tail.state_dict(), config.ensemble_size)
        branches.load_state_dict({k[len("branches."):]: v for k, v in state.items() if k.startswith("branches.")},
                                 strict=False)
    model = EnsembleNet(trunk, branches, config.with_random)
    if implementation == "reference":
        model = to_reference(model, args)
    return model


def to_reference(model: EnsembleNet, args: tuple) -> EnsembleNet:
    """The same weights in the seed's per-branch layout."""
    reference = EnsembleNet(model.trunk, ReferenceBranches(*args), model.with_random)
    reference.load_state_dict(batched_to_reference(model.state_dict(), model.ensemble_size))
    return reference


def check_branch_output(config: ModelConfig, feature_width: int, has_tail: bool) -> None:
    if not config.with_fc and config.meta_class_size > feature_width:
        raise ConfigError(
            f"--meta-class-size {config.meta_class_size} exceeds the {feature_width}-wide branch feature that "
            f"serves as logits without a head; add --with-fc or use at most {feature_width} meta-classes"
        )
    if not has_tail and not config.with_fc:
        raise ConfigError(
            f"--share-type {config.share_type} shares the whole {config.backbone}, so without --with-fc all "
            "branches are identical; add --with-fc or share less"
        )


def build_block(config: ModelConfig, block: range, implementation: str = "batched") -> EnsembleNet:
    """Branches `block` of the ensemble build_model(config) builds, with exactly those branches' initial weights
    (the whole ensemble is drawn, then cut: model/convert.py's block_state), leaving the random generators where
    build_model leaves them, so that what is drawn next (with_random's weights) is the same as in one process."""
    whole = build_model(config, implementation)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):  # the block's own initialisation is thrown away, and so is its draw
        part = build_model(dataclasses.replace(config, ensemble_size=len(block)), implementation)
    part.load_state_dict(block_state(whole.state_dict(), config.ensemble_size, block))
    return part.as_block(config.ensemble_size, block)
