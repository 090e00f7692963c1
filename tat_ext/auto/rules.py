"""What each node of a traced model does to the kernel quantities (q, c): its propagation rule.

:func:`classify` maps an fx node to a :class:`NodeRule` (docs/math.md, "Deriving the structure of
any model" has the rules and their derivation) or raises :class:`UnsupportedConstruct`, a
ValueError that names the node's qualified name, its op and why TAT cannot handle it.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from tat_ext.activations import TransformedActivation
from tat_ext.data import per_location_normalization
from tat_ext.models.common import Head
from tat_ext.models.layers import Activation, EagerTReLU, PerLocationNorm
from tat_ext.nn import TATConv2d, TATLinear, TReLU
from tat_ext.ops import trelu

__all__ = ["LEAKY", "NodeRule", "UnsupportedConstruct", "classify", "describe", "qualified_name"]

# Activation names of the Leaky ReLU family: TReLU under TAT ("trelu": a layer already transformed).
LEAKY = ("relu", "leaky_relu", "trelu")


class UnsupportedConstruct(ValueError):
    """A construct TAT's kernel-map rules cannot handle.

    Attributes:
        node: the node's qualified name (module path, or enclosing module and node name).
        op: the operation, as written in the model (``nn.BatchNorm2d``, ``F.softmax``, ...).
        why: the reason, with the fix where there is one.
    """

    def __init__(self, node: str, op: str, why: str) -> None:
        super().__init__(f"{node} ({op}): {why}")
        self.node, self.op, self.why = node, op, why


@dataclass(frozen=True)
class NodeRule:
    """The kernel-map rule of one data-carrying node.

    ``kind`` is one of: ``input``, ``norm`` (per-location normalization), ``linear``
    (conv/linear: identity on (q, c) with delta-orthogonal init and zero bias), ``act``
    (c ← C(c)), ``linear_act`` (a fused layer: both), ``scale`` (q ← a²q), ``sum``
    (Σ aᵢhᵢ), ``concat`` (channel concatenation), ``pass`` (identity-like), ``pool`` and
    ``dropout`` (identity, with a warning inside the body), ``head`` (the zoo's pooling/flatten
    head) and ``output_op`` (softmax after the last layer).
    """

    kind: str
    op: str
    data: Tuple[fx.Node, ...]
    coefficients: Tuple[float, ...] = ()
    activation: Optional[str] = None
    slope: Optional[float] = None
    weight: Optional[str] = None
    module: Optional[str] = None


_NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                 nn.RMSNorm)
_NORM_FUNCTIONS = (F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.normalize, F.rms_norm,
                   F.local_response_norm, torch.batch_norm, torch.layer_norm, torch.group_norm,
                   torch.instance_norm)
_TRANSPOSED = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
_ATTENTION_FUNCTIONS = (F.scaled_dot_product_attention, F.multi_head_attention_forward)
_LINEAR_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LINEAR_FUNCTIONS = (F.linear, F.conv1d, F.conv2d, F.conv3d)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                   F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.mean)
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCTIONS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
_PASS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten)
_PASS_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, F.pad,
                   torch.transpose, operator.getitem)
_PASS_METHODS = ("view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze",
                 "unsqueeze", "clone", "to", "float", "double", "half", "bfloat16", "__getitem__")

# Activation functions and methods by registered name (tat_ext.activations).
_ACT_FUNCTIONS: Dict[Callable, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.leaky_relu: "leaky_relu",
    torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.softplus: "softplus", F.elu: "elu", F.selu: "selu", torch.selu: "selu", F.silu: "silu",
    F.gelu: "gelu", F.softsign: "softsign", torch.erf: "erf", torch.atan: "atan", torch.asinh: "asinh",
    trelu: "trelu",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
                "sigmoid_": "sigmoid", "erf": "erf", "atan": "atan", "asinh": "asinh"}
_ACT_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                nn.Softplus: "softplus", nn.ELU: "elu", nn.SELU: "selu", nn.SiLU: "silu", nn.GELU: "gelu",
                nn.Softsign: "softsign", TReLU: "trelu", EagerTReLU: "trelu"}

_ADD = (operator.add, operator.iadd, torch.add)
_SUB = (operator.sub, operator.isub, torch.sub)
_MUL = (operator.mul, operator.imul, torch.mul)
_DIV = (operator.truediv, operator.itruediv, torch.div)
_NEG = (operator.neg, torch.neg)
_PRODUCTS = (torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum, F.bilinear)


def qualified_name(node: fx.Node) -> str:
    """The module path of a module call, else ``<enclosing module>.<node name>``."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    scope = next(reversed(stack.values()))[0] if stack else ""
    return f"{scope}.{node.name}" if scope else node.name


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """The op as the model writes it: ``nn.Conv2d``, ``F.relu``, ``Tensor.view``, ``operator.add``."""
    if node.op == "call_module":
        cls = type(gm.get_submodule(str(node.target)))
        prefix = "nn." if cls.__module__.startswith("torch.nn") else f"{cls.__module__}."
        return prefix + cls.__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or "torch"
        module = {"torch.nn.functional": "F", "_operator": "operator"}.get(module, module)
        return f"{module}.{getattr(node.target, '__name__', node.target)}"
    return node.op


