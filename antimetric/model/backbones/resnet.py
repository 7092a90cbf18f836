"""The ResNet family: torchvision's ResNets, ResNeXts and wide ResNets (stages of BasicBlocks or Bottlenecks),
and a tiny ResNet for CPUs and tests. Its rows and its layout (the children conv1 ... layer4, fc) are in
table.py; a further torchvision ResNet is one row there.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck

from antimetric.model.backbones.table import LAYOUTS, BackboneRow
from antimetric.model.batched import batched_bn, batched_conv, scale_branches

BLOCK_KINDS = (BasicBlock, Bottleneck)  # the blocks BatchedBlock batches


class ResNetFamily:
    """The ResNet family as model/backbones/family.py's BackboneFamily."""

    layout = LAYOUTS["resnet"]

    def build(self, row: BackboneRow) -> nn.Module:
        """A randomly initialised network of `row`."""
        return tiny_resnet() if row.builder is None else getattr(models, row.builder)()

    def imagenet_weights(self, row: BackboneRow) -> models.WeightsEnum | None:
        return None if row.weights is None else getattr(models, row.weights).IMAGENET1K_V1

    def batch_block(self, block: nn.Module, ensemble_size: int, dense_input: bool) -> nn.Module:
        if not isinstance(block, BLOCK_KINDS):
            raise TypeError(f"a ResNet stage holds BasicBlocks or Bottlenecks, not {type(block).__name__}")
        return BatchedBlock(block, ensemble_size, dense_input)

    @torch.no_grad()
    def init_batched(self, stages: nn.Module, ensemble_size: int) -> None:
        """Initialise each branch as torchvision initialises a fresh ResNet.

        torchvision draws conv weights from kaiming_normal_(mode="fan_out"); a grouped conv's
        fan_out as torch computes it would include all branches, so the std is per branch here.
        """
        for module in stages.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels // ensemble_size * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()


RESNET_FAMILY = ResNetFamily()


def tiny_resnet() -> nn.Module:
    """A ResNet with one BasicBlock per stage and widths 16/32/64/128, for CPUs and tests.

    It has the same children as torchvision's ResNet, so the trunk/branch split and the
    batched network treat it like the real backbones.
    """
    widths = (16, 32, 64, 128)
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_ch = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or in_ch != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        setattr(net, f"layer{i + 1}", nn.Sequential(BasicBlock(in_ch, width, stride, downsample)))
        in_ch = width
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


class BatchedBlock(nn.Module):
    """One torchvision BasicBlock or Bottleneck, for all branches at once."""

    def __init__(self, block: nn.Module, ensemble_size: int, dense_input: bool) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.dense_input = dense_input
        self.conv_names = [n for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]
        for i, name in enumerate(self.conv_names, start=1):
            setattr(self, name, batched_conv(getattr(block, name), ensemble_size, dense_input and i == 1))
            setattr(self, f"bn{i}", batched_bn(getattr(block, f"bn{i}"), ensemble_size))
        self.downsample = None
        if block.downsample is not None:
            conv, bn = block.downsample
            self.downsample = nn.Sequential(batched_conv(conv, ensemble_size, dense_input), batched_bn(bn, ensemble_size))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        # x: (b, c, h, w) shared feature if dense_input, else (b, m*c, h, w)
        out = x
        for i, name in enumerate(self.conv_names, start=1):
            out = getattr(self, name)(out)
            if i == 1 and scale is not None:  # conv(w * x) == w * conv(x): no bias
                out = scale_branches(out, scale)
            out = getattr(self, f"bn{i}")(out)
            if i < len(self.conv_names):
                out = self.relu(out)
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = conv(x)
            if scale is not None:
                identity = scale_branches(identity, scale)
            identity = bn(identity)
        elif self.dense_input:
            identity = x.repeat(1, self.ensemble_size, 1, 1)
            if scale is not None:
                identity = scale_branches(identity, scale)
        else:
            identity = x
        return self.relu(out + identity)  # (b, m*c_out, h', w')
