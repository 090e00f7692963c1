"""The standard baseline: a ResNet-V2 (pre-activation) with BatchNorm and identity shortcuts,
with the same plans, widths, stems and heads as :mod:`tat_ext.models.vanilla_resnet`."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.models.common import Head, StagePlan, check_image_input, final_spatial_size, for_input, stage_plan
from tat_ext.models.layers import PerLocationNorm

__all__ = ["ResNet", "resnet"]


class _PreActBlock(nn.Module):
    """BN → ReLU → conv, two (basic) or three (bottleneck) times; identity or projection shortcut."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, stride: int, bottleneck: bool,
                 projection: bool) -> None:
        super().__init__()
        if bottleneck:
            shapes = [(in_ch, inner, 1, 1), (inner, inner, 3, stride), (inner, out_ch, 1, 1)]
        else:
            shapes = [(in_ch, inner, 3, stride), (inner, out_ch, 3, 1)]
        self.norms = nn.ModuleList(nn.BatchNorm2d(c_in) for c_in, _, _, _ in shapes)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
                                   for c_in, c_out, k, s in shapes)
        self.projection = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.norms[0](x))
        out = self.convs[0](activated)
        for norm, conv in zip(self.norms[1:], self.convs[1:]):
            out = conv(F.relu(norm(out)))
        return out + (x if self.projection is None else self.projection(activated))


class ResNet(nn.Module):
    """ResNet-V2 with BatchNorm for a :class:`StagePlan`; use :func:`resnet` for standard depths."""

    def __init__(self, plan: StagePlan, num_classes: int, *, in_channels: int = 3, small_input: bool = False,
                 input_size: Optional[int] = None) -> None:
        super().__init__()
        input_size = check_image_input(num_classes, in_channels, small_input, input_size)
        plan = for_input(plan, small_input, input_size)
        self.plan = plan
        # Same input pipeline as the vanilla nets, so every model sees the same data.
        self.normalize = PerLocationNorm(channel_dim=1)
        if small_input:
            self.stem = nn.Conv2d(in_channels + 1, plan.width, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        else:
            self.stem = nn.Conv2d(in_channels + 1, plan.width, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        blocks = []
        for stage, (count, stride) in enumerate(zip(plan.blocks, plan.strides)):
            for j in range(count):
                blocks.append(_PreActBlock(plan.in_width(stage) if j == 0 else plan.out_width(stage),
                                           plan.inner_width(stage), plan.out_width(stage),
                                           stride if j == 0 else 1, plan.bottleneck,
                                           j == 0 and plan.projections[stage]))
        self.blocks = nn.Sequential(*blocks)
        last = plan.out_width(len(plan.blocks) - 1)
        self.final_norm = nn.BatchNorm2d(last)
        if small_input:
            size = final_spatial_size(plan, input_size, small_input=True)
            self.head = Head(last, num_classes, pool=False, spatial=size)
        else:
            self.head = Head(last, num_classes, pool=True)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pool(self.stem(self.normalize(x))))
        return self.head(F.relu(self.final_norm(x)))


def resnet(depth: Optional[int], num_classes: int, *, width: int = 64, in_channels: int = 3,
           small_input: bool = False, input_size: Optional[int] = None,
           blocks: Optional[Sequence[int]] = None, bottleneck: Optional[bool] = None) -> ResNet:
    """The ResNet+BatchNorm baseline; arguments as for :func:`tat_ext.models.vanilla_resnet`
    (there is no activation choice: it uses ReLU with He-scaled Gaussian init)."""
    return ResNet(stage_plan(depth, width, blocks, bottleneck), num_classes, in_channels=in_channels,
                  small_input=small_input, input_size=input_size)
