"""Building blocks shared by the model families: the activation a model is built for, the
conv/linear layers that apply it, and per-location input normalization as a module.

A vanilla model is a chain of "layer then activation" steps. :class:`ActivationChoice` turns an
activation name (``"trelu"``, ``"relu"``, ``"tat-<name>"``, ``"dks-<name>"``) and the model's
``subnet_max_func`` into those layers:

- ``"trelu"``: TAT's transformed Leaky ReLU, with the slope that ``solve_trelu`` returns for the
  model's own ``subnet_max_func`` and target η. The layers are :class:`tat_ext.nn.TATConv2d` /
  :class:`tat_ext.nn.TATLinear` (conv without bias, then the fused bias + activation op).
- ``"relu"``: the Edge-of-Chaos baseline: plain ReLU, He-scaled (gain √2) orthogonal init, no
  transform.
- ``"tat-<name>"`` / ``"dks-<name>"``: a smooth activation transformed by TAT (target C_f''(1) = τ,
  default 0.3) or DKS (target C_f'(1) = ζ, default 1.5) through
  :func:`tat_ext.transform.get_transformed_activations` with the model's ``subnet_max_func``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext import _validate
from tat_ext.activations import activation_names
from tat_ext.data import per_location_normalization
from tat_ext.init import tat_init_
from tat_ext.nn import TATConv2d, TATLinear, TReLU

__all__ = [
    "ActivationChoice",
    "EagerTReLU",
    "ActConv2d",
    "ActLinear",
    "Activation",
    "PerLocationNorm",
    "activation_choices",
    "init_vanilla_",
]

SubnetMaxFunc = Callable[[float, Callable[[float], float]], float]

# TAT with (leaky) ReLU is "trelu"; ReLU's C''(1) is infinite, so TAT cannot transform it.
_TAT_SMOOTH = tuple(n for n in activation_names() if n not in ("relu", "leaky_relu"))
_DKS = activation_names()


def activation_choices() -> Tuple[str, ...]:
    """Every ``activation`` name the vanilla model builders accept."""
    return ("trelu", "relu") + tuple(f"tat-{n}" for n in _TAT_SMOOTH) + tuple(f"dks-{n}" for n in _DKS)


class Activation(nn.Module):
    """An elementwise torch function as a module (for activations that follow a sum)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return repr(self.fn)


class EagerTReLU(nn.Module):
    """``scale * leaky_relu(x, slope)`` from plain PyTorch ops: TReLU as written without tat_ext
    (the unfused counterpart of the fused layers, for benchmarks and comparisons)."""

    def __init__(self, slope: float, scale: float) -> None:
        super().__init__()
        self.slope, self.scale = slope, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.leaky_relu(x, self.slope)

    def extra_repr(self) -> str:
        return f"slope={self.slope:.10g}, scale={self.scale:.10g}"


class _ThenActivation:
    """A layer's output (with its bias) followed by an elementwise function; its state_dict is
    the layer's own. The function is held as a submodule (a plain function is wrapped in
    :class:`Activation`) so that hooks can read the pre-activation (tat_ext.optim's K-FAC does)."""

    def __init__(self, *args, activation: Callable[[torch.Tensor], torch.Tensor], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation = activation if isinstance(activation, nn.Module) else Activation(activation)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(input))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"


class ActConv2d(_ThenActivation, nn.Conv2d):
    """nn.Conv2d (with its bias) followed by an elementwise function; state_dict as nn.Conv2d."""


class ActLinear(_ThenActivation, nn.Linear):
    """nn.Linear (with its bias) followed by an elementwise function; state_dict as nn.Linear."""


