"""Activation functions by name, and the transformed activation ``γ·(φ(α·x + β) + δ)``.

The names and formulas follow the reference library ``dks`` (``dks/base/activation_getter.py``), so a
name means the same function there and here; ``silu`` is added as an alias of ``swish``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from tat_ext import _validate

__all__ = [
    "ActivationParams",
    "TransformedActivation",
    "activation_names",
    "get_activation",
]

Activation = Union[str, Callable[[torch.Tensor], torch.Tensor]]

# torch and dks both default Leaky ReLU's negative slope to 0.01.
DEFAULT_LEAKY_RELU_SLOPE = 0.01


def bentid(x: torch.Tensor) -> torch.Tensor:
    """Bent identity ``(sqrt(x² + 1) − 1)/2 + x``."""
    return (torch.sqrt(x * x + 1.0) - 1.0) / 2.0 + x


def softsign(x: torch.Tensor) -> torch.Tensor:
    """``x / (1 + |x|)``.

    |x| is written x·sign(x): the double backward of torch.abs (also inside F.softsign) makes torch
    import its compiler stack on first use, ~1 s.
    """
    return x / (1.0 + x * torch.sign(x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (what ``dks`` calls ``gelu``)."""
    return F.gelu(x, approximate="tanh")


class _Entry(NamedTuple):
    fn: Callable[[torch.Tensor], torch.Tensor]
    # Input at which the function (or a derivative) is not smooth; quadrature splits there.
    kink: Optional[float] = None
    # Negative-side slope for the Leaky ReLU family, whose Gaussian integrals have closed forms.
    lrelu_slope: Optional[float] = None


_REGISTRY: Dict[str, _Entry] = {
    "tanh": _Entry(torch.tanh),
    "sigmoid": _Entry(torch.sigmoid),
    "erf": _Entry(torch.erf),
    "relu": _Entry(torch.relu, kink=0.0, lrelu_slope=0.0),
    "softplus": _Entry(F.softplus),
    "selu": _Entry(F.selu, kink=0.0),
    "elu": _Entry(F.elu, kink=0.0),
    "swish": _Entry(F.silu),
    "silu": _Entry(F.silu),
    "bentid": _Entry(bentid),
    "atan": _Entry(torch.atan),
    "asinh": _Entry(torch.asinh),
    "square": _Entry(torch.square),
    "softsign": _Entry(softsign, kink=0.0),
    "leaky_relu": _Entry(F.leaky_relu, kink=0.0, lrelu_slope=DEFAULT_LEAKY_RELU_SLOPE),
    "gelu": _Entry(gelu_tanh),
    "gelu_exact": _Entry(F.gelu),
}


def activation_names() -> tuple:
    """The names :func:`get_activation` accepts."""
    return tuple(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unrecognized activation function name {name!r}; known names: {', '.join(_REGISTRY)}"
        ) from None


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function registered under ``name`` (ValueError for an unknown name)."""
    return _entry(name).fn


@dataclass(frozen=True)
class ActivationParams:
    """Parameters of ``φ̂(x) = output_scale · (φ(input_scale · x + input_shift) + output_shift)``.

    ``negative_slope`` is set only for Leaky ReLU (it is the solved slope under DKS and TAT);
    ``None`` means φ's own default.
    """

    input_scale: float = 1.0
    input_shift: float = 0.0
    output_shift: float = 0.0
    output_scale: float = 1.0
    negative_slope: Optional[float] = None

    def __post_init__(self) -> None:
        # Stored as plain floats (numpy scalars are accepted); frozen, hence object.__setattr__.
        for field in ("input_scale", "input_shift", "output_shift", "output_scale"):
            value = _validate.real(f"ActivationParams.{field}", getattr(self, field))
            object.__setattr__(self, field, value)
        if self.input_scale == 0.0:
            raise _validate.ArgumentValueError(
                "input_scale", "ActivationParams.input_scale must be nonzero (φ̂ would be constant)")
        if self.negative_slope is not None:
            object.__setattr__(self, "negative_slope",
                               _validate.real("ActivationParams.negative_slope", self.negative_slope))


class ResolvedActivation(NamedTuple):
    """A named or user activation with what the kernel-map code needs to integrate it."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: Optional[str]
    kink: Optional[float]
    lrelu_slope: Optional[float]


def resolve(activation: Activation, params: Optional[ActivationParams] = None) -> ResolvedActivation:
    """Resolve a name or torch callable; a Leaky ReLU gets ``params.negative_slope`` bound in."""
    if isinstance(activation, str):
        entry = _entry(activation)
        slope = entry.lrelu_slope
        fn = entry.fn
        if params is not None and params.negative_slope is not None:
            if activation != "leaky_relu":
                raise ValueError(f"negative_slope applies to 'leaky_relu' only, not {activation!r}")
            slope = float(params.negative_slope)
        if activation == "leaky_relu":
            fn = functools.partial(F.leaky_relu, negative_slope=slope)
        return ResolvedActivation(fn, activation, entry.kink, slope)
    if callable(activation):
        if params is not None and params.negative_slope is not None:
            raise ValueError("negative_slope applies to the named activation 'leaky_relu' only")
        return ResolvedActivation(activation, None, None, None)
    raise TypeError(f"activation must be a name or a torch callable, got {activation!r}")


class TransformedActivation:
    """The torch function ``x ↦ γ·(φ(α·x + β) + δ)`` (docs/math.md, "TAT for smooth activations
    and DKS")."""

    def __init__(self, activation: Activation, params: ActivationParams) -> None:
        resolved = resolve(activation, params)
        self.fn = resolved.fn
        self.name = resolved.name
        self.params = params

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        # Skip identity steps: they cost a kernel launch and a temporary each.
        if p.input_scale != 1.0:
            x = x * p.input_scale
        if p.input_shift != 0.0:
            x = x + p.input_shift
        x = self.fn(x)
        if p.output_shift != 0.0:
            x = x + p.output_shift
        if p.output_scale != 1.0:
            x = x * p.output_scale
        return x

    def __repr__(self) -> str:
        return f"TransformedActivation({self.name or self.fn!r}, {self.params})"
