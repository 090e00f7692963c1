"""Graph edits of :func:`tat_ext.auto.tailor`: rescaled shortcuts, input normalization,
transformed activations (fused with the preceding conv/linear bias where the graph allows), and
the initialization of weights that ``tat_init_`` does not reach. Each returns lines for the report.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Dict, List, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from tat_ext.auto.rules import NodeRule, UnsupportedConstruct, classify, qualified_name
from tat_ext.init import scaled_uniform_orthogonal_
from tat_ext.models.layers import ActConv2d, ActLinear, Activation, PerLocationNorm
from tat_ext.nn import TATConv2d, TATLinear, TReLU
from tat_ext.ops import trelu

__all__ = ["LeakySpec", "init_functional_weights", "normalize_input", "rescale_shortcuts",
           "replace_activations"]


@dataclass(frozen=True)
class LeakySpec:
    """``scale·(LReLU(x + in_shift; slope) + out_shift)``: TReLU, or a DKS-transformed (Leaky) ReLU."""

    slope: float
    scale: float
    in_shift: float = 0.0
    out_shift: float = 0.0

    def kwargs(self) -> dict:
        return dict(slope=self.slope, scale=self.scale, in_shift=self.in_shift, out_shift=self.out_shift)


Spec = Union[LeakySpec, Callable[[torch.Tensor], torch.Tensor]]


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent), name, module)


def _fresh_name(gm: fx.GraphModule, stem: str) -> str:
    names = dict(gm.named_modules())
    index = 0
    while f"{stem}_{index}" in names:
        index += 1
    return f"{stem}_{index}"


# -- rescaled shortcuts -----------------------------------------------------------------------
def rescale_shortcuts(gm: fx.GraphModule, weight: float) -> List[str]:
    """Rewrite every plain sum ``a + b`` into ``w·shortcut + sqrt(1 − w²)·residual``.

    The residual operand is the one with more nonlinear layers on its deepest path; equal depths
    cannot be told apart and raise :class:`UnsupportedConstruct`.
    """
    rules = classify(gm)
    depth: Dict[fx.Node, int] = {}
    for node, rule in rules.items():
        depth[node] = (rule.kind in ("act", "linear_act")) + max((depth[p] for p in rule.data), default=0)
    changes = []
    for node, rule in rules.items():
        if rule.kind != "sum" or rule.coefficients != (1.0, 1.0):
            continue
        a, b = rule.data
        if depth[a] == depth[b]:
            raise UnsupportedConstruct(qualified_name(node), rule.op, "rescale_shortcuts: both operands have "
                                       f"{depth[a]} nonlinear layers, so neither is the shortcut; write the sum "
                                       "as w·shortcut + sqrt(1 − w²)·residual yourself")
        residual, shortcut = (a, b) if depth[a] > depth[b] else (b, a)
        scales = {}
        for operand, role, factor in ((shortcut, "shortcut", weight),
                                      (residual, "residual", math.sqrt(1.0 - weight * weight))):
            with gm.graph.inserting_before(node):
                scales[role] = gm.graph.create_node("call_function", operator.mul, (operand, factor),
                                                    name=f"{node.name}_{role}")
            scales[role].meta["nn_module_stack"] = node.meta.get("nn_module_stack")
        # The sum keeps its node (and name); in-place and method forms become a plain add.
        node.op, node.target = "call_function", operator.add
        node.args, node.kwargs = (scales["shortcut"], scales["residual"]), {}
        changes.append(f"{qualified_name(node)}: {qualified_name(shortcut)} + {qualified_name(residual)} → "
                       f"{weight:g}·shortcut + {math.sqrt(1.0 - weight * weight):.6g}·residual")
    gm.recompile()
    return changes


# -- input normalization ----------------------------------------------------------------------
def normalize_input(gm: fx.GraphModule) -> List[str]:
    """Insert per-location normalization (a homogeneous coordinate appended: one more channel)
    before the first conv/linear layer(s) fed by each input, unless the model already normalizes;
    those layers get one more input channel (a zero column before initialization)."""
    rules = classify(gm)
    if any(rule.kind == "norm" for rule in rules.values()):
        present = next(qualified_name(n) for n, r in rules.items() if r.kind == "norm")
        return [f"input already normalized per location by {present}: nothing added"]
    users: Dict[fx.Node, List[fx.Node]] = {n: [] for n in rules}
    for node, rule in rules.items():
        for p in dict.fromkeys(rule.data):
            users[p].append(node)
    changes = []
    for node, rule in list(rules.items()):
        if rule.kind == "input":
            changes.append(_normalize_one(gm, rules, users, node))
    gm.recompile()
    return changes


def _normalize_one(gm, rules: Dict[fx.Node, NodeRule], users, node: fx.Node) -> str:
    while len(users[node]) == 1 and rules[users[node][0]].kind in ("pass", "dropout"):
        node = users[node][0]
    consumers = users[node]
    bad = [c for c in consumers if rules[c].kind not in ("linear", "linear_act")]
    if bad or not consumers:
        where = f"{qualified_name(bad[0])} ({rules[bad[0]].op})" if bad else "the output"
        raise UnsupportedConstruct(qualified_name(node), rules[node].op,
                                   f"the input reaches {where} before any conv/linear layer, so the channel "
                                   "that per-location normalization adds has no layer to take it; add "
                                   "tat_ext.models.layers.PerLocationNorm at the input yourself (its output has "
                                   "one channel more) and widen the first layer, or pass normalize_input=False")
    convs = [gm.get_parameter(rules[c].weight).dim() > 2 for c in consumers]
    if len(set(convs)) > 1:
        raise UnsupportedConstruct(qualified_name(node), rules[node].op,
                                   "the input feeds both conv and linear layers, whose channel axes differ; "
                                   "normalize it yourself or pass normalize_input=False")
    channel_dim = 1 if convs[0] else -1
    name = _fresh_name(gm, "tat_input_norm")
    gm.add_submodule(name, PerLocationNorm(channel_dim=channel_dim))
    with gm.graph.inserting_after(node):
        norm = gm.graph.call_module(name, (node,))
    for consumer in consumers:
        consumer.replace_input_with(node, norm)
    widened = [_widen(gm, c, rules[c]) for c in consumers]
    return (f"inserted per-location normalization {name} (channel_dim={channel_dim}) after "
            f"{qualified_name(node)}; {', '.join(widened)}")


def _widen(gm: fx.GraphModule, node: fx.Node, rule: NodeRule) -> str:
    """Give a first layer one more input channel: a zero column (kept zero-effect before init)."""
    owner_name, _, attr = rule.weight.rpartition(".")
    owner = gm.get_submodule(owner_name)
    weight = getattr(owner, attr)
    if getattr(owner, "groups", 1) != 1:
        raise UnsupportedConstruct(qualified_name(node), rule.op, "a grouped first conv cannot take the "
                                   "normalization's extra channel; normalize the input yourself or pass "
                                   "normalize_input=False")
    extra = weight.new_zeros((weight.shape[0], 1) + tuple(weight.shape[2:]))
    setattr(owner, attr, nn.Parameter(torch.cat([weight.detach(), extra], dim=1),
                                      requires_grad=weight.requires_grad))
    for field in ("in_channels", "in_features"):
        if hasattr(owner, field) and isinstance(getattr(owner, field), int) and owner_name == rule.module:
            setattr(owner, field, getattr(owner, field) + 1)
    return f"{owner_name or rule.weight} now takes {weight.shape[1] + 1} input channels (was {weight.shape[1]})"


# -- activations ------------------------------------------------------------------------------
def _module_for(spec: Spec) -> nn.Module:
    return TReLU(**spec.kwargs()) if isinstance(spec, LeakySpec) else Activation(spec)


def _fused_layer(layer: nn.Module, spec: LeakySpec) -> nn.Module:
    """TATConv2d/TATLinear with ``layer``'s hyperparameters and its very Parameters."""
    if isinstance(layer, nn.Conv2d):
        new = TATConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
                        device="meta", **spec.kwargs())
    else:
        new = TATLinear(layer.in_features, layer.out_features, layer.bias is not None, device="meta",
                        **spec.kwargs())
    new.weight, new.bias = layer.weight, layer.bias
    new.train(layer.training)
    return new


