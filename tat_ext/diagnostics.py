"""Check the kernel theory on a real model at initialization.

In the wide limit a DKS/TAT network acts on q = ||h||²/dim and on the cosine similarity c of an
input pair, and its output cosine is C_f(c_in) (docs/math.md, "Kernel maps"). :func:`measure_kernel`
records q and c through a model's layers with forward hooks, and :func:`predicted_cosine` gives the
TReLU prediction to compare the measured output cosine with. :func:`check_initialization` flags
layers that are not initialized as :func:`tat_ext.init.tat_init_` does, which the theory assumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from tat_ext import _validate
from tat_ext.cmaps import trelu_chain_c_map
from tat_ext.init import INITIALIZED_TYPES, suo_blocks
from tat_ext.transform import MAX_DEPTH

__all__ = ["InitProblem", "KernelTrace", "check_initialization", "measure_kernel", "predicted_cosine"]

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
    times (``depth`` <= :data:`tat_ext.transform.MAX_DEPTH`). A real number gives a float, a tensor
    a float64 CPU tensor and another array-like a float64 numpy array, of c_in's shape.
    """
    depth = _validate.integer("depth", depth, ge=0, le=MAX_DEPTH)
    slope = _validate.real("slope", slope, ge=0.0, lt=1.0)
    as_tensor = isinstance(c_in, Tensor)
    c = _validate.real_array("c_in", c_in.detach().cpu() if as_tensor else c_in)
    if not np.all(np.abs(c) <= 1.0 + 1e-9):
        raise ValueError("c_in must lie in [-1, 1]")
    # Measured cosines of (near-)identical inputs can exceed 1 by rounding; sqrt(1 - c²) needs |c| <= 1.
    c = np.clip(c, -1.0, 1.0)
    if as_tensor:
        return torch.from_numpy(trelu_chain_c_map(c, slope, depth))
    return trelu_chain_c_map(float(c), slope, depth) if c.ndim == 0 else trelu_chain_c_map(c, slope, depth)


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
    # A single name would be iterated character by character, a single container over its children.
    if isinstance(modules, (str, nn.Module)) or not isinstance(modules, Iterable):
        example = repr([modules]) if isinstance(modules, str) else "[model.layer1]"
        raise TypeError(f"modules must be a list of submodule names or modules, got {type(modules).__name__}; "
                        f"for one module pass a list, e.g. modules={example}")
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


# ---------------------------------------------------------------------------------------------
# Is the model initialized as the theory assumes?
# ---------------------------------------------------------------------------------------------

_FIX = "tat_ext.init.tat_init_(model) initializes it"
# Default relative tolerances: tat_init_ leaves Gram deviations ~1e-6 in float32 and up to 3e-3 in
# bfloat16 (measured, widths 8-2048), while PyTorch's default init is off by a factor ~0.58 in
# scale and by ~1/sqrt(width) in orthogonality.
_HALF_RTOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
_FLOAT_RTOL = 1e-3


@dataclass(frozen=True)
class InitProblem:
    """A layer whose parameters are not as :func:`tat_ext.init.tat_init_` leaves them.

    Attributes:
        layer: the layer's name in ``model.named_modules()``.
        problem: what is wrong, and how to fix it.
    """

    layer: str
    problem: str

    def __str__(self) -> str:
        return f"layer {self.layer!r}: {self.problem}"


def _suo_matrix(block: Tensor) -> Tuple[Tensor, str]:
    """The matrix SUO makes (scaled) orthogonal in a weight block [out, in, *kernel]: its centre
    tap for a delta-initialized conv, else the block flattened to [out, in·prod(kernel)]."""
    kernel = block.shape[2:]
    if kernel and all(k % 2 == 1 for k in kernel):
        centre = (slice(None), slice(None)) + tuple(k // 2 for k in kernel)
        others = block.clone()
        others[centre] = 0
        if not others.any():
            return block[centre], "centre tap"
    return block.reshape(block.shape[0], -1), "weight" if not kernel else "flattened weight"


def _block_problem(block: Tensor, gain: float, rtol: float) -> Optional[str]:
    matrix, what = _suo_matrix(block)
    rows, cols = matrix.shape
    m = matrix.double()
    gram = m.T @ m if rows >= cols else m @ m.T  # orthonormal columns (out >= in) or rows
    square_scale = gram.diagonal().mean()
    if not square_scale > 0:
        return f"{what} is zero, not (scaled) orthogonal; {_FIX}"
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    deviation = float((gram / square_scale - eye).abs().max())
    if not deviation <= rtol:
        return (f"{what} [{rows}, {cols}] is not (scaled) orthogonal: its Gram matrix is {deviation:.3g} "
                f"(relative) away from a multiple of the identity; {_FIX}")
    expected = gain * max(1.0, math.sqrt(rows / cols))
    scale = math.sqrt(float(square_scale))
    if not abs(scale / expected - 1.0) <= rtol:
        return (f"{what} [{rows}, {cols}] is orthogonal but scaled by {scale:.4g} instead of "
                f"gain·max(1, sqrt(out/in)) = {expected:.4g} (gain={gain:g}); {_FIX}")
    return None


def check_initialization(model: nn.Module, *, gain: float = 1.0,
                         rtol: Optional[float] = None) -> List[InitProblem]:
    """Layers of ``model`` that are not initialized as :func:`tat_ext.init.tat_init_` does.

    DKS/TAT's predictions assume every Linear/ConvNd/ConvTransposeNd is (delta-)orthogonal with
    scale ``gain·max(1, sqrt(out/in))`` and a zero bias (docs/math.md, "Initialization").
    PyTorch's default initialization is neither, and silently ruins a deep vanilla net: its
    weights shrink q by about 3× per layer until the random biases dominate, so a 99-layer TReLU
    net maps every pair of inputs to output cosine 1.000. Call this after building a model::

        problems = check_initialization(model)
        if problems:
            raise RuntimeError("\\n".join(map(str, problems)))

    Each weight block (one per group) is checked as ``tat_init_`` writes it: a conv whose taps are
    all zero but the centre must have an orthogonal centre matrix (``delta=True``), any other
    weight must be orthogonal when flattened to [out, in·prod(kernel)] (``delta=False``).

    Args:
        model: the network.
        gain: the ``gain`` given to ``tat_init_`` (1 for DKS/TAT).
        rtol: relative tolerance on orthogonality and scale; default 1e-3 (1e-2 for float16 and
            bfloat16 weights).

    Returns:
        One :class:`InitProblem` per offending layer (at most one per layer; empty if none), in
        ``model.named_modules()`` order; ``str()`` of each says what is wrong and how to fix it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    gain = _validate.real("gain", gain, gt=0.0)
    if rtol is not None:
        rtol = _validate.real("rtol", rtol, gt=0.0)
    problems = []
    with torch.no_grad():
        for name, layer in model.named_modules():
            if not isinstance(layer, INITIALIZED_TYPES):
                continue
            if isinstance(layer.weight, nn.parameter.UninitializedParameter):
                problems.append(InitProblem(name, "is lazy and not yet materialized; run a forward pass, then "
                                                  + _FIX))
                continue
            tol = rtol if rtol is not None else _HALF_RTOL.get(layer.weight.dtype, _FLOAT_RTOL)
            problem = next(filter(None, (_block_problem(b, gain, tol) for b in suo_blocks(layer))), None)
            if problem is None and layer.bias is not None and layer.bias.any():
                problem = f"bias is not zero (max |bias| = {float(layer.bias.abs().max()):.3g}); {_FIX}"
            if problem is not None:
                problems.append(InitProblem(name, problem))
    return problems
