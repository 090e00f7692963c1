"""Trace a model into a torch.fx graph with the project's leaves, and record every tensor's shape.

The tracer keeps as single nodes the modules whose kernel-map rule is known as a whole (the zoo's
per-location normalization, head and activation layers, tat_ext's fused layers, and torch.nn's own
modules), records :func:`tat_ext.data.per_location_normalization` and :func:`tat_ext.trelu` as
calls instead of tracing into them, and turns tracing failures (data-dependent control flow, a
function that rejects a symbolic tensor) into a ValueError naming the module being traced.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from tat_ext.data import per_location_normalization
from tat_ext.models.common import Head
from tat_ext.models.layers import Activation, EagerTReLU, PerLocationNorm
from tat_ext.nn import TATConv2d, TATLinear, TReLU
from tat_ext.ops import trelu

__all__ = ["LEAF_TYPES", "TATTracer", "check_example_inputs", "trace"]

# Modules kept whole: their rule is known as a unit (tat_ext/auto/rules.py).
LEAF_TYPES = (PerLocationNorm, Head, TReLU, TATConv2d, TATLinear, EagerTReLU, Activation)

ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor]]


class TATTracer(fx.Tracer):
    """torch.fx tracer with the project's leaf modules and wrapped functions.

    ``failed_in`` names the innermost module being traced when tracing raised (``""`` for the
    model's own forward).
    """

    def __init__(self) -> None:
        super().__init__(autowrap_functions=(per_location_normalization, trelu))
        self._scope: List[str] = []
        self.failed_in: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        self._scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self._scope[-1]
            raise
        finally:
            self._scope.pop()


def check_example_inputs(example_inputs: object) -> Tuple[torch.Tensor, ...]:
    """``example_inputs`` as a tuple of tensors (a single tensor is accepted)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if (not isinstance(inputs, (tuple, list)) or not inputs
            or not all(isinstance(t, torch.Tensor) for t in inputs)):
        raise TypeError("example_inputs must be a tensor or a non-empty tuple of tensors (the model's "
                        f"positional inputs), got {type(example_inputs).__name__}")
    return tuple(inputs)


def trace(model: nn.Module, example_inputs: ExampleInputs) -> fx.GraphModule:
    """``model`` as an fx.GraphModule (sharing its submodules and parameters), each node's
    ``meta["tensor_meta"]`` filled from one forward pass of ``example_inputs``.

    Raises:
        TypeError: ``model`` is not an nn.Module or ``example_inputs`` not tensors.
        ValueError: the model cannot be traced (the message names the module and the construct),
            or it fails on ``example_inputs``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = check_example_inputs(example_inputs)
    tracer = TATTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, ... from the model's own code
        where = f"module {tracer.failed_in!r}" if tracer.failed_in else f"{type(model).__name__}.forward"
        construct = ("data-dependent control flow (an if/while/for on a tensor's value or a "
                     "Python bool of a tensor)" if "control flow" in str(error) or "iteration" in str(error)
                     else f"an operation torch.fx cannot trace symbolically ({type(error).__name__}: {error})")
        raise ValueError(f"cannot trace {where}: {construct}; TAT needs a static graph — move the "
                         "branching out of forward or make that module a fixed function of its "
                         "input") from None
    gm = fx.GraphModule(model, graph, type(model).__name__)
    propagate_shapes(gm, inputs)
    return gm


def propagate_shapes(gm: fx.GraphModule, inputs: Tuple[torch.Tensor, ...]) -> None:
    """Run ``gm`` once on ``inputs`` (no gradients, eval mode: running statistics are left alone)
    to record every node's tensor metadata."""
    modes = [(m, m.training) for m in gm.modules()]
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as error:
        raise ValueError(f"example_inputs: the model failed on inputs of shape(s) "
                         f"{[tuple(t.shape) for t in inputs]}: {type(error).__name__}: {error}") from None
