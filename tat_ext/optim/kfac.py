"""K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for convs) as a ``torch.optim.Optimizer``,
with the settings of the paper's recipe as defaults (docs/kfac.md has the formulas and the recipe).

Usage (one training step; ``loss`` the MEAN over the local batch of per-example losses)::

    opt = KFAC(model, lr=3e-4)                 # hooks the model's supported layers
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    opt.curvature_backward(logits)             # fisher="mc": the extra backward (no-op otherwise)
    loss.backward()
    opt.step(); opt.zero_grad()

Evaluate under ``torch.no_grad()``: forwards with gradients enabled between two steps add to the
curvature statistics of the next step.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tat_ext import _validate as check
from tat_ext.optim.capture import Capture, Layer, Tap, find_layers
from tat_ext.optim.factors import Factors
from tat_ext.optim.sampling import sample_labels

__all__ = ["KFAC", "FISHERS"]

FISHERS = ("mc", "empirical")
_FIRST_ORDER_KEYS = ("lr", "momentum", "weight_decay")


def _factor_dtype(p: torch.Tensor) -> torch.dtype:
    """Factors in fp32, or fp64 for a fp64 model, whatever the parameter or autocast dtype."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _world() -> tuple:
    """(rank, world size) of the initialized process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class KFAC(torch.optim.Optimizer):
    """K-FAC for the nn.Linear/nn.Conv2d, TATLinear/TATConv2d and ActLinear/ActConv2d layers of
    ``model``; every other trainable parameter gets the first-order update below.

    Per layer (docs/kfac.md): A and G are bias-corrected moving averages (decay ``curvature_ema``)
    of (1/(N·T)) Σ ā āᵀ (ā: the input or unfolded patch, with a homogeneous 1 when the layer has a
    bias) and (1/(N·T)) Σ g gᵀ (g: the gradient of the per-example loss with respect to the
    PRE-activation, see :mod:`tat_ext.optim.capture`), updated every ``curvature_update_period``
    steps in fp32 (fp64 for fp64 layers). The damped inverses use π-split Tikhonov damping and are
    recomputed every ``inverse_update_period`` steps. The update of every parameter is
    Δ = −lr·s·P + momentum·Δ_prev with P = (1/T)·G_d⁻¹ ∇W̄ A_d⁻¹ for a preconditioned layer and
    P = ∇ for the rest, and s = min(1, sqrt(norm_constraint / Σ_groups lr²·⟨P, ∇⟩)) (1 when
    ``norm_constraint`` is None).

    Steps 0 … ``burnin_steps``−1 only accumulate curvature (the parameters do not move). Counting
    the following steps j = 0, 1, …: the curvature is updated when j % curvature_update_period == 0
    and the inverses (after that update) when j % inverse_update_period == 0 — so first at j = 0,
    the end of the burn-in.

    Args:
        model: the module to train (the unwrapped one under DDP or torch.compile).
        lr: learning rate (LR schedulers change each param group's ``lr``).
        momentum: the factor on the previous update Δ_prev (not Nesterov).
        damping: λ of the factored Tikhonov damping.
        curvature_ema: decay of the factors' moving averages in [0, 1); 0 = the current batch only.
        curvature_update_period, inverse_update_period: in steps, ≥ 1.
        burnin_steps: curvature-only steps at the start, ≥ 0.
        norm_constraint: c above, or None for no constraint.
        fisher: ``"mc"`` (labels sampled from the model, the paper's; needs
            :meth:`curvature_backward`) or ``"empirical"`` (the training labels' gradients, read
            from the ordinary backward).
        weight_decay: an L2 term wd·W added to the gradient before preconditioning (kfac-jax's
            ``l2_reg``), not decoupled decay; it also enters ⟨P, ∇⟩.
        seed: keys the MC labels with the step and the example index (see :meth:`curvature_backward`).
        max_factor_dim: a factor with more rows is kept as its diagonal (A or G alone; e.g. the
            flatten head of the small-input nets, dim A = 16,385, whose full factor would take 1 GiB
            and a minute per inverse on a CPU).
        first_order: overrides (``lr``, ``momentum``, ``weight_decay``) for the param group of
            the parameters K-FAC does not precondition (BatchNorm, grouped convs, ...).

    Param groups: ``param_groups[0]`` holds the preconditioned layers' parameters
    (``kind="kfac"``), ``param_groups[1]`` (if any) the rest (``kind="first_order"``).
    ``state_dict`` holds the factors, inverses, momentum and step count, so a resumed run is
    bitwise the uninterrupted one.

    Raises:
        ValueError: a setting out of range (named), a model without supported layers, or a
            parameter shared between modules (named).
    """

    def __init__(self, model: nn.Module, lr: float, *, momentum: float = 0.9, damping: float = 1e-3,
                 curvature_ema: float = 0.99, curvature_update_period: int = 1, inverse_update_period: int = 50,
                 burnin_steps: int = 5, norm_constraint: Optional[float] = 1e-3, fisher: str = "mc",
                 weight_decay: float = 0.0, seed: int = 0, max_factor_dim: int = 4096,
                 first_order: Optional[Mapping[str, float]] = None) -> None:
        lr = check.real("lr", lr, gt=0)
        momentum = check.real("momentum", momentum, ge=0)
        weight_decay = check.real("weight_decay", weight_decay, ge=0)
        self.damping = check.real("damping", damping, gt=0)
        self.curvature_ema = check.real("curvature_ema", curvature_ema, ge=0, lt=1)
        self.curvature_update_period = check.integer("curvature_update_period", curvature_update_period, ge=1)
        self.inverse_update_period = check.integer("inverse_update_period", inverse_update_period, ge=1)
        self.burnin_steps = check.integer("burnin_steps", burnin_steps, ge=0)
        self.norm_constraint = None if norm_constraint is None else check.real("norm_constraint",
                                                                                norm_constraint, gt=0)
        self.fisher = check.one_of("fisher", fisher, FISHERS)
        self.seed = check.integer("seed", seed, ge=0)
        self.max_factor_dim = check.integer("max_factor_dim", max_factor_dim, ge=1)
        overrides = self._first_order_overrides(first_order)

        self.layers: List[Layer] = find_layers(model, _factor_dtype, self.max_factor_dim)
        preconditioned = [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        ids = {id(p) for p in preconditioned}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups: List[Dict[str, Any]] = [{"params": preconditioned, "kind": "kfac"}]
        if rest:
            groups.append({"params": rest, "kind": "first_order", **overrides})
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.factors = [Factors.zeros(layer.in_dim, layer.out_dim, layer.factor_dtype, layer.weight.device,
                                      layer.diagonal_a, layer.diagonal_g) for layer in self.layers]
        self.steps = 0
        self._curvature_backward_done = False
        self._capture = Capture(self.layers, self._on_tap)
        self._capture.capturing = self.is_curvature_step(0)

    @staticmethod
    def _first_order_overrides(first_order: Optional[Mapping[str, float]]) -> Dict[str, float]:
        if first_order is None:
            return {}
        if not isinstance(first_order, Mapping) or set(first_order) - set(_FIRST_ORDER_KEYS):
            raise ValueError(f"first_order must be a mapping with keys among {', '.join(_FIRST_ORDER_KEYS)}, "
                             f"got {first_order!r}")
        return {key: check.real(f"first_order[{key!r}]", value, **({"gt": 0} if key == "lr" else {"ge": 0}))
                for key, value in first_order.items()}

    # -- the schedule of curvature work -------------------------------------------------------------

    def is_curvature_step(self, step: Optional[int] = None) -> bool:
        """Whether step ``step`` (default: the coming one) collects curvature statistics."""
        step = self.steps if step is None else step
        return step < self.burnin_steps or (step - self.burnin_steps) % self.curvature_update_period == 0

    def preconditioned_modules(self) -> List[str]:
        """The qualified names of the layers K-FAC preconditions."""
        return [layer.name for layer in self.layers]

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model (further steps would have no curvature)."""
        self._capture.remove()

    # -- statistics ----------------------------------------------------------------------------------

    def _on_tap(self, layer: Layer, tap: Tap) -> None:
        if self.fisher == "empirical" and tap.tensor.requires_grad:
            # the ordinary backward of the mean loss gives ∂(mean)/∂z = g/N: scale back by N
            tap.tensor.register_hook(lambda grad: layer.add_gradient(tap, grad, tap.batch))

    def curvature_backward(self, logits: torch.Tensor, example_index: Optional[torch.Tensor] = None) -> None:
        """The MC Fisher's extra backward: call it after the forward and before ``loss.backward()``
        on every step (it does nothing unless ``fisher="mc"`` and this is a curvature step).

        Samples y_i ~ softmax(logits_i) and differentiates Σ_i CE(logits_i, y_i) with respect to
        the layers' pre-activations only (``torch.autograd.grad``: no parameter gradient is
        computed or accumulated; the graph is kept for the ordinary backward). Each label is a
        function of (``seed``, step, example index) alone.

        Args:
            logits: [N, classes], the model output of this step's forward.
            example_index: each local example's position in the global batch (int tensor [N]);
                default ``rank + world·arange(N)``, the strided split of tat_ext's
                GlobalBatchSampler (``arange(N)`` in one process).
        """
        if self.fisher != "mc" or not self._capture.capturing:
            return
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.requires_grad:
            raise ValueError("logits must be the [N, classes] output of this step's forward, with gradients "
                             f"enabled; got {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")
        rank, world = _world()
        if example_index is None:
            example_index = rank + world * torch.arange(logits.shape[0])
        elif not isinstance(example_index, torch.Tensor) or example_index.shape != (logits.shape[0],):
            raise ValueError(f"example_index must be an integer tensor of shape [{logits.shape[0]}]")
        taps = [(layer, tap) for layer in self.layers for tap in layer.stats.taps]
        if not taps:
            raise RuntimeError("curvature_backward: no layer was captured in this step's forward (run the forward "
                               "with gradients enabled, outside torch.compile)")
        labels = sample_labels(logits, self.seed, self.steps, example_index)
        with torch.enable_grad():
            upcast = logits if logits.dtype == torch.float64 else logits.float()
            loss = F.cross_entropy(upcast, labels, reduction="sum")
            wanted = [tap.tensor for _, tap in taps if tap.tensor.requires_grad]
            grads = iter(torch.autograd.grad(loss, wanted, retain_graph=True, allow_unused=True))
        for layer, tap in taps:  # sum of per-example losses: the gradient is g itself
            layer.add_gradient(tap, next(grads) if tap.tensor.requires_grad else None, 1.0)
        self._curvature_backward_done = True

    def _step_statistics(self) -> List[Optional[tuple]]:
        """This step's (A_t, G_t) per layer, averaged over processes; None for a layer not called."""
        if self.fisher == "mc" and not self._curvature_backward_done:
            raise RuntimeError('fisher="mc": call optimizer.curvature_backward(logits) before loss.backward() on '
                               "every step (see KFAC.curvature_backward)")
        local = []
        for layer, factors in zip(self.layers, self.factors):
            s = layer.stats
            if s.a_rows == 0:
                local.append(None)
                continue
            g = s.g_sum / s.g_rows if s.g_rows else torch.zeros_like(factors.g_sum)
            local.append((s.a_sum / s.a_rows, g))
        if all(x is None for x in local):
            raise RuntimeError("K-FAC captured no layer statistics in this step: run the forward with gradients "
                               "enabled between steps (under torch.compile the hooks do not run: use the eager model)")
        _, world = _world()
        if world > 1:
            local = _all_reduce_mean(local, world)
        return local

    def _update_curvature(self) -> None:
        stats = self._step_statistics()
        for layer, factors, st in zip(self.layers, self.factors, stats):
            if st is not None:
                factors.update(st[0], st[1], self.curvature_ema, layer.locations)

    # -- the step --------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One step: fold in the curvature captured since the last step (on curvature steps),
        recompute the inverses when due, and update the parameters (after the burn-in)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step = self.steps
        try:
            if self._capture.capturing:
                self._update_curvature()
        finally:
            for layer in self.layers:
                layer.reset()
            self._curvature_backward_done = False
        self.steps += 1
        self._capture.capturing = self.is_curvature_step(self.steps)
        if step < self.burnin_steps:
            return loss
        if (step - self.burnin_steps) % self.inverse_update_period == 0:
            for layer, factors in zip(self.layers, self.factors):
                if factors.weight == 0.0:
                    raise RuntimeError(f"K-FAC: layer {layer.name} has no curvature yet (it was not called in a "
                                       "curvature step's forward)")
                factors.invert(self.damping)
        self._apply(self._directions())
        return loss

    def _gradients(self) -> Dict[torch.Tensor, torch.Tensor]:
        """∇ + wd·W for every parameter that has a gradient."""
        grads = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[p] = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
        return grads

    def _directions(self) -> Dict[torch.Tensor, tuple]:
        """(P, ∇) per parameter: preconditioned for the K-FAC layers, P = ∇ for the rest."""
        grads = self._gradients()
        out = {p: (g, g) for p, g in grads.items()}
        for layer, factors in zip(self.layers, self.factors):
            gw = grads.get(layer.weight)
            if gw is None:
                continue
            matrix = gw.reshape(layer.out_dim, -1).to(layer.factor_dtype)
            gb = grads.get(layer.bias) if layer.bias is not None else None
            if layer.bias is not None:
                bias = gb if gb is not None else torch.zeros_like(layer.bias)
                matrix = torch.cat([matrix, bias.reshape(-1, 1).to(layer.factor_dtype)], dim=1)
            p = factors.precondition(matrix)
            out[layer.weight] = (p[:, :gw[0].numel()].reshape(gw.shape).to(gw.dtype), gw)
            if gb is not None:
                out[layer.bias] = (p[:, -1].to(gb.dtype), gb)
        return out

    def _apply(self, directions: Dict[torch.Tensor, tuple]) -> None:
        scale = 1.0
        if self.norm_constraint is not None:
            total = sum(group["lr"] ** 2 * sum((directions[p][0].double() * directions[p][1].double()).sum()
                                               for p in group["params"] if p in directions)
                        for group in self.param_groups)
            if isinstance(total, torch.Tensor):  # Σ lr²·⟨P, ∇⟩ as a tensor: no host sync
                scale = torch.where(total > 0, (self.norm_constraint / total).sqrt().clamp(max=1.0),
                                    torch.ones_like(total))
        for group in self.param_groups:
            for p in group["params"]:
                if p not in directions:
                    continue
                direction = directions[p][0] * scale if isinstance(scale, torch.Tensor) else directions[p][0]
                state = self.state[p]
                if "delta" not in state:
                    state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                delta = state["delta"]
                delta.mul_(group["momentum"]).add_(direction.to(p.dtype), alpha=-group["lr"])
                p.add_(delta)

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """torch's optimizer state (momentum Δ per parameter, param groups) plus ``"kfac"``: the
        step count and each layer's factors and inverses."""
        state = super().state_dict()
        state["kfac"] = {"steps": self.steps,
                         "layers": [{"name": layer.name, **factors.state()}
                                    for layer, factors in zip(self.layers, self.factors)]}
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` of a KFAC built for the same model.

        Raises:
            ValueError: not a KFAC state_dict, or one of another model's layers.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac", None)
        if not isinstance(extra, dict) or "layers" not in extra:
            raise ValueError("state_dict: not a KFAC state_dict (no 'kfac' entry)")
        names = [entry.get("name") for entry in extra["layers"]]
        if names != self.preconditioned_modules():
            raise ValueError(f"state_dict: saved for the layers {names[:3]}... ({len(names)}), this optimizer "
                             f"preconditions {self.preconditioned_modules()[:3]}... ({len(self.layers)})")
        for entry, factors in zip(extra["layers"], self.factors):
            factors.load(entry)
        super().load_state_dict(state_dict)
        self.steps = int(extra["steps"])
        self._capture.capturing = self.is_curvature_step(self.steps)


def _all_reduce_mean(local: List[Optional[tuple]], world: int) -> List[Optional[tuple]]:
    """Average every process's statistics (one all-reduce over a flat float64 buffer)."""
    tensors = [t for st in local if st is not None for t in st]
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    out, offset = [], 0
    for st in local:
        if st is None:
            out.append(None)
            continue
        pair = []
        for t in st:
            pair.append(flat[offset:offset + t.numel()].reshape(t.shape).to(t.dtype))
            offset += t.numel()
        out.append(tuple(pair))
    return out
