"""Which layers K-FAC preconditions, and how it reads each one's input and pre-activation.

Per layer K-FAC needs the layer's input a (conv: every unfolded patch) and the gradient g of the
per-example loss with respect to the PRE-activation z = W·a + b (docs/kfac.md). Where z lives:

- ``nn.Linear`` / ``nn.Conv2d`` (exactly these classes): the module's output is z.
- ``ActConv2d`` / ``ActLinear`` (the zoo's unfused layers): they return φ(z); z is the input of
  their ``activation`` submodule, read by a forward pre-hook on it.
- ``TATConv2d`` / ``TATLinear``: they return y = scale·LReLU(z; slope) from the fused op (which may
  also fuse the conv), so no z tensor need exist. With slope ≥ 0, scale > 0 and no output shift,
  y > 0 ⟺ z > 0 (an input shift moves the kink but not this equivalence), so the exact
  ∂ℓ/∂z = ∂ℓ/∂y · scale · (1 if y > 0 else slope) — the fused op's own backward rule — comes from
  the output (docs/math.md, "output-only saving").

Other modules (BatchNorm, grouped or non-zero-padded convs, unknown subclasses) get the
optimizer's first-order update.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.models.layers import ActConv2d, ActLinear
from tat_ext.nn import TATConv2d, TATLinear

__all__ = ["Layer", "find_layers"]


@dataclass
class Tap:
    """One layer call's view of its pre-activation: the tensor to differentiate against, the map
    from that tensor's gradient to ∂ℓ/∂z, the call's N and its number of rows N·T."""

    tensor: torch.Tensor
    to_preactivation: Callable[[torch.Tensor], torch.Tensor]
    batch: int
    rows: int


def _identity(grad: torch.Tensor) -> torch.Tensor:
    return grad


def _lrelu_backward(y: torch.Tensor, slope: float, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """∂ℓ/∂y ↦ ∂ℓ/∂z for y = scale·LReLU(z; slope): the fused op's backward rule (see module doc)."""
    y = y.detach()

    def to_preactivation(grad: torch.Tensor) -> torch.Tensor:
        return torch.where(y > 0, grad * scale, grad * (scale * slope))  # in grad's dtype

    return to_preactivation


@dataclass
class Statistics:
    """Sums over one step's forward/backward calls of ā āᵀ and g gᵀ, with their row counts."""

    a_sum: Optional[torch.Tensor] = None
    a_rows: int = 0
    g_sum: Optional[torch.Tensor] = None
    g_rows: int = 0
    taps: List[Tap] = field(default_factory=list)


