"""The C-map structure of a traced model: (q, c) propagation, subnetworks, depth, a table.

:func:`derive` traces a model (tat_ext/auto/tracer.py), classifies its nodes
(tat_ext/auto/rules.py) and compiles the result into a :class:`Structure` whose
``subnet_max_func(x, r_fn)`` follows the reference library's convention (docs/math.md,
"Architectures"). The rules and the subnetwork rule are derived in docs/math.md, "Deriving the
structure of any model".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch.fx as fx
from torch import nn

from tat_ext.auto.rules import NodeRule, UnsupportedConstruct, classify, qualified_name
from tat_ext.auto.tracer import ExampleInputs, trace

__all__ = ["Row", "Structure", "build_structure", "derive"]

# |q − 1| above this at a sum's output makes the sum unnormalized (float rounding of w² + (1 − w²)).
Q_TOLERANCE = 1e-9
_NONLINEAR = ("act", "linear_act")
# Kinds that act elementwise and deterministically on one tensor: a fork on their output is the
# same as a fork on their input, each branch applying its own copy (docs/math.md).
_ELEMENTWISE = ("act", "scale", "pass", "pool", "dropout")

# Instructions of the compiled program: (destination, opcode, payload).
_COPY, _ACT, _MIX = 0, 1, 2


@dataclass(frozen=True)
class Row:
    """One line of the structure's table: a data-carrying node and the rule applied to it."""

    node: str
    op: str
    rule: str
    q: float
    depth: int


@dataclass(frozen=True)
class _Program:
    """The network in C-value space, as instructions over node slots (picklable)."""

    inputs: Tuple[int, ...]
    code: Tuple[Tuple[int, int, object], ...]
    outputs: Tuple[int, ...]
    branches: Tuple[Tuple[int, Tuple[Tuple[int, int, object], ...], int], ...]

    @staticmethod
    def _run(values: Dict[int, float], code, r_fn: Callable[[float], float]) -> None:
        for dst, opcode, payload in code:
            if opcode == _COPY:
                values[dst] = values[payload]
            elif opcode == _ACT:
                values[dst] = r_fn(values[payload])
            else:
                values[dst] = sum(w * values[src] for w, src in payload)

    def __call__(self, x: float, r_fn: Callable[[float], float]) -> float:
        values = {slot: x for slot in self.inputs}
        self._run(values, self.code, r_fn)
        candidates = [values[slot] for slot in self.outputs]
        for fork, code, operand in self.branches:
            branch = {fork: x}
            self._run(branch, code, r_fn)
            candidates.append(branch[operand])
        return max(candidates)


@dataclass(frozen=True)
class Structure:
    """A model's kernel-map structure.

    Attributes:
        depth: nonlinear layers on the deepest path from the input to an output.
        activations: qualified names of the activation nodes (fused layers included), in order.
        activation_kinds: the registered activation name of each (``"trelu"`` for tat_ext's).
        rows: the table, one :class:`Row` per data-carrying node.
        warnings: what was assumed (pooling in the body treated as identity, dropout, ...).
        is_chain: True when there is no sum or concatenation (a plain chain of ``depth`` layers).
    """

    depth: int
    activations: Tuple[str, ...]
    activation_kinds: Tuple[str, ...]
    rows: Tuple[Row, ...]
    warnings: Tuple[str, ...]
    is_chain: bool
    program: _Program

    def subnet_max_func(self, x: float, r_fn: Callable[[float], float]) -> float:
        """The reference library's ``subnet_max_func``: the network traced in C-value space from
        ``x``, ``r_fn`` once per nonlinear layer, maximized over the outputs and the subnetworks
        (each operand of each sum, alone from its fork, evaluated from ``x``)."""
        return self.program(x, r_fn)

    def table(self) -> str:
        """A text table: node, op, rule applied, q at init, nonlinear layers up to the node."""
        header = ("node", "op", "rule", "q", "depth")
        lines = [(r.node, r.op, r.rule, f"{r.q:.6g}", str(r.depth)) for r in self.rows]
        widths = [max(len(line[i]) for line in [header] + lines) for i in range(5)]
        text = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header] + lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        summary = f"{self.depth} nonlinear layers on the deepest path, {len(self.activations)} activation nodes"
        return "\n".join(text + [summary] + [f"warning: {w}" for w in self.warnings])

    def __str__(self) -> str:
        return self.table()


