"""What the ResNet-shaped families share: the stage plan of each standard depth, the stems and the
heads, and the C-map bookkeeping (``subnet_max_func``) of a ResNet-V2 layout."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple, Union

import torch
from torch import nn

from tat_ext import _validate

__all__ = [
    "STANDARD_DEPTHS",
    "Head",
    "StagePlan",
    "check_image_input",
    "for_input",
    "resnet_v2_subnet_max_func",
    "stage_plan",
]

# Blocks per stage and block type of the standard ResNets (He et al. 2016; V2 keeps the same plan).
_PLANS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}
STANDARD_DEPTHS = tuple(_PLANS)
_STAGE_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4
# Small inputs: later stages halve the feature map only while it is larger than this side.
_SMALL_INPUT_MIN_SIDE = 8


@dataclass(frozen=True)
class StagePlan:
    """The shape of a ResNet: blocks per stage, block type, widths and strides.

    ``width`` is the first stage's inner width (64 in the standard nets); stage i has inner width
    ``width·2^i`` and output width 4× that for bottleneck blocks. ``strides[i]`` is the stride of
    stage i's first block (standard: 1, 2, 2, 2). ``projections[i]`` says whether that block
    changes shape (stride or width) and so needs a projection shortcut.
    """

    blocks: Tuple[int, ...]
    bottleneck: bool
    width: int
    strides: Tuple[int, ...] = _STAGE_STRIDES

    @property
    def depth(self) -> int:
        """Conventional depth: conv layers plus the classifier (ResNet-50: 1 + 48 + 1)."""
        return (3 if self.bottleneck else 2) * sum(self.blocks) + 2

    def inner_width(self, stage: int) -> int:
        return self.width * 2**stage

    def out_width(self, stage: int) -> int:
        return self.inner_width(stage) * (_BOTTLENECK_EXPANSION if self.bottleneck else 1)

    def in_width(self, stage: int) -> int:
        return self.width if stage == 0 else self.out_width(stage - 1)

    @property
    def projections(self) -> Tuple[bool, ...]:
        return tuple(self.strides[i] != 1 or self.in_width(i) != self.out_width(i)
                     for i in range(len(self.blocks)))


def stage_plan(depth: object, width: object, blocks: Union[Sequence[int], None] = None,
               bottleneck: Union[bool, None] = None) -> StagePlan:
    """The plan of a standard depth (18/34/50/101/152/200), or a custom one from ``blocks``.

    Raises:
        ValueError: an unsupported depth (the message lists the standard ones), or ``blocks``
            that do not give ``depth``.
    """
    width = _validate.integer("width", width, ge=1)
    if blocks is None:
        if isinstance(depth, bool) or depth not in _PLANS:
            raise _validate.ArgumentValueError("depth", f"depth must be one of {', '.join(map(str, STANDARD_DEPTHS))} "
                             f"(or pass blocks= for a custom plan), got {depth!r}")
        plan_blocks, plan_bottleneck = _PLANS[depth]
        if bottleneck is not None and bottleneck != plan_bottleneck:
            raise _validate.ArgumentValueError("depth", f"depth {depth} uses {'bottleneck' if plan_bottleneck else 'basic'} blocks; "
                             "pass blocks= for another plan")
        return StagePlan(plan_blocks, plan_bottleneck, width)
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not 1 <= len(blocks) <= 4:
        raise _validate.ArgumentValueError("blocks", f"blocks must be 1 to 4 blocks-per-stage counts, got {blocks!r}")
    counts = tuple(_validate.integer(f"blocks[{i}]", b, ge=1) for i, b in enumerate(blocks))
    plan = StagePlan(counts, True if bottleneck is None else bool(bottleneck), width, _STAGE_STRIDES[: len(counts)])
    if depth is not None and depth != plan.depth:
        raise _validate.ArgumentValueError("blocks", f"blocks={list(counts)} ({'bottleneck' if plan.bottleneck else 'basic'}) give "
                         f"depth {plan.depth}, not {depth!r}; pass depth=None or the matching depth")
    return plan


def check_image_input(num_classes: object, in_channels: object, small_input: object,
                      input_size: object) -> Union[int, None]:
    """Check the image arguments every ResNet builder takes; returns ``input_size`` (default 32
    for ``small_input``).

    Raises:
        ValueError: a count below 1, or ``input_size`` without ``small_input`` (named).
        TypeError: a non-int count or a non-bool ``small_input``.
    """
    _validate.integer("num_classes", num_classes, ge=1)
    _validate.integer("in_channels", in_channels, ge=1)
    if not _validate.boolean("small_input", small_input):
        if input_size is not None:
            raise _validate.ArgumentValueError(
                "input_size", "input_size applies to small_input=True only (the standard head pools globally)")
        return None
    return 32 if input_size is None else _validate.integer("input_size", input_size, ge=1)


def for_input(plan: StagePlan, small_input: bool, input_size: int) -> StagePlan:
    """``plan`` with the strides for its input: standard, or for ``small_input`` a stride of 2
    only while the feature map is larger than 8x8 (8x8 and smaller inputs keep their size).

    With delta-orthogonal init a stride-2 conv starts by keeping one pixel in four; on small
    images the flatten head then sees few of them (an 8x8 digit down to 1x1 sees one corner
    pixel), and deep vanilla nets learned several times slower on the digits that way.
    """
    if not small_input:
        return dataclasses.replace(plan, strides=_STAGE_STRIDES[: len(plan.blocks)])
    _validate.integer("input_size", input_size, ge=1)
    strides, side = [1], input_size
    for _ in plan.blocks[1:]:
        stride = 2 if side > _SMALL_INPUT_MIN_SIDE else 1
        side = (side - 1) // stride + 1
        strides.append(stride)
    return dataclasses.replace(plan, strides=tuple(strides))


def resnet_v2_subnet_max_func(plan: StagePlan, shortcut_weight: float) -> Callable:
    """``subnet_max_func(x, r_fn)`` of a ResNet-V2-shaped net without normalization.

    The reference library's convention: each nonlinear layer applies ``r_fn``; a block outputs
    w²·shortcut + (1−w²)·residual (the squared weights of sqrt(1−w²)·res + w·shortcut); the
    projection shortcut of a stage's first block reads the pre-activated input, so it carries one
    ``r_fn``; one more ``r_fn`` is the final activation; and the single residual branch is a
    subnetwork that must meet the target too. With w = 0 this is a chain of depth − 1 maps.
    """
    per_block = 3 if plan.bottleneck else 2
    w2 = float(shortcut_weight) ** 2
    blocks, projections = plan.blocks, plan.projections

    def residual(x: float, r_fn: Callable[[float], float]) -> float:
        for _ in range(per_block):
            x = r_fn(x)
        return x

    def subnet_max_func(x: float, r_fn: Callable[[float], float]) -> float:
        single_branch = residual(x, r_fn)
        for stage, count in enumerate(blocks):
            for j in range(count):
                shortcut = r_fn(x) if j == 0 and projections[stage] else x
                x = w2 * shortcut + (1.0 - w2) * residual(x, r_fn)
        return max(r_fn(x), single_branch)

    return subnet_max_func


def final_spatial_size(plan: StagePlan, input_size: int, small_input: bool) -> int:
    """Side of the last stage's feature map for a square ``input_size`` image."""
    size = input_size
    if not small_input:
        size = (size + 1) // 2  # 7x7 stride-2 stem, padding 3
        size = (size + 1) // 2  # 3x3 stride-2 max-pool, padding 1
    for stride in plan.strides:
        size = (size - 1) // stride + 1  # 3x3 (or 1x1) conv, "same" padding
    return size


class Head(nn.Module):
    """Classifier on the last feature map.

    ``pool=True``: global mean pool then linear (the standard ImageNet head). ``pool=False``:
    flatten then linear, which keeps the spatial layout. With delta-orthogonal init a vanilla net
    starts as a per-location map; mean-pooling that over a small image gives the classifier a
    near-constant input, and deep vanilla nets then fail to learn (measured on 8x8 digits).
    """

    def __init__(self, channels: int, num_classes: int, *, pool: bool, spatial: int = 1) -> None:
        super().__init__()
        self.pool = pool
        self.spatial = spatial
        self.fc = nn.Linear(channels * (1 if pool else spatial * spatial), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            return self.fc(x.mean(dim=(2, 3)))
        if x.shape[-2:] != (self.spatial, self.spatial):
            raise ValueError(f"the flatten head expects a {self.spatial}x{self.spatial} final feature map, "
                             f"got {tuple(x.shape[-2:])}: build the model with the input_size of your images")
        return self.fc(torch.flatten(x, 1))

    def extra_repr(self) -> str:
        return "global mean pool" if self.pool else f"flatten {self.spatial}x{self.spatial}"
