"""What `tat-ext bench` and `tat-ext profile` run: the activation alone in its three forms (eager
PyTorch, torch.compile of it, the fused op) and a training step of a deep vanilla model built either
from plain PyTorch (nn.Conv2d + leaky_relu) or from the fused modules (TATConv2d).

Models, each built fused (tat_ext's layers) and unfused (plain PyTorch ops, same state_dict):
- "conv-chain": a plain deep stack of `depth` 3x3 convolutions of `width` channels (TAT's
  setting: no skips, no normalization), with the TReLU slope solved for its depth;
- "vanilla-resnet": tat_ext.models.vanilla_resnet of ResNet depth `depth` (18..200, w = 0, so
  depth - 1 nonlinear layers) and first-stage width `width`, with the small-input stem and head.
Both are initialized with `tat_init_`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext import _validate, ops
from tat_ext.cmaps import trelu_chain_c_map
from tat_ext.init import tat_init_
from tat_ext.models.common import stage_plan
from tat_ext.models.layers import EagerTReLU
from tat_ext.models.vanilla_resnet import vanilla_resnet
from tat_ext.nn import TATConv2d
from tat_ext.optim.kfac import KFAC
from tat_ext.optim.step import classification_step
from tat_ext.tools.common import UsageError
from tat_ext.transform import solve_trelu

__all__ = ["ACTIVATION_FORMS", "LAYOUTS", "MODELS", "ActivationForm", "activation_shape",
           "activation_variants", "ModelSpec", "ConvChain", "build_model", "model_pair",
           "make_batch", "set_fused_conv", "make_train_step", "TrainStep", "OPTIMIZERS", "KFAC_INVERSE_PERIOD",
           "model_bytes_estimate",
           "activation_bytes_estimate", "check_fits", "sizes_from_text", "model_spec", "MODEL_DEFAULTS"]

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
_ETA = 0.9  # the paper's default target C_f(0)
_BENCH_DEPTH = 49  # activation-only timing uses the TReLU of a ResNet-50-shaped vanilla net


@dataclasses.dataclass(frozen=True)
class ActivationForm:
    """y = scale * (leaky_relu(x + bias + in_shift, slope) + out_shift)."""

    name: str
    slope: float
    scale: float
    in_shift: float = 0.0
    out_shift: float = 0.0


def _forms() -> Dict[str, ActivationForm]:
    p = solve_trelu(_BENCH_DEPTH, eta=_ETA)
    return {"trelu": ActivationForm("trelu", p.slope, p.scale),
            "shifted": ActivationForm("shifted", p.slope, p.scale, in_shift=0.1, out_shift=-0.2)}


ACTIVATION_FORMS = _forms()


def activation_shape(elements: int) -> Tuple[int, int, int, int]:
    """A conv-output shape [N, 64, H, W] with about `elements` values: H = W the largest of
    32, 16, ..., 1 that fits, N the rest (so tiny sizes stay conv-shaped)."""
    channels = 64
    if elements < channels:
        raise UsageError("--sizes", f"{elements} elements is below the minimum of {channels}")
    side = next(s for s in (32, 16, 8, 4, 2, 1) if channels * s * s <= elements)
    return (max(1, round(elements / (channels * side * side))), channels, side, side)


def activation_variants(form: ActivationForm) -> Dict[str, Callable]:
    """{"eager": what a user writes, "fused": tat_ext.trelu}; "compile" is torch.compile(eager),
    made fresh by the caller for every shape (see bench.py)."""

    if form.in_shift == 0.0 and form.out_shift == 0.0:
        def eager(x, bias):
            return form.scale * F.leaky_relu(x + bias.view(1, -1, 1, 1), form.slope)
    else:
        def eager(x, bias):
            z = x + bias.view(1, -1, 1, 1) + form.in_shift
            return form.scale * (F.leaky_relu(z, form.slope) + form.out_shift)

    def fused(x, bias):
        return ops.trelu(x, bias, slope=form.slope, scale=form.scale, in_shift=form.in_shift,
                             out_shift=form.out_shift)

    return {"eager": eager, "fused": fused}


def activation_bytes_estimate(elements: int, itemsize: int) -> int:
    """Peak bytes of one activation configuration: x, grad_y, the copy ceiling's two buffers,
    and eager's temporaries (x + b, leaky_relu, the scaled output, grad_x): ~10 tensors."""
    return 10 * elements * itemsize