def derive(model: nn.Module, example_inputs: ExampleInputs) -> Structure:
    """Derive ``model``'s kernel-map structure by tracing it on ``example_inputs``.

    Args:
        model: any nn.Module whose forward torch.fx can trace (no data-dependent control flow).
        example_inputs: a tensor or tuple of tensors the model accepts (one forward pass is run,
            in eval mode, without gradients; the model is not modified).

    Returns:
        The :class:`Structure` (``subnet_max_func``, ``depth``, ``activations``, ``table()``).

    Raises:
        TypeError: ``model`` is not a module or ``example_inputs`` not tensors.
        ValueError: untraceable code, a failure on ``example_inputs``, or a construct TAT cannot
            handle (:class:`tat_ext.auto.UnsupportedConstruct`, naming node, op and reason).
    """
    return build_structure(trace(model, example_inputs))


def _dominators(order: Sequence[fx.Node], preds: Dict[fx.Node, Tuple[fx.Node, ...]]) -> Dict[fx.Node, Optional[fx.Node]]:
    """Immediate dominator of each node of a DAG in topological order (None: the virtual root
    above all inputs)."""
    index = {node: i for i, node in enumerate(order)}
    idom: Dict[fx.Node, Optional[fx.Node]] = {}

    def intersect(a: Optional[fx.Node], b: Optional[fx.Node]) -> Optional[fx.Node]:
        while a is not b:
            if a is None or b is None:
                return None
            if index[a] > index[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a

    for node in order:
        parents = preds[node]
        dom = parents[0] if parents else None
        for p in parents[1:]:
            dom = intersect(dom, p)
        idom[node] = dom
    return idom


class _Builder:
    def __init__(self, gm: fx.GraphModule, rules: Dict[fx.Node, NodeRule]) -> None:
        self.gm, self.rules = gm, rules
        self.order = list(rules)
        self.slot = {node: i for i, node in enumerate(self.order)}
        self.preds = {n: tuple(dict.fromkeys(r.data)) for n, r in rules.items()}
        self.users: Dict[fx.Node, List[fx.Node]] = {n: [] for n in self.order}
        for node, parents in self.preds.items():
            for p in parents:
                self.users[p].append(node)
        self.q: Dict[fx.Node, float] = {}
        self.weights: Dict[fx.Node, Tuple[Tuple[float, fx.Node], ...]] = {}

    def reject(self, node: fx.Node, why: str) -> UnsupportedConstruct:
        return UnsupportedConstruct(qualified_name(node), self.rules[node].op, why)

    # -- q propagation and the sum/concat weights (docs/math.md) ------------------------------
    def propagate_q(self) -> None:
        for node in self.order:
            rule = self.rules[node]
            if rule.kind in ("input", "norm"):
                self.q[node] = 1.0
            elif rule.kind == "scale":
                self.q[node] = rule.coefficients[0] ** 2 * self.q[rule.data[0]]
            elif rule.kind == "sum":
                self.sum_weights(node, rule)
            elif rule.kind == "concat":
                parts = [n * self.q[p] for n, p in zip(rule.coefficients, rule.data)]
                self.q[node] = sum(parts) / sum(rule.coefficients)
                self.weights[node] = tuple((w / sum(parts), p) for w, p in zip(parts, rule.data))
            else:
                self.q[node] = self.q[rule.data[0]]

    def sum_weights(self, node: fx.Node, rule: NodeRule) -> None:
        if rule.data[0] is rule.data[1]:
            raise self.reject(node, "adds a tensor to itself: the operands are not independent")
        parts = [a * a * self.q[p] for a, p in zip(rule.coefficients, rule.data)]
        q = sum(parts)
        if abs(q - 1.0) > Q_TOLERANCE:
            raise self.reject(node, f"unnormalized sum: its output has q = {q:.6g}, not 1 (squared weights "
                                    f"{' + '.join(f'{p:.4g}' for p in parts)}); write it as "
                                    "w·shortcut + sqrt(1 − w²)·residual, or have tailor rewrite it (the paper's "
                                    "rescaled ResNet): rescale_shortcuts=w in Python, --shortcut-weight W "
                                    "with tat-ext train, --rescale-shortcuts W with tat-ext tailor")
        self.q[node] = q
        self.weights[node] = tuple((w / q, p) for w, p in zip(parts, rule.data))
        dependent = [p for p in rule.data if not self.ends_in_own_linear(p, node)]
        if len(dependent) > 1:
            raise self.reject(node, "the operands " + " and ".join(qualified_name(p) for p in dependent)
                              + " do not end in their own freshly initialized conv/linear layer, so they "
                                "are not independent at initialization and the sum rule does not hold "
                                "(e.g. two activations added directly); put a conv/linear layer on all but "
                                "one branch")

    def ends_in_own_linear(self, node: fx.Node, consumer: fx.Node) -> bool:
        """Whether ``node`` is a conv/linear output (through scales and reshapes) used only on the
        way to ``consumer``."""
        while True:
            if len(self.users[node]) != 1:
                return False
            rule = self.rules[node]
            if rule.kind == "linear":
                return True
            if rule.kind not in ("scale", "pass"):
                return False
            node = rule.data[0]

    # -- the C-value program -------------------------------------------------------------------
    def instruction(self, node: fx.Node) -> Optional[Tuple[int, int, object]]:
        rule, slot = self.rules[node], self.slot[node]
        if rule.kind in ("input", "norm"):
            return None
        if rule.kind in _NONLINEAR:
            return slot, _ACT, self.slot[rule.data[0]]
        if rule.kind in ("sum", "concat"):
            return slot, _MIX, tuple((w, self.slot[p]) for w, p in self.weights[node])
        return slot, _COPY, self.slot[rule.data[0]]

    def fork(self, node: fx.Node, idom) -> Optional[fx.Node]:
        """Where the operands of ``node`` diverge, moved up through elementwise ops (a shared
        pre-activation belongs to every branch, as in ResNet-V2)."""
        fork = idom[node]
        while fork is not None and self.rules[fork].kind in _ELEMENTWISE and len(self.preds[fork]) == 1:
            fork = self.preds[fork][0]
        return fork

    def branch(self, fork: Optional[fx.Node], operand: fx.Node) -> Tuple[Tuple[int, int, object], ...]:
        """Instructions computing ``operand`` from ``fork`` alone (the fork's value is x)."""
        ancestors, stack = set(), [operand]
        while stack:
            node = stack.pop()
            if node is fork or node in ancestors:
                continue
            ancestors.add(node)
            stack.extend(self.preds[node])
        code = []
        for node in self.order:
            if node in ancestors:
                if self.rules[node].kind in ("input", "norm"):
                    return None  # the fork is the virtual root: the operand reads an input directly
                code.append(self.instruction(node))
        return tuple(code)

    def build(self) -> Structure:
        self.propagate_q()
        idom = _dominators(self.order, self.preds)
        code = tuple(filter(None, (self.instruction(n) for n in self.order)))
        branches = []
        for node in self.order:
            if self.rules[node].kind != "sum":
                continue
            fork = self.fork(node, idom)
            for operand in self.preds[node]:
                branch = self.branch(fork, operand)
                if branch is not None:
                    branches.append((self.slot[fork], branch, self.slot[operand]))
        outputs = self.output_nodes()
        depth = self.depths()
        program = _Program(tuple(self.slot[n] for n in self.order if self.rules[n].kind in ("input", "norm")),
                           code, tuple(self.slot[n] for n in outputs), tuple(branches))
        acts = [n for n in self.order if self.rules[n].kind in _NONLINEAR]
        rows = tuple(Row(qualified_name(n), self.rules[n].op, self.rule_text(n), self.q[n], depth[n])
                     for n in self.order)
        return Structure(depth=max((depth[n] for n in outputs), default=0),
                         activations=tuple(qualified_name(n) for n in acts),
                         activation_kinds=tuple(self.rules[n].activation for n in acts),
                         rows=rows, warnings=tuple(self.warnings(depth, outputs)),
                         is_chain=not any(self.rules[n].kind in ("sum", "concat") for n in self.order),
                         program=program)

    def output_nodes(self) -> List[fx.Node]:
        found: List[fx.Node] = []
        for node in self.gm.graph.nodes:
            if node.op == "output":
                fx.node.map_arg(node.args, lambda n: found.append(n) if n in self.rules else None)
        if not found:
            raise ValueError("the model returns no tensor computed from its inputs")
        return list(dict.fromkeys(found))

    def depths(self) -> Dict[fx.Node, int]:
        depth: Dict[fx.Node, int] = {}
        for node in self.order:
            here = 1 if self.rules[node].kind in _NONLINEAR else 0
            depth[node] = here + max((depth[p] for p in self.preds[node]), default=0)
        return depth

    def in_body(self, node: fx.Node) -> bool:
        """Whether a nonlinear layer follows ``node``."""
        stack, seen = list(self.users[node]), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if self.rules[n].kind in _NONLINEAR:
                return True
            stack.extend(self.users[n])
        return False

    def warnings(self, depth, outputs) -> List[str]:
        found = []
        for node in self.order:
            kind = self.rules[node].kind
            if kind == "pool" and self.in_body(node):
                found.append(f"{qualified_name(node)} ({self.rules[node].op}): pooling inside the body is "
                             "treated as the identity, as the reference library does")
            elif kind == "dropout":
                found.append(f"{qualified_name(node)} ({self.rules[node].op}): dropout is treated as the "
                             "identity (exact in eval mode; in training it scales q by 1/(1 − p))")
            elif kind == "output_op" and self.in_body(node):
                raise self.reject(node, "attention/softmax inside the network normalizes rows: its kernel is "
                                        "not a function of (q, c); only a softmax after the last layer is "
                                        "allowed")
        if not any(self.rules[n].kind == "norm" for n in self.order):
            found.append("no per-location normalization of the input: the rules assume q = 1 at the input "
                         "(tailor adds it)")
        return found

    def rule_text(self, node: fx.Node) -> str:
        rule = self.rules[node]
        kind = rule.kind
        if kind == "input":
            return "input: q = 1, c = x"
        if kind == "norm":
            return "per-location normalization: q = 1, c = x"
        if kind in ("linear", "head"):
            return "identity (delta-orthogonal, zero bias)"
        if kind in _NONLINEAR:
            return f"c ← r(c) [{rule.activation}]" + (" after identity linear" if kind == "linear_act" else "")
        if kind == "scale":
            return f"q ← {rule.coefficients[0] ** 2:.6g}·q"
        if kind in ("sum", "concat"):
            terms = " + ".join(f"{w:.4g}·c[{p.name}]" for w, p in self.weights[node])
            return f"{kind}: c = {terms}"
        if kind == "pool" and self.in_body(node):
            return "identity (pooling in the body: warning)"
        return "identity"


def build_structure(gm: fx.GraphModule) -> Structure:
    """The :class:`Structure` of an already traced graph (shapes propagated)."""
    rules = classify(gm)
    if not any(r.kind == "input" for r in rules.values()):
        raise ValueError("example_inputs: the model has no tensor input")
    return _Builder(gm, rules).build()
