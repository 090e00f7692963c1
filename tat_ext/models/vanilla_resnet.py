"""Vanilla (no normalization, no or rescaled shortcuts) ResNet-V2-shaped networks for TAT.

Layout (ResNet-V2 with its batch norms removed), for shortcut weight w:

- input: per-location normalization (one channel added), then the stem conv — 7x7/2 followed by
  a 3x3/2 max-pool, or for ``small_input`` a 3x3/1 conv and no pool;
- four stages of blocks, the later ones starting with stride 2 (for ``small_input`` only while
  the feature map is larger than 8x8; see :func:`tat_ext.models.common.for_input`); a block's residual branch is activation → conv, two times (basic) or
  three times (bottleneck, stride on the 3x3 conv); its output is
  ``sqrt(1 − w²)·residual + w·shortcut``, the shortcut being the input or, when the block
  changes shape, a 1x1 projection of the pre-activated input;
- a final activation and the head (mean pool + linear, or flatten + linear for ``small_input``).

With w = 0 there is no shortcut at all, and every conv is directly followed by an activation
(the next block's pre-activation, or the final one): the whole net is then a chain of fused
conv + bias + activation layers, ``depth − 1`` of them (the max-pool sits after the stem's
activation, which changes nothing for the monotone TReLU/ReLU).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from tat_ext import _validate
from tat_ext.models.common import (Head, StagePlan, check_image_input, final_spatial_size, for_input,
                                   resnet_v2_subnet_max_func, stage_plan)
from tat_ext.models.layers import ActivationChoice, PerLocationNorm, init_vanilla_

__all__ = ["VanillaResNet", "vanilla_resnet"]


class _RescaledBlock(nn.Module):
    """A V2 block whose output is sqrt(1 − w²)·residual + w·shortcut (0 < w < 1)."""

    def __init__(self, act: ActivationChoice, in_ch: int, inner: int, out_ch: int, stride: int,
                 bottleneck: bool, projection: bool, shortcut_weight: float) -> None:
        super().__init__()
        self.pre_act = act.module()
        if bottleneck:
            self.conv1 = act.conv(in_ch, inner, 1)
            self.conv2 = act.conv(inner, inner, 3, stride)
            self.conv3 = nn.Conv2d(inner, out_ch, 1)
        else:
            self.conv1 = act.conv(in_ch, inner, 3, stride)
            self.conv2 = nn.Identity()
            self.conv3 = nn.Conv2d(inner, out_ch, 3, padding=1)
        self.projection = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if projection else None
        self.residual_weight = math.sqrt(1.0 - shortcut_weight**2)
        self.shortcut_weight = shortcut_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.pre_act(x)
        residual = self.conv3(self.conv2(self.conv1(activated)))
        shortcut = x if self.projection is None else self.projection(activated)
        return self.residual_weight * residual + self.shortcut_weight * shortcut


def _plain_block(act: ActivationChoice, in_ch: int, inner: int, out_ch: int, stride: int,
                 bottleneck: bool) -> nn.Sequential:
    """A block without shortcut: each conv followed by its activation (the last one's activation
    is the next block's pre-activation)."""
    if bottleneck:
        return nn.Sequential(act.conv(in_ch, inner, 1), act.conv(inner, inner, 3, stride),
                             act.conv(inner, out_ch, 1))
    return nn.Sequential(act.conv(in_ch, inner, 3, stride), act.conv(inner, out_ch, 3))


class VanillaResNet(nn.Module):
    """A vanilla ResNet-V2-shaped network for a :class:`StagePlan` (see the module docstring).

    Use :func:`vanilla_resnet` for the standard depths; this class also takes custom plans.

    Attributes:
        activation: the resolved :class:`~tat_ext.models.layers.ActivationChoice` (its solved
            slope/scale for ``"trelu"``).
        plan: the :class:`StagePlan`.
    """

    def __init__(self, plan: StagePlan, num_classes: int, *, activation: str = "trelu", eta: float = 0.9,
                 shortcut_weight: float = 0.0, in_channels: int = 3, small_input: bool = False,
                 input_size: Union[int, None] = None, fused: bool = True) -> None:
        super().__init__()
        input_size = check_image_input(num_classes, in_channels, small_input, input_size)
        _validate.real("shortcut_weight", shortcut_weight, ge=0.0, lt=1.0)  # 0: no shortcuts
        plan = for_input(plan, small_input, input_size)
        self.plan = plan
        self.shortcut_weight = float(shortcut_weight)
        chain = shortcut_weight == 0.0
        self.activation = ActivationChoice.resolve(activation, self.subnet_max_func, eta,
                                                   chain_depth=plan.depth - 1 if chain else None,
                                                   fused=fused)
        act = self.activation

        self.normalize = PerLocationNorm(channel_dim=1)
        stem_args = (in_channels + 1, plan.width, 3, 1) if small_input else (in_channels + 1, plan.width, 7, 2)
        self.stem = act.conv(*stem_args) if chain else nn.Conv2d(*stem_args, padding=stem_args[2] // 2)
        self.pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        blocks = []
        for stage, (count, stride) in enumerate(zip(plan.blocks, plan.strides)):
            inner, out_ch = plan.inner_width(stage), plan.out_width(stage)
            for j in range(count):
                in_ch = plan.in_width(stage) if j == 0 else out_ch
                s = stride if j == 0 else 1
                if chain:
                    blocks.append(_plain_block(act, in_ch, inner, out_ch, s, plan.bottleneck))
                else:
                    blocks.append(_RescaledBlock(act, in_ch, inner, out_ch, s, plan.bottleneck,
                                                 j == 0 and plan.projections[stage], self.shortcut_weight))
        self.blocks = nn.Sequential(*blocks)
        self.final_act = nn.Identity() if chain else act.module()
        last = plan.out_width(len(plan.blocks) - 1)
        if small_input:
            self.head = Head(last, num_classes, pool=False,
                             spatial=final_spatial_size(plan, input_size, small_input=True))
        else:
            self.head = Head(last, num_classes, pool=True)
        init_vanilla_(self, act)

    def subnet_max_func(self, x: float, r_fn) -> float:
        """The architecture in C-value space, in the reference library's convention (see
        :func:`tat_ext.models.common.resnet_v2_subnet_max_func`)."""
        return resnet_v2_subnet_max_func(self.plan, self.shortcut_weight)(x, r_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(self.normalize(x)))
        return self.head(self.final_act(self.blocks(x)))


def vanilla_resnet(depth: Optional[int], num_classes: int, *, width: int = 64, activation: str = "trelu",
                   eta: float = 0.9, shortcut_weight: float = 0.0, in_channels: int = 3,
                   small_input: bool = False, input_size: Optional[int] = None,
                   blocks: Optional[Sequence[int]] = None, bottleneck: Optional[bool] = None,
                   fused: bool = True) -> VanillaResNet:
    """A vanilla ResNet-V2-shaped network, initialized for TAT (or for the activation chosen).

    Args:
        depth: 18, 34 (basic blocks), 50, 101, 152 or 200 (bottleneck blocks); with w = 0 the
            net has depth − 1 nonlinear layers. ``None`` with ``blocks``.
        num_classes: classifier outputs.
        width: inner width of the first stage (64 standard; it doubles every stage).
        activation: ``"trelu"`` (TAT), ``"relu"`` (Edge-of-Chaos baseline), ``"tat-<name>"`` or
            ``"dks-<name>"``; see :func:`tat_ext.models.activation_choices`.
        eta: TAT's target C_f(0) for ``"trelu"``: the slope is
            ``solve_trelu(subnet_max_func=model.subnet_max_func, eta=eta).slope``.
        shortcut_weight: w in [0, 1): 0 removes the shortcuts; otherwise a block outputs
            sqrt(1 − w²)·residual + w·shortcut (the "rescaled ResNet").
        in_channels: image channels (the model adds one for the normalization's homogeneous
            coordinate).
        small_input: a 3x3/1 stem without max-pool, strides only while the map is larger than
            8x8, and a flatten head, for 8x8–64x64 images (8x8 stays 8x8, 32x32 ends at 8x8).
        input_size: image side for ``small_input`` (default 32), which sizes the flatten head.
        blocks, bottleneck: a custom plan (blocks per stage, 1–4 stages; bottleneck default True)
            instead of a standard depth.
        fused: for ``"trelu"``, False builds the same network (same state_dict) from plain
            PyTorch ops — conv with bias, then ``scale * leaky_relu`` — to compare against.

    Raises:
        ValueError: an unsupported depth, an unknown activation (the valid ones are listed), an
            ``eta`` the architecture cannot reach (with the minimum depth or the largest
            reachable η), or another out-of-range argument (named).
    """
    plan = stage_plan(depth, width, blocks, bottleneck)
    return VanillaResNet(plan, num_classes, activation=activation, eta=eta, shortcut_weight=shortcut_weight,
                         in_channels=in_channels, small_input=small_input, input_size=input_size,
                         fused=fused)