MODELS = ("conv-chain", "vanilla-resnet")
# Training-step sizes per device type: a few seconds per variant on a 2-core CPU; on a GPU,
# activations of 32 MiB (fp32) per layer, large enough that the kernels rather than launches count.
MODEL_DEFAULTS = {"cpu": dict(depth=50, width=16, resolution=16, batch=8),
                  "cuda": dict(depth=50, width=64, resolution=32, batch=128)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    depth: int  # nonlinear layers
    width: int
    resolution: int
    batch: int
    num_classes: int = 10
    in_channels: int = 3

    def trelu(self) -> Tuple[float, float]:
        """The TReLU (slope, scale) of a plain chain of `depth` nonlinear layers."""
        try:
            p = solve_trelu(self.depth, eta=_ETA)
        except ValueError:  # the solver suggests a smaller eta, which these tools do not take
            needed = next(n for n in itertools.count(self.depth) if trelu_chain_c_map(0.0, 0.0, n) >= _ETA)
            raise UsageError("--depth", f"{self.depth} nonlinear layers cannot reach TAT's eta = {_ETA} (which the "
                                        f"timed models use); pass --depth {needed} or more") from None
        return p.slope, p.scale


class ConvChain(nn.Module):
    """`depth` 3x3 convs (same padding), each followed by the TReLU, then global average pooling
    and a linear classifier. fused=True: TATConv2d (the conv's bias added by the fused op);
    fused=False: nn.Conv2d (bias in the conv) + scale * leaky_relu. Same state_dict keys."""

    def __init__(self, spec: ModelSpec, fused: bool) -> None:
        super().__init__()
        slope, scale = spec.trelu()
        widths = [spec.in_channels] + [spec.width] * spec.depth
        if fused:
            self.convs = nn.ModuleList(TATConv2d(a, b, 3, padding=1, slope=slope, scale=scale)
                                       for a, b in zip(widths, widths[1:]))
            self.acts = nn.ModuleList(nn.Identity() for _ in range(spec.depth))
        else:
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
            self.acts = nn.ModuleList(EagerTReLU(slope, scale) for _ in range(spec.depth))
        self.head = nn.Linear(spec.width, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.acts):
            x = act(conv(x))
        return self.head(x.mean(dim=(2, 3)))


def model_spec(name: str, depth: int, width: int, resolution: int, batch: int) -> ModelSpec:
    """A checked ModelSpec: known model, sizes >= 1, a depth the TReLU solver can reach."""
    if name not in MODELS:
        raise UsageError("--model", f"unknown model {name!r}; one of {', '.join(MODELS)}")
    for argument, value in (("--depth", depth), ("--width", width), ("--resolution", resolution),
                            ("--batch", batch)):
        _validate.integer(argument, value, ge=1)
    spec = ModelSpec(name, depth, width, resolution, batch)
    if name == "vanilla-resnet":
        try:
            stage_plan(depth, width, None, None)
        except ValueError as error:
            raise UsageError("--depth", str(error)) from None
    else:
        spec.trelu()
    return spec


def build_model(spec: ModelSpec, fused: bool) -> nn.Module:
    """The model `spec` names, unfused (plain PyTorch ops) or fused (tat_ext modules)."""
    if spec.name == "conv-chain":
        return ConvChain(spec, fused)
    if spec.name == "vanilla-resnet":
        return vanilla_resnet(spec.depth, spec.num_classes, width=spec.width,
                              in_channels=spec.in_channels, small_input=True,
                              input_size=spec.resolution, fused=fused)
    raise UsageError("--model", f"unknown model {spec.name!r}; one of {', '.join(MODELS)}")


def model_pair(spec: ModelSpec, device: torch.device, dtype: torch.dtype, layout: str,
               seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    """(unfused, fused) with identical weights (delta-orthogonal init, random small biases)."""
    torch.manual_seed(seed)
    fused = build_model(spec, fused=True)
    tat_init_(fused)
    with torch.no_grad():
        for m in fused.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    unfused = build_model(spec, fused=False)
    unfused.load_state_dict(fused.state_dict())
    fmt = LAYOUTS[layout]
    return tuple(m.to(device=device, dtype=dtype, memory_format=fmt) for m in (unfused, fused))


def set_fused_conv(model: nn.Module, on: bool) -> None:
    """TATConv2d.fused_conv on every layer: the "fused" variants measure the fused activation
    alone (off), "fused-conv" the oneDNN conv+bias+activation primitive too (on)."""
    for m in model.modules():
        if isinstance(m, TATConv2d):
            m.fused_conv = on


def make_batch(spec: ModelSpec, device: torch.device, dtype: torch.dtype, layout: str,
               seed: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.batch, spec.in_channels, spec.resolution, spec.resolution, generator=g)
    target = torch.randint(0, spec.num_classes, (spec.batch,), generator=g)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
    return x, target.to(device)


OPTIMIZERS = ("sgd", "adam", "kfac", "kfac-c10")
# K-FAC's curvature period per name; the damped inverses are timed apart (TrainStep.refresh_inverses)
# and amortized over the recipe's inverse period (docs/kfac.md).
_KFAC_CURVATURE_PERIOD = {"kfac": 1, "kfac-c10": 10}
KFAC_INVERSE_PERIOD = 50


@dataclasses.dataclass
class TrainStep:
    """``steps`` training steps per call (a K-FAC curvature period, so a call's time divided by
    ``steps`` is the amortized step without the inverse updates); returns the first step's loss."""

    run: Callable[[], torch.Tensor]
    steps: int
    optimizer: torch.optim.Optimizer

    def __call__(self) -> torch.Tensor:
        return self.run()

    def refresh_inverses(self) -> None:
        """K-FAC: recompute every layer's damped inverses (what an inverse update costs)."""
        for factors in self.optimizer.factors:
            factors.invert(self.optimizer.damping)


def make_train_step(model: nn.Module, batch: torch.Tensor, target: torch.Tensor,
                    lr: float = 1e-3, optimizer: str = "sgd") -> TrainStep:
    """Training steps on (batch, target) with ``optimizer`` (one of OPTIMIZERS): "sgd" (momentum
    0.9, rate ``lr``), "adam" (rate 1e-4), "kfac"/"kfac-c10" (tat_ext.optim.KFAC with the MC Fisher
    and curvature every step / every 10 steps, rate 1e-5, no burn-in; its inverses are computed on
    the first step and then only by ``refresh_inverses``). The loss is not synchronized."""
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    elif optimizer in _KFAC_CURVATURE_PERIOD:
        opt = KFAC(model, 1e-5, curvature_update_period=_KFAC_CURVATURE_PERIOD[optimizer],
                   inverse_update_period=10 ** 9, burnin_steps=0)
    else:
        raise UsageError("--optimizers", f"unknown optimizer {optimizer!r}; one of {', '.join(OPTIMIZERS)}")
    steps = _KFAC_CURVATURE_PERIOD.get(optimizer, 1)

    def run() -> torch.Tensor:
        losses = [classification_step(model, opt, batch, target) if isinstance(opt, KFAC) else _sgd_like_step()
                  for _ in range(steps)]
        return losses[0]

    def _sgd_like_step() -> torch.Tensor:
        loss = F.cross_entropy(model(batch).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return TrainStep(run, steps, opt)


def model_bytes_estimate(spec: ModelSpec, itemsize: int) -> int:
    """Peak bytes of a training step: unfused keeps two activations per layer for backward (the
    conv output and the activation output), plus a few in flight; weights, grads and momentum.
    (vanilla-resnet: bounded by its widest stage, 32 x width channels, at full resolution.)"""
    channels = spec.width * (32 if spec.name == "vanilla-resnet" else 1)
    act = spec.batch * channels * spec.resolution ** 2 * itemsize
    params = spec.depth * (9 * channels * channels + channels) * itemsize
    return (2 * spec.depth + 4) * act + 3 * params + 4 * spec.batch * spec.in_channels * \
        spec.resolution ** 2 * itemsize


def check_fits(needed: int, available: Optional[int], argument: str, what: str) -> None:
    """UsageError naming the size before anything is allocated (90 % of what is free)."""
    if available is not None and needed > 0.9 * available:
        raise UsageError(argument, f"{what} needs about {needed / 2 ** 30:.1f} GiB; only "
                                   f"{available / 2 ** 30:.1f} GiB is available on this device")


def sizes_from_text(text: str) -> list:
    """'2K,8K,1M' -> [2048, 8192, 1048576] (K, M, G are powers of 1024)."""
    mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        suffix = part[-1].upper()
        try:
            value = float(part[:-1]) * mult[suffix] if suffix in mult else float(part)
        except ValueError:
            raise UsageError("--sizes", f"cannot read {part!r}; use element counts like "
                                        "8K,1M,64M") from None
        if not math.isfinite(value) or value < 1:
            raise UsageError("--sizes", f"{part!r} is not a positive element count")
        sizes.append(int(value))
    if not sizes:
        raise UsageError("--sizes", "no sizes given")
    return sizes