def _unfused_layer(layer: nn.Module, fn: Callable) -> nn.Module:
    """ActConv2d/ActLinear (layer then ``fn``) with a fused layer's hyperparameters and Parameters."""
    if isinstance(layer, nn.Conv2d):
        new = ActConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
                        device="meta", activation=fn)
    else:
        new = ActLinear(layer.in_features, layer.out_features, layer.bias is not None, device="meta",
                        activation=fn)
    new.weight, new.bias = layer.weight, layer.bias
    return new


def replace_activations(gm: fx.GraphModule, specs: Dict[fx.Node, Spec], fuse: bool) -> List[str]:
    """Replace each activation node by its transformed activation ``specs[node]``; with ``fuse``,
    an nn.Conv2d/nn.Linear (or F.conv*/F.linear call) whose only user is a Leaky-ReLU-family
    activation becomes the fused layer (conv, then bias + activation in one op)."""
    rules = classify(gm)
    fused, replaced = [], []
    for node, spec in specs.items():
        rule = rules[node]
        if rule.kind == "linear_act":
            layer = gm.get_submodule(str(node.target))
            new = _fused_layer(layer, spec) if isinstance(spec, LeakySpec) else _unfused_layer(layer, spec)
            _set_module(gm, str(node.target), new)
            replaced.append(qualified_name(node))
        elif fuse and isinstance(spec, LeakySpec) and _fuse(gm, rules, node, spec):
            fused.append(qualified_name(node))
        else:
            _swap(gm, node, spec)
            replaced.append(qualified_name(node))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    changes = []
    if replaced:
        changes.append(f"transformed activation at {len(replaced)} node(s): {', '.join(replaced)}")
    if fused:
        changes.append(f"fused conv/linear bias + activation into one op at {len(fused)} node(s): "
                       f"{', '.join(fused)}")
    return changes


