"""Check the kernel theory on a real model at initialization.

In the wide limit a DKS/TAT network acts on q = ||h||²/dim and on the cosine similarity c of an
input pair, and its output cosine is C_f(c_in) (REFERENCE.md, "Kernel maps"). :func:`measure_kernel`
records q and c through a model's layers with forward hooks, and :func:`predicted_cosine` gives the
TReLU prediction to compare the measured output cosine with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from tat_ext.cmaps import trelu_c_map

__all__ = ["KernelTrace", "measure_kernel", "predicted_cosine"]

INPUT_NAME = "(input)"
OUTPUT_NAME = "(output)"


@dataclass(frozen=True)
class KernelTrace:
    """q values and pair cosines through a model, one row per recorded point, one column per pair.

    Row 0 is the model's input (named ``"(input)"``), the last row its output (``"(output)"``), and
    the rows between are the hooked modules' outputs in call order (a module called twice appears
    twice). Statistics are per example over all non-batch elements: for a conv feature map, q is
    the mean over locations of the per-location q, and the cosine is that of the flattened maps.

    Attributes:
        names: the row names (module names as in ``model.named_modules()``).
        q_a, q_b: [rows, pairs] float64 tensors, ||h||²/numel for the first/second input of each pair.
        cosine: [rows, pairs] float64 tensor, cosine similarity of the two hidden states of each pair.
    """

    names: tuple[str, ...]
    q_a: Tensor
    q_b: Tensor
    cosine: Tensor

    @property
    def input_cosine(self) -> Tensor:
        """Cosine similarity of each input pair, shape [pairs]."""
        return self.cosine[0]

    @property
    def output_cosine(self) -> Tensor:
        """Cosine similarity of each output pair, shape [pairs]."""
        return self.cosine[-1]

    def cosine_gap(self, slope: float, depth: int) -> Tensor:
        """Measured output cosine minus the TReLU prediction C_f(input cosine), shape [pairs].

        ``depth`` is the number of TReLU layers between input and output (see :func:`predicted_cosine`).
        """
        return self.output_cosine - predicted_cosine(self.input_cosine, slope, depth)

    def table(self) -> str:
        """A text table of the pair-averaged q_a, q_b and cosine of every row."""
        width = max(len(name) for name in self.names)
        lines = [f"{'layer':<{width}}  {'q_a':>9}  {'q_b':>9}  {'cosine':>9}"]
        for name, qa, qb, c in zip(self.names, self.q_a.mean(1), self.q_b.mean(1), self.cosine.mean(1)):
            lines.append(f"{name:<{width}}  {qa:9.4f}  {qb:9.4f}  {c:9.4f}")
        return "\n".join(lines)


def predicted_cosine(c_in: Union[float, Tensor], slope: float, depth: int) -> Union[float, Tensor]:
    """C_f(c_in) for a plain chain of ``depth`` TReLU layers with Leaky ReLU slope ``slope``.

    Orthogonal linear layers are the identity on c, so C_f is the TReLU C map composed ``depth``
    times. A float gives a float; a tensor gives a float64 CPU tensor of the same shape.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative int, got {depth!r}")
    if not 0.0 <= slope < 1.0:
        raise ValueError(f"slope must lie in [0, 1), got {slope!r}")
    as_tensor = isinstance(c_in, Tensor)
    c = np.asarray(c_in.detach().cpu().double() if as_tensor else c_in, dtype=np.float64)
    if not np.all(np.abs(c) <= 1.0 + 1e-9):
        raise ValueError("c_in must lie in [-1, 1]")
    # Measured cosines of (near-)identical inputs can exceed 1 by rounding; sqrt(1 - c²) needs |c| <= 1.
    c = np.clip(c, -1.0, 1.0)
    for _ in range(depth):
        c = trelu_c_map(c, slope)
    return torch.from_numpy(np.array(c, dtype=np.float64)) if as_tensor else float(c)


def _pair_stats(h: Tensor, pairs: int) -> tuple[Tensor, Tensor, Tensor]:
    flat = h.detach().reshape(2 * pairs, -1).double()
    a, b = flat[:pairs], flat[pairs:]
    sq_a, sq_b = a.square().sum(1), b.square().sum(1)
    cosine = (a * b).sum(1) / (sq_a * sq_b).sqrt()
    return sq_a / flat.shape[1], sq_b / flat.shape[1], cosine


def _resolve_modules(model: nn.Module, modules: Optional[Iterable[Union[str, nn.Module]]]) -> dict[nn.Module, str]:
    named = dict(model.named_modules())
    if modules is None:
        return {m: name for name, m in named.items() if next(m.children(), None) is None}
    names_of = {m: name for name, m in named.items()}
    chosen: dict[nn.Module, str] = {}
    for item in modules:
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"modules: {item!r} is not a submodule name of the model")
            chosen[named[item]] = item
        elif isinstance(item, nn.Module):
            if item not in names_of:
                raise ValueError(f"modules: {type(item).__name__} instance is not part of the model")
            chosen[item] = names_of[item]
        else:
            raise TypeError(f"modules must hold names or nn.Module objects, got {type(item).__name__}")
    return chosen


def measure_kernel(
    model: nn.Module,
    x_a: Tensor,
    x_b: Tensor,
    modules: Optional[Iterable[Union[str, nn.Module]]] = None,
) -> KernelTrace:
    """Measure q and pair cosines through ``model`` for the input pairs (x_a[i], x_b[i]).

    One forward pass of ``torch.cat([x_a, x_b])`` under ``torch.no_grad``; the model's train/eval
    mode is left as it is (use it at initialization, without normalization layers that mix the
    batch). Hooks are removed afterwards, even on error.

    Args:
        model: the network; its input and output are batched tensors.
        x_a, x_b: inputs of equal shape [pairs, ...] on the model's device.
        modules: names or submodules whose outputs to record. Default: every leaf module (one without
            children) whose output is a tensor; named modules must return a batched tensor.

    Raises:
        TypeError / ValueError: mismatched inputs, unknown modules, or outputs that are not batched
            tensors.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, x in (("x_a", x_a), ("x_b", x_b)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise TypeError(f"{name} must be a floating-point tensor of shape [pairs, ...]")
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    pairs = x_a.shape[0]
    explicit = modules is not None
    chosen = _resolve_modules(model, modules)

    rows: list[tuple[str, tuple[Tensor, Tensor, Tensor]]] = []

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        name = chosen[module]
        if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != 2 * pairs:
            if explicit:
                raise TypeError(f"module {name!r} must return a tensor with batch size {2 * pairs}")
            return
        rows.append((name, _pair_stats(output, pairs)))

    handles = [m.register_forward_hook(record) for m in chosen]
    try:
        with torch.no_grad():
            x = torch.cat([x_a, x_b])
            rows.insert(0, (INPUT_NAME, _pair_stats(x, pairs)))
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != 2 * pairs:
        raise TypeError(f"model must return a tensor with batch size {2 * pairs}")
    rows.append((OUTPUT_NAME, _pair_stats(out, pairs)))

    names = tuple(name for name, _ in rows)
    q_a, q_b, cosine = (torch.stack([stats[i] for _, stats in rows]).cpu() for i in range(3))
    return KernelTrace(names=names, q_a=q_a, q_b=q_b, cosine=cosine)