def _arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Classifier:
    """Classifies the nodes of one graph; ``data`` holds the nodes computed from the inputs."""

    def __init__(self, gm: fx.GraphModule, data: set) -> None:
        self.gm, self.data = gm, data

    def reject(self, node: fx.Node, why: str) -> UnsupportedConstruct:
        return UnsupportedConstruct(qualified_name(node), describe(node, self.gm), why)

    def inputs(self, node: fx.Node) -> Tuple[fx.Node, ...]:
        found = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in self.data else None)
        return tuple(found)

    def parameter_name(self, node: object) -> Optional[str]:
        if isinstance(node, fx.Node) and node.op == "get_attr":
            owner, _, name = str(node.target).rpartition(".")
            value = getattr(self.gm.get_submodule(owner), name)
            if isinstance(value, nn.Parameter):
                return str(node.target)
        return None

    def rule(self, node: fx.Node) -> NodeRule:
        data = self.inputs(node)
        if node.op == "placeholder":
            return NodeRule("input", "input", ())
        if node.op == "call_module":
            return self.module_rule(node, data)
        if node.op == "call_function":
            return self.function_rule(node, data)
        if node.op == "call_method":
            return self.method_rule(node, data)
        raise self.reject(node, "no kernel-map rule for this node")

    # -- modules ------------------------------------------------------------------------------
    def module_rule(self, node: fx.Node, data) -> NodeRule:
        module = self.gm.get_submodule(str(node.target))
        op = describe(node, self.gm)
        if isinstance(module, PerLocationNorm):
            return NodeRule("norm", op, data, module=str(node.target))
        if isinstance(module, Head):
            return NodeRule("head", op, data, module=str(node.target))
        if isinstance(module, (TATConv2d, TATLinear)):
            return NodeRule("linear_act", op, data, activation="trelu", slope=module.slope,
                            weight=f"{node.target}.weight", module=str(node.target))
        if isinstance(module, _LINEAR_MODULES):
            return NodeRule("linear", op, data, weight=f"{node.target}.weight", module=str(node.target))
        name = self.module_activation(node, module)
        if name is not None:
            slope = getattr(module, "negative_slope", getattr(module, "slope", None))
            return NodeRule("act", op, data, activation=name, slope=slope, module=str(node.target))
        if isinstance(module, _NORM_MODULES):
            raise self.reject(node, "normalization layers are what TAT removes: its kernel maps assume a "
                                    "vanilla network (no normalization; inputs per-location normalized "
                                    "once, at the input); remove the layer")
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            raise self.reject(node, _TRANSPOSED_WHY)
        if isinstance(module, nn.MultiheadAttention):
            raise self.reject(node, _ATTENTION_WHY)
        if isinstance(module, _SOFTMAX_MODULES):
            return NodeRule("output_op", op, data)
        if isinstance(module, _POOL_MODULES):
            return NodeRule("pool", op, data)
        if isinstance(module, _DROPOUT_MODULES):
            return NodeRule("dropout", op, data)
        if isinstance(module, _PASS_MODULES):
            return NodeRule("pass", op, data)
        raise self.reject(node, "no kernel-map rule for this module (supported: conv/linear layers, the "
                                "registered activations, pooling, flatten/reshape, dropout, sums with "
                                "constant weights, channel concatenation; docs/math.md)")

    def module_activation(self, node: fx.Node, module: nn.Module) -> Optional[str]:
        for cls, name in _ACT_MODULES.items():
            if type(module) is cls:
                if isinstance(module, nn.Softplus) and module.beta != 1.0:
                    raise self.reject(node, "softplus with beta != 1 is not a registered activation")
                if isinstance(module, nn.ELU) and module.alpha != 1.0:
                    raise self.reject(node, "elu with alpha != 1 is not a registered activation")
                if isinstance(module, nn.GELU):
                    return "gelu" if module.approximate == "tanh" else "gelu_exact"
                return name
        if isinstance(module, Activation):
            fn = module.fn
            if isinstance(fn, TransformedActivation) and fn.name is not None:
                return fn.name
            if fn in _ACT_FUNCTIONS:
                return _ACT_FUNCTIONS[fn]
            raise self.reject(node, f"activation {fn!r} is not a registered activation")
        return None

    # -- functions ----------------------------------------------------------------------------
    def function_rule(self, node: fx.Node, data) -> NodeRule:
        target, op = node.target, describe(node, self.gm)
        if target in _ACT_FUNCTIONS:
            return self.function_activation(node, data, op)
        if target in _LINEAR_FUNCTIONS:
            weight = self.parameter_name(_arg(node, 1, "weight"))
            if len(data) != 1 or data[0] is not node.args[0] or weight is None:
                raise self.reject(node, "a conv/linear call needs a parameter (nn.Parameter attribute) as its "
                                        "weight; a weight computed from the input is a tensor×tensor product")
            return NodeRule("linear", op, data, weight=weight)
        if target is per_location_normalization:
            return NodeRule("norm", op, data)
        if target in _NORM_FUNCTIONS:
            raise self.reject(node, "normalization is what TAT removes: its kernel maps assume a vanilla "
                                    "network; normalize the input once with per_location_normalization")
        if target in _TRANSPOSED:
            raise self.reject(node, _TRANSPOSED_WHY)
        if target in _ATTENTION_FUNCTIONS:
            raise self.reject(node, _ATTENTION_WHY)
        if target in _SOFTMAX_FUNCTIONS:
            return NodeRule("output_op", op, data)
        if target in _POOL_FUNCTIONS:
            return NodeRule("pool", op, data)
        if target in _DROPOUT_FUNCTIONS:
            return NodeRule("dropout", op, data)
        if target in _PASS_FUNCTIONS:
            return NodeRule("pass", op, data[:1])
        if target in (torch.cat, torch.concat):
            return self.concat(node, data, op)
        if target in _ADD + _SUB + _MUL + _DIV + _NEG:
            return self.arithmetic(node, data, op, target)
        if target in _PRODUCTS:
            raise self.reject(node, _PRODUCT_WHY if len(data) > 1 else
                              "a matrix product with a parameter has no layout rule here; use nn.Linear "
                              "or F.linear ([out, in] weights, initialized by tat_init_)")
        raise self.reject(node, "no kernel-map rule for this function (docs/math.md, \"Deriving the "
                                "structure of any model\", lists the supported ops)")

    def function_activation(self, node: fx.Node, data, op: str) -> NodeRule:
        name = _ACT_FUNCTIONS[node.target]
        slope = None
        if name == "leaky_relu":
            slope = _arg(node, 1, "negative_slope", 0.01)
        elif name == "trelu":
            slope = node.kwargs.get("slope")
        elif node.target is F.softplus and (_arg(node, 1, "beta", 1.0) != 1.0):
            raise self.reject(node, "softplus with beta != 1 is not a registered activation")
        elif node.target is F.elu and (_arg(node, 1, "alpha", 1.0) != 1.0):
            raise self.reject(node, "elu with alpha != 1 is not a registered activation")
        elif node.target is F.gelu:
            name = "gelu" if node.kwargs.get("approximate", "none") == "tanh" else "gelu_exact"
        return NodeRule("act", op, data[:1], activation=name, slope=slope)

    def method_rule(self, node: fx.Node, data) -> NodeRule:
        op, method = describe(node, self.gm), str(node.target)
        if method in _ACT_METHODS:
            return NodeRule("act", op, data[:1], activation=_ACT_METHODS[method])
        if method in _PASS_METHODS:
            return NodeRule("pass", op, data[:1])
        if method == "mean":
            return NodeRule("pool", op, data[:1])
        if method in ("softmax", "log_softmax"):
            return NodeRule("output_op", op, data[:1])
        if method in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg"):
            target = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
                      "neg": torch.neg}[method.rstrip("_")]
            return self.arithmetic(node, data, op, target)
        if method in ("matmul", "bmm", "mm"):
            raise self.reject(node, _PRODUCT_WHY)
        raise self.reject(node, "no kernel-map rule for this tensor method")

    def concat(self, node: fx.Node, data, op: str) -> NodeRule:
        parts = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        if not all(isinstance(p, fx.Node) and p in self.data for p in parts):
            raise self.reject(node, "concatenating a constant tensor has no kernel-map rule")
        rank = len(node.meta["tensor_meta"].shape)
        if dim % rank != 1 and not (rank == 2 and dim % rank == 1):
            raise self.reject(node, f"concatenation along dim {dim} of a rank-{rank} tensor: only the channel "
                                    "axis (dim 1) has a rule (c = Σnᵢqᵢcᵢ/Σnᵢqᵢ)")
        sizes = tuple(float(p.meta["tensor_meta"].shape[dim]) for p in parts)
        return NodeRule("concat", op, tuple(parts), coefficients=sizes)

    def arithmetic(self, node: fx.Node, data, op: str, target) -> NodeRule:
        args = list(node.args)
        if target in _NEG:
            return NodeRule("scale", op, data, coefficients=(-1.0,))
        if target in _MUL + _DIV:
            if len(data) > 1:
                raise self.reject(node, _PRODUCT_WHY)
            other = args[1] if args[0] is data[0] else args[0]
            if not _number(other) or (target in _DIV and args[1] is data[0]):
                raise self.reject(node, "only multiplication or division by a Python number has a rule "
                                        "(q ← a²q); a tensor factor or a division by the tensor has none")
            return NodeRule("scale", op, data, coefficients=(float(other) if target in _MUL else 1.0 / other,))
        if len(data) != 2 or not all(isinstance(a, fx.Node) for a in args[:2]):
            raise self.reject(node, "adding a constant shifts the kernel; only sums of hidden tensors (with "
                                    "constant weights) have a rule")
        alpha = node.kwargs.get("alpha", 1.0)
        second = -alpha if target in _SUB else alpha
        return NodeRule("sum", op, (args[0], args[1]), coefficients=(1.0, float(second)))