def _swap(gm: fx.GraphModule, node: fx.Node, spec: Spec) -> None:
    if node.op == "call_function" and node.target is trelu:
        if not isinstance(spec, LeakySpec):
            raise UnsupportedConstruct(qualified_name(node), "tat_ext.trelu",
                                       "a tat_ext.trelu call cannot become a smooth activation; use a module")
        node.kwargs = {**node.kwargs, **spec.kwargs()}
        return
    if node.op == "call_module":
        _set_module(gm, str(node.target), _module_for(spec))
        return
    name = _fresh_name(gm, "tat_activation")
    gm.add_submodule(name, _module_for(spec))
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0],))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _fuse(gm: fx.GraphModule, rules: Dict[fx.Node, NodeRule], node: fx.Node, spec: LeakySpec) -> bool:
    """Fold ``node`` (an activation) into the conv/linear before it, if that layer's output has no
    other user; returns whether it did."""
    if node.op == "call_function" and node.target is trelu:
        return False
    layer_node = rules[node].data[0]
    if rules[layer_node].kind != "linear" or len(layer_node.users) != 1:
        return False
    if layer_node.op == "call_module":
        layer = gm.get_submodule(str(layer_node.target))
        if type(layer) not in (nn.Conv2d, nn.Linear):
            return False
        _set_module(gm, str(layer_node.target), _fused_layer(layer, spec))
        node.replace_all_uses_with(layer_node)
        gm.graph.erase_node(node)
        return True
    # F.conv*/F.linear: the bias moves from the layer into the fused op.
    bias = layer_node.args[2] if len(layer_node.args) > 2 else layer_node.kwargs.get("bias")
    if len(layer_node.args) > 2:
        layer_node.update_arg(2, None)
    else:
        layer_node.update_kwarg("bias", None)
    channel_dim = -1 if layer_node.target is F.linear else 1
    with gm.graph.inserting_after(node):
        new = gm.graph.call_function(trelu, (layer_node, bias), dict(spec.kwargs(), channel_dim=channel_dim))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return True


# -- initialization ---------------------------------------------------------------------------
def init_functional_weights(gm: fx.GraphModule, rules: Dict[fx.Node, NodeRule]) -> List[str]:
    """SUO-initialize the weights of F.conv*/F.linear calls that are not parameters of a
    Linear/ConvNd module (which ``tat_init_`` covers), and zero their biases."""
    done = []
    for node, rule in rules.items():
        if rule.kind != "linear" or node.op != "call_function":
            continue
        owner_name, _, _ = rule.weight.rpartition(".")
        if isinstance(gm.get_submodule(owner_name), (nn.Linear, nn.modules.conv._ConvNd)):
            continue  # tat_init_ initializes it
        weight = gm.get_parameter(rule.weight)
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        for block in weight.detach().chunk(groups, dim=0):  # one SUO block per group, as tat_init_
            scaled_uniform_orthogonal_(block)
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if isinstance(bias, fx.Node) and bias.op == "get_attr":
            with torch.no_grad():
                gm.get_parameter(str(bias.target)).zero_()
        done.append(rule.weight)
    return [f"delta-orthogonal init of the weights that F.conv*/F.linear calls use: {', '.join(done)}"] if done else []
