"""``tailor``: turn an ordinary PyTorch model into a tailored, initialized TAT (or DKS) network."""
from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import Dict, Mapping, Optional, Tuple

import torch.fx as fx
from torch import nn

from tat_ext import _validate
from tat_ext.errors import UserError
from tat_ext.activations import TransformedActivation, activation_names
from tat_ext.auto import rewrite
from tat_ext.auto.report import TailorInfo
from tat_ext.auto.rules import UnsupportedConstruct, classify, qualified_name as _qualified
from tat_ext.auto.structure import Q_TOLERANCE, Structure, build_structure
from tat_ext.auto.tracer import ExampleInputs, check_example_inputs, propagate_shapes, trace
from tat_ext.init import tat_init_
from tat_ext.transform import get_transformed_activations, solve_trelu

__all__ = ["tailor"]

_METHODS = ("TAT", "DKS")


def tailor(model: nn.Module, example_inputs: ExampleInputs, *, eta: float = 0.9, method: str = "TAT",
           activation: Optional[str] = None, tat_params: Optional[Mapping[str, float]] = None,
           dks_params: Optional[Mapping[str, float]] = None, normalize_input: bool = True,
           rescale_shortcuts: Optional[float] = None, init: bool = True, fuse: bool = True,
           inplace: bool = False) -> fx.GraphModule:
    """A tailored copy of ``model``: transformed activations solved for its own structure.

    Args:
        model: an nn.Module torch.fx can trace (docs/math.md, "Deriving the structure of any model",
            lists what is supported and what is rejected).
        example_inputs: a tensor or tuple of tensors the model accepts.
        eta: TReLU's target C_f(0) in (0, 1) (TAT with ReLU/Leaky ReLU).
        method: ``"TAT"`` or ``"DKS"``.
        activation: None keeps each node's activation (ReLU/Leaky ReLU become TReLU under TAT);
            a registered name (:func:`tat_ext.activations.activation_names`) replaces every
            activation by that one, transformed.
        tat_params: for smooth TAT, ``{"c_curve_target": τ}`` (η is ``eta``).
        dks_params: for DKS, ``c_slope_1_target`` and ``local_q_slope_target``.
        normalize_input: add per-location normalization before the first layer unless the model
            has it (never twice); the first layer gets one more input channel.
        rescale_shortcuts: w in [0, 1): rewrite every plain sum ``a + b`` into
            ``w·shortcut + sqrt(1 − w²)·residual``; None rejects unnormalized sums.
        init: apply delta-orthogonal initialization (``tat_init_``) with zero biases.
        fuse: fold conv/linear bias + Leaky-ReLU-family activation into the fused op.
        inplace: reuse ``model``'s submodules and parameters (initialized in place) instead of a
            deep copy; by default ``model`` is not modified.

    Returns:
        An ``fx.GraphModule`` with ``.tat`` (:class:`tat_ext.auto.TailorInfo`: structure,
        solved constants, changes, warnings).

    Raises:
        TypeError / ValueError: bad arguments (named), an ``eta`` the structure cannot reach (the
            minimum depth or the largest reachable η), or a construct TAT cannot handle
            (:class:`tat_ext.auto.UnsupportedConstruct`: node, op and why).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = check_example_inputs(example_inputs)
    eta = _validate.real("eta", eta, gt=0.0, lt=1.0)
    method = _validate.one_of("method", method, _METHODS)
    if activation is not None:
        activation = _validate.one_of("activation", activation, activation_names())
    if rescale_shortcuts is not None:
        rescale_shortcuts = _validate.real("rescale_shortcuts", rescale_shortcuts, ge=0.0, lt=1.0)
    normalize_input, init, fuse, inplace = (_validate.boolean(name, value) for name, value in (
        ("normalize_input", normalize_input), ("init", init), ("fuse", fuse), ("inplace", inplace)))

    gm = trace(model if inplace else copy.deepcopy(model), inputs)
    changes = []
    if rescale_shortcuts is not None:
        changes += rewrite.rescale_shortcuts(gm, rescale_shortcuts)
        propagate_shapes(gm, inputs)
    if normalize_input:
        changes += rewrite.normalize_input(gm)
        propagate_shapes(gm, inputs)
    structure = build_structure(gm)
    rules = classify(gm)
    acts = [node for node, rule in rules.items() if rule.kind in ("act", "linear_act")]
    if not acts:
        raise ValueError("model: no activation found, so there is nothing to tailor (a linear network)")
    names = {node: _effective_name(rules[node].activation, activation, method) for node in acts}
    specs, constants, used_eta = _solve(structure, names, rules, method, eta, tat_params, dks_params)
    if init:
        tat_init_(gm)
        changes += rewrite.init_functional_weights(gm, rules)
        changes.append("initialized every conv/linear layer delta-orthogonally (tat_init_), biases zero")
    changes += rewrite.replace_activations(gm, {node: specs[names[node]] for node in acts}, fuse)
    propagate_shapes(gm, inputs)
    gm.tat = TailorInfo(structure=structure, method=method, eta=used_eta, activations=constants,
                        changes=tuple(changes), warnings=structure.warnings)
    return gm


def _effective_name(found: str, requested: Optional[str], method: str) -> str:
    """The activation a node gets: the requested one, else its own; tat_ext's TReLU counts as
    Leaky ReLU, and under TAT ReLU does too (TReLU)."""
    name = requested or found
    if name == "trelu" or (method == "TAT" and name == "relu"):
        return "leaky_relu"
    return name


def _solve(structure: Structure, names: Dict[fx.Node, str], rules, method: str, eta: float,
           tat_params, dks_params) -> Tuple[Dict[str, object], Dict[str, Dict[str, float]], Optional[float]]:
    distinct = tuple(dict.fromkeys(names.values()))
    if method == "TAT" and "leaky_relu" in distinct and len(distinct) > 1:
        leaky = next(n for n, name in names.items() if name == "leaky_relu")
        other = next(n for n, name in names.items() if name != "leaky_relu")
        raise UnsupportedConstruct(_qualified(other), rules[other].op,
                                   f"{names[other]} mixed with Leaky ReLU (e.g. {_qualified(leaky)}) under TAT: "
                                   "TReLU's slope comes from eta, the others' parameters from the curvature "
                                   "target, so one network cannot mix them; use one activation family "
                                   "(activation=...)")
    if method == "TAT" and distinct == ("leaky_relu",):
        if tat_params and "c_val_0_target" in tat_params:
            raise UserError("tat_params", "tat_params['c_val_0_target'] is η: pass eta= instead")
        params = _solve_trelu(structure, eta)
        spec = rewrite.LeakySpec(params.slope, params.scale)
        return {"leaky_relu": spec}, {"leaky_relu": {"slope": params.slope, "scale": params.scale,
                                                     "c0": params.c0}}, eta
    _check_unit_q(structure, names, rules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DKS with ReLU warns; the report records the choice
        functions = get_transformed_activations(list(distinct), method=method, tat_params=tat_params,
                                                dks_params=dks_params, subnet_max_func=structure.subnet_max_func)
    specs, constants = {}, {}
    for name, fn in functions.items():
        if isinstance(fn, functools.partial):  # the fused op for (Leaky) ReLU under DKS
            specs[name] = rewrite.LeakySpec(**{k: fn.keywords[k] for k in ("slope", "scale", "in_shift", "out_shift")})
            constants[name] = dict(fn.keywords)
        else:
            specs[name] = fn
            p = fn.params if isinstance(fn, TransformedActivation) else None
            constants[name] = {k: getattr(p, k) for k in ("input_scale", "input_shift", "output_shift",
                                                           "output_scale")} if p is not None else {}
    return specs, constants, None


def _solve_trelu(structure: Structure, eta: float):
    try:
        return solve_trelu(eta=eta, subnet_max_func=structure.subnet_max_func)
    except ValueError as error:
        message = str(error)
        if structure.is_chain:
            try:
                solve_trelu(structure.depth, eta=eta)
            except ValueError as chain_error:
                message = f"{chain_error} (the model is a chain of {structure.depth} nonlinear layers)"
        raise UserError("eta", message) from None


def _check_unit_q(structure: Structure, names, rules) -> None:
    """Smooth transformed activations need q = 1 at their input (their maps are solved at q = 1)."""
    q_at = {row.node: row.q for row in structure.rows}
    for node in names:
        q = q_at[_qualified(node)]
        if not math.isclose(q, 1.0, rel_tol=0.0, abs_tol=Q_TOLERANCE):
            raise UnsupportedConstruct(_qualified(node), rules[node].op,
                                       f"q = {q:.6g} at this activation's input, but a smooth TAT/DKS activation "
                                       "is solved for q = 1: remove the constant factor or unnormalized sum "
                                       "before it")