@dataclass(frozen=True)
class ActivationChoice:
    """The activation a vanilla model uses, resolved for that model's architecture.

    Build it with :meth:`resolve`. ``params`` records the solved constants (for a run's config):
    ``slope``/``scale``/``eta`` for ``"trelu"``, the transformed activation's parameters for
    ``"tat-"``/``"dks-"``, nothing for ``"relu"``.
    """

    name: str
    init_gain: float
    slope: Optional[float] = None
    scale: Optional[float] = None
    fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    params: Dict[str, object] = field(default_factory=dict)
    fused_kernels: bool = True  # "trelu": tat_ext's fused layers, else plain PyTorch ops

    @classmethod
    def resolve(cls, name: object, subnet_max_func: SubnetMaxFunc, eta: float = 0.9,
                chain_depth: Optional[int] = None, fused: bool = True) -> "ActivationChoice":
        """Solve ``name``'s parameters for the architecture that ``subnet_max_func`` describes.

        ``chain_depth``: the number of nonlinear layers when the architecture is a plain chain; an
        unreachable ``eta`` is then reported with the minimum depth it needs. ``fused=False``
        builds ``"trelu"`` from plain PyTorch ops (conv with bias, then
        :class:`EagerTReLU`): the same function and state_dict, without tat_ext's kernels.

        Raises:
            ValueError: an unknown name (the message lists the valid ones), a bad ``eta``, or a
                target the architecture cannot reach (the solver's message: the largest reachable
                η, or the minimum depth).
        """
        choices = activation_choices()
        if not isinstance(name, str) or name not in choices:
            raise _validate.ArgumentValueError("activation", f"activation must be one of {', '.join(choices)}; "
                                                             f"got {name!r}")
        if name == "relu":
            return cls(name, init_gain=math.sqrt(2.0))  # He scaling: ReLU halves q
        if name == "trelu":
            from tat_ext.transform import solve_trelu

            eta = _validate.eta("eta", eta)
            try:
                solved = solve_trelu(eta=eta, subnet_max_func=subnet_max_func)
            except ValueError as error:
                if chain_depth is None:
                    raise _validate.ArgumentValueError("eta", f"eta: {error}") from None
                try:
                    solve_trelu(chain_depth, eta=eta)
                except ValueError as chain_error:
                    error = chain_error
                raise _validate.ArgumentValueError("eta", f"eta: {error}") from None  # names the layers
            fused = _validate.boolean("fused", fused)
            return cls(name, init_gain=1.0, slope=solved.slope, scale=solved.scale,
                       params={"eta": eta, "slope": solved.slope, "scale": solved.scale, "c0": solved.c0},
                       fused_kernels=fused)
        from tat_ext.transform import get_transformed_activations

        method, base = name.split("-", 1)
        with warnings.catch_warnings():
            # DKS with ReLU warns that its Q'(1) is not targeted; the name makes that choice explicit.
            warnings.simplefilter("ignore")
            fn = get_transformed_activations([base], method=method.upper(),
                                             subnet_max_func=subnet_max_func)[base]
        return cls(name, init_gain=1.0, fn=fn, params={"function": repr(fn)})

    @property
    def fused(self) -> bool:
        """True when the layers are TATConv2d/TATLinear (the fused bias + TReLU)."""
        return self.name == "trelu" and self.fused_kernels

    def _function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.name == "trelu":
            return EagerTReLU(self.slope, self.scale)
        return F.relu if self.name == "relu" else self.fn

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
        """A conv ("same" padding for odd kernels) followed by this activation."""
        args = (in_channels, out_channels, kernel_size, stride, kernel_size // 2)
        if self.fused:
            return TATConv2d(*args, slope=self.slope, scale=self.scale)
        return ActConv2d(*args, activation=self._function())

    def linear(self, in_features: int, out_features: int) -> nn.Linear:
        """A linear layer followed by this activation."""
        if self.fused:
            return TATLinear(in_features, out_features, slope=self.slope, scale=self.scale)
        return ActLinear(in_features, out_features, activation=self._function())

    def module(self) -> nn.Module:
        """This activation on its own (no bias), for the activation after a weighted sum."""
        if self.fused:
            return TReLU(self.slope, self.scale)
        if self.name == "trelu":
            return EagerTReLU(self.slope, self.scale)
        return nn.ReLU() if self.name == "relu" else Activation(self.fn)


def init_vanilla_(model: nn.Module, activation: ActivationChoice) -> nn.Module:
    """Delta-orthogonal (SUO) init of every conv/linear layer with the activation's gain, zero biases."""
    return tat_init_(model, gain=activation.init_gain)


class PerLocationNorm(nn.Module):
    """:func:`tat_ext.data.per_location_normalization` with a constant homogeneous coordinate: the
    output has one channel more than the input (``channel_dim`` 1 for images, -1 for vectors)."""

    def __init__(self, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_location_normalization(x, homog_mode="one", channel_dim=self.channel_dim)

    def extra_repr(self) -> str:
        return f"channel_dim={self.channel_dim}, adds 1 channel"