@dataclass
class Layer:
    """One preconditioned layer: its module, parameters and geometry, and the statistics captured
    in the current step (filled by hooks while ``capturing`` is True)."""

    name: str
    module: nn.Module
    weight: nn.Parameter
    bias: Optional[nn.Parameter]
    conv: bool
    factor_dtype: torch.dtype
    diagonal_a: bool = False  # dim A above the optimizer's max_factor_dim: keep only diag(A)
    diagonal_g: bool = False
    locations: int = 0  # T of the last captured call (1 for a linear layer on [N, in] inputs)
    stats: Statistics = field(default_factory=Statistics)

    @property
    def in_dim(self) -> int:
        """dim A: the unfolded input size, + 1 for the homogeneous coordinate when biased."""
        return self.weight[0].numel() + (self.bias is not None)

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """ā for every example and location, [N·T, dim A], in the factor dtype; sets ``locations``."""
        m = self.module
        if self.conv:
            x = x if x.dim() == 4 else x.unsqueeze(0)
            rows = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, C·kh·kw, T]
            self.locations = rows.shape[-1]
            rows = rows.transpose(1, 2).reshape(-1, rows.shape[1])
        else:
            batch = x.shape[0] if x.dim() > 1 else 1
            rows = x.reshape(-1, x.shape[-1])
            self.locations = rows.shape[0] // batch
        rows = rows.to(self.factor_dtype)
        if self.bias is not None:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        return rows

    def output_rows(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient shaped like z as [N·T, out] rows in the factor dtype."""
        if self.conv:
            grad = grad if grad.dim() == 4 else grad.unsqueeze(0)
            grad = grad.permute(0, 2, 3, 1)
        return grad.reshape(-1, grad.shape[-1]).to(self.factor_dtype)

    def add_input(self, x: torch.Tensor) -> int:
        """Add ā āᵀ (or its diagonal) of one call's input; returns its number of rows N·T."""
        rows = self.input_rows(x.detach())
        s = self.stats
        s.a_sum = _add_second_moment(s.a_sum, rows, self.diagonal_a)
        s.a_rows += rows.shape[0]
        return rows.shape[0]

    def add_gradient(self, tap: Tap, grad: Optional[torch.Tensor], per_example: float) -> None:
        """Add g gᵀ for g = ``per_example`` · ∂ℓ/∂z from ``grad`` = ∂ℓ/∂(tap tensor); None: z did
        not reach the loss (g = 0)."""
        s = self.stats
        if grad is None:
            rows = torch.zeros(1, self.out_dim, dtype=self.factor_dtype, device=self.weight.device)
        else:
            rows = self.output_rows(tap.to_preactivation(grad.detach())) * per_example
        s.g_sum = _add_second_moment(s.g_sum, rows, self.diagonal_g)
        s.g_rows += tap.rows

    def reset(self) -> None:
        self.stats = Statistics()


def _add_second_moment(total: Optional[torch.Tensor], rows: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """total + rowsᵀ rows, or + its diagonal Σ rows² when ``diagonal``, in the rows' dtype (autocast
    off: the hooks run inside the caller's autocast region)."""
    with torch.autocast(rows.device.type, enabled=False):
        if diagonal:
            part = rows.square().sum(dim=0)
            return part if total is None else total.add_(part)
        return rows.T @ rows if total is None else total.addmm_(rows.T, rows)


def _supported_conv(m: nn.Conv2d) -> bool:
    return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _tap_kind(m: nn.Module) -> Optional[str]:
    """How the pre-activation of ``m`` is read (see the module docstring), or None: first-order."""
    if isinstance(m, (TATConv2d, TATLinear)):
        if m.slope < 0 or m.scale <= 0 or m.out_shift != 0:
            warnings.warn(f"K-FAC: {type(m).__name__} with slope {m.slope:g}, scale {m.scale:g}, out_shift "
                          f"{m.out_shift:g}: its pre-activation gradient cannot be read from its output; "
                          "it gets the first-order update", stacklevel=4)
            return None
        kind = "fused"
    elif isinstance(m, (ActConv2d, ActLinear)):
        if not isinstance(m.activation, nn.Module):
            return None
        kind = "activation"
    elif type(m) in (nn.Linear, nn.Conv2d):
        kind = "output"
    else:
        return None
    if isinstance(m, nn.Conv2d) and not _supported_conv(m):
        return None
    return kind


class Capture:
    """Installs the hooks that fill each :class:`Layer`'s statistics while ``capturing`` is set.

    ``on_tap(layer, tap)`` receives each layer call's pre-activation view; the optimizer either
    hooks the ordinary backward on it (empirical Fisher) or differentiates a sampled loss against
    it (MC Fisher).
    """

    def __init__(self, layers: List[Layer], on_tap: Callable[[Layer, Tap], None]) -> None:
        self.layers, self.capturing, self._on_tap = layers, False, on_tap
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        for layer in layers:
            self._install(layer)

    def _tap(self, layer: Layer, tap: Tap) -> None:
        layer.stats.taps.append(tap)
        self._on_tap(layer, tap)

    def _active(self) -> bool:
        return self.capturing and torch.is_grad_enabled()

    def _install(self, layer: Layer) -> None:
        m = layer.module
        kind = _tap_kind(m)
        inside = {"now": False, "taps": 0}  # within this layer's forward; its taps before the call

        def on_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inside["now"] = False
            if not self._active():
                return
            rows = layer.add_input(args[0])
            batch = _batch(layer, args[0])
            if kind == "output":
                self._tap(layer, Tap(output, _identity, batch, rows))
            elif kind == "fused":
                self._tap(layer, Tap(output, _lrelu_backward(output, m.slope, m.scale), batch, rows))
            else:
                for tap in layer.stats.taps[inside["taps"]:]:  # the pre-activation seen in this call
                    tap.batch, tap.rows = batch, rows

        self._handles.append(m.register_forward_hook(torch.compiler.disable(on_output)))
        if kind == "activation":
            def enter(module: nn.Module, args: tuple) -> None:
                inside["now"], inside["taps"] = True, len(layer.stats.taps)

            def on_preactivation(activation: nn.Module, args: tuple) -> None:
                # the activation module may be shared between layers: only the running one records
                if inside["now"] and self._active():
                    self._tap(layer, Tap(args[0], _identity, 0, 0))  # batch, rows: set on output

            self._handles.append(m.register_forward_pre_hook(torch.compiler.disable(enter)))
            self._handles.append(m.activation.register_forward_pre_hook(torch.compiler.disable(on_preactivation)))

    def remove(self) -> None:
        """Remove every hook (the model is then as before the optimizer was built)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _batch(layer: Layer, x: torch.Tensor) -> int:
    """N of a call: the leading dimension, or 1 for an unbatched input ([C, H, W] or a vector)."""
    return x.shape[0] if x.dim() > (3 if layer.conv else 1) else 1


def find_layers(model: nn.Module, factor_dtype: Callable[[nn.Parameter], torch.dtype],
                max_factor_dim: Optional[int] = None) -> List[Layer]:
    """The preconditioned layers of ``model`` in module order; a factor whose side exceeds
    ``max_factor_dim`` is kept diagonal.

    Raises:
        ValueError: ``model`` is not a module, has no supported layer, or a parameter is shared
            between modules (the message names them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    owners: Dict[int, str] = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            where = f"{name or '<model>'}.{pname}"
            if id(p) in owners and owners[id(p)] != where:
                raise ValueError(f"model: a parameter is shared between {owners[id(p)]} and {where}; "
                                 "K-FAC needs each parameter in one layer")
            owners[id(p)] = where
    layers = []
    for name, module in model.named_modules():
        if _tap_kind(module) is None or not module.weight.requires_grad:
            continue
        bias = module.bias if module.bias is not None and module.bias.requires_grad else None
        layer = Layer(name, module, module.weight, bias, isinstance(module, nn.Conv2d), factor_dtype(module.weight))
        if max_factor_dim is not None:
            layer.diagonal_a, layer.diagonal_g = layer.in_dim > max_factor_dim, layer.out_dim > max_factor_dim
        layers.append(layer)
    if not layers:
        raise ValueError("model: no layer K-FAC can precondition (nn.Linear, nn.Conv2d with groups=1 and zero "
                         "padding, TATLinear/TATConv2d, ActLinear/ActConv2d)")
    return layers