_TRANSPOSED_WHY = ("transposed convolutions have no delta-orthogonal rule here (each input location "
                   "spreads over several output locations); use a conv after upsampling")
_ATTENTION_WHY = ("attention/softmax inside the network multiplies hidden tensors and normalizes rows: "
                  "its kernel is not a function of (q, c), so TAT cannot shape it")
_PRODUCT_WHY = ("a product of two hidden tensors: its kernel is not determined by the operands' (q, c), "
                "so there is no propagation rule")


def classify(gm: fx.GraphModule) -> Dict[fx.Node, NodeRule]:
    """The rule of every data-carrying node of ``gm`` (in graph order).

    A node carries data when it is a tensor computed from the inputs; shape arithmetic
    (``x.size(0)``) and parameters are not data. Also rejects modules or weights used twice.

    Raises:
        UnsupportedConstruct: a node TAT cannot handle (ValueError).
    """
    data: set = set()
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        # A tensor, or a tuple of tensors (an attention module's output): both carry data.
        is_tensor = isinstance(meta, TensorMetadata) or (
            isinstance(meta, (tuple, list)) and any(isinstance(m, TensorMetadata) for m in meta))
        if node.op == "placeholder" and is_tensor:
            data.add(node)
        elif node.op not in ("placeholder", "get_attr", "output") and is_tensor:
            found = []
            fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in data else None)
            if found:
                data.add(node)
    classifier = _Classifier(gm, data)
    rules: Dict[fx.Node, NodeRule] = {}
    owners: Dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node not in data:
            continue
        rule = classifier.rule(node)
        rules[node] = rule
        _check_single_use(classifier, node, rule, owners)
    return rules


def _check_single_use(classifier: _Classifier, node: fx.Node, rule: NodeRule, owners: Dict[str, fx.Node]) -> None:
    """Each parameterized module and each weight is used once: shared weights make the branches
    that use them dependent, which the rules do not model."""
    keys = []
    if rule.weight is not None:
        keys.append(rule.weight)
    if node.op == "call_module" and any(True for _ in classifier.gm.get_submodule(str(node.target)).parameters()):
        keys.append(str(node.target))
    for key in keys:
        if key in owners and owners[key] is not node:
            raise classifier.reject(node, f"{key!r} is called twice (shared weights, also at "
                                          f"{qualified_name(owners[key])}): the branches that share it are "
                                          "not independent at initialization; give each use its own layer")
        owners[key] = node
