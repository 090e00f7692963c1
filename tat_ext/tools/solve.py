"""`tat-ext solve`: activation parameters for a plain chain of DEPTH nonlinear layers (a vanilla
ResNet-50 has 49). Default: the TReLU slope (leaky_relu under TAT); with --activation and
--method, TAT or DKS parameters of any registered activation, with the kernel-map invariants they
reach per layer and over the network (docs/math.md).
"""
from __future__ import annotations

import argparse
import math
import warnings
from typing import Callable, Sequence

from tat_ext.activations import ActivationParams, activation_names
from tat_ext.errors import UserError
from tat_ext.utils.parsing import comma_list, positive_int

__all__ = ["add_arguments", "main"]

_DEFAULT_ETA = 0.9
_DEFAULT_TAU = 0.3
_DEFAULT_ZETA = 1.5
_DEFAULT_Q_SLOPE = 1.0
# C_f(0) of a smooth chain is its C map applied layer by layer (~1 ms per layer): printed up to here.
_MAX_PRINTED_C0_DEPTH = 5_000
# The solvers' arguments that an option sets (their UserError.flag names it).
_SOLVER_OPTIONS = ("depth", "eta", "tau", "zeta", "q_slope")
_depth_list = comma_list(int, lambda v: v >= 1, "numbers of nonlinear layers >= 1, e.g. 10,50,100")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounded(low: float, high: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _float(text)
        if not low < value < high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


def add_arguments(solve: argparse.ArgumentParser) -> None:
    where = solve.add_mutually_exclusive_group(required=True)
    where.add_argument("--depth", type=positive_int, help="number of nonlinear layers")
    where.add_argument("--depths", type=_depth_list, help="comma-separated depths, printed as a table")
    solve.add_argument("--activation", default="leaky_relu", choices=activation_names(), metavar="NAME",
                       help=f"activation name (default leaky_relu); one of: {', '.join(activation_names())}")
    solve.add_argument("--method", default="TAT", type=str.upper, choices=("TAT", "DKS"),
                       help="TAT (default) or DKS")
    solve.add_argument("--eta", type=_bounded(0.0, 1.0, "in (0, 1)"),
                       help=f"TAT with leaky_relu: target C_f(0) (default {_DEFAULT_ETA})")
    solve.add_argument("--tau", type=_bounded(0.0, math.inf, "> 0"),
                       help=f"TAT with a smooth activation: target C_f''(1) (default {_DEFAULT_TAU})")
    solve.add_argument("--zeta", type=_bounded(1.0, math.inf, "> 1"),
                       help=f"DKS: target C_f'(1) (default {_DEFAULT_ZETA})")
    solve.add_argument("--q-slope", type=_bounded(0.0, math.inf, "> 0"),
                       help=f"DKS: per-layer Q'(1) (default {_DEFAULT_Q_SLOPE})")


def main(args: argparse.Namespace) -> int:
    """Run `tat-ext solve`; usage errors exit through argparse (status 2, the option named)."""
    parser: argparse.ArgumentParser = args.parser
    trelu = args.activation == "leaky_relu" and args.method == "TAT"
    # Flags that the chosen method ignores are errors rather than silently unused.
    applies = {"--eta": trelu, "--tau": args.method == "TAT" and not trelu,
               "--zeta": args.method == "DKS", "--q-slope": args.method == "DKS"}
    for flag, ok in applies.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None and not ok:
            parser.error(f"argument {flag}: does not apply to {args.activation} under {args.method}")
    if args.activation == "relu" and args.method == "TAT":
        parser.error("argument --activation: relu is not supported by TAT (its C''(1) is infinite); "
                     "use leaky_relu")
    from tat_ext import transform  # deferred: keeps `tat-ext --help` fast

    eta = _DEFAULT_ETA if args.eta is None else args.eta

    def solve(depth: int):
        if trelu:
            return transform.solve_trelu(depth, eta=eta)
        return _solve_smooth(transform, args, depth)

    if args.depths is None:
        try:
            result = solve(args.depth)
        except ValueError as error:
            known = isinstance(error, UserError) and error.argument in _SOLVER_OPTIONS
            option = error.flag if known else "--depth" if trelu else "--activation"
            parser.error(f"argument {option}: {error}")
        if trelu:
            _print_trelu([args.depth], [result], eta)
        else:
            _print_smooth(args, args.depth, result)
        return 0

    # A table reports an unreachable depth in its row (e.g. eta = 0.9 needs 13 layers).
    results = []
    for depth in args.depths:
        try:
            results.append(solve(depth))
        except ValueError as error:
            results.append(error)
    if all(isinstance(r, ValueError) for r in results):
        parser.error(f"argument --depths: no depth is solvable; {results[0]}")
    if trelu:
        _print_trelu(args.depths, results, eta)
    else:
        print(f"{args.activation} under {args.method} ({_targets(args)})")
        _print_param_table(args.depths, results)
    return 0


def _solve_smooth(transform, args: argparse.Namespace, depth: int) -> ActivationParams:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the relu caveat is printed with the result instead
        if args.method == "TAT":
            return transform.solve_tat(args.activation, depth,
                                       tau=_DEFAULT_TAU if args.tau is None else args.tau)
        return transform.solve_dks(args.activation, depth,
                                   zeta=_DEFAULT_ZETA if args.zeta is None else args.zeta,
                                   q_slope=_DEFAULT_Q_SLOPE if args.q_slope is None else args.q_slope)


def _targets(args: argparse.Namespace) -> str:
    if args.method == "TAT":
        return f"tau = {_DEFAULT_TAU if args.tau is None else args.tau:g}"
    return (f"zeta = {_DEFAULT_ZETA if args.zeta is None else args.zeta:g}, "
            f"q_slope = {_DEFAULT_Q_SLOPE if args.q_slope is None else args.q_slope:g}")


def _print_trelu(depths: Sequence[int], results: Sequence, eta: float) -> None:
    """One depth: a block; several: a table whose unreachable rows carry the reason."""
    if len(depths) == 1:
        r = results[0]
        print(f"TReLU (leaky_relu under TAT) for a plain chain of {depths[0]} nonlinear layers, "
              f"eta = {eta:g}")
        print(f"  slope  = {r.slope:.12f}")
        print(f"  scale  = {r.scale:.12f}")
        print(f"  C_f(0) = {r.c0:.12f}")
        return
    print(f"TReLU (leaky_relu under TAT), eta = {eta:g}")
    print(f"{'depth':>7}  {'slope':>15}  {'scale':>15}  {'C_f(0)':>15}")
    for depth, r in zip(depths, results):
        if isinstance(r, ValueError):
            print(f"{depth:>7}  {r}")
        else:
            print(f"{depth:>7}  {r.slope:>15.12f}  {r.scale:>15.12f}  {r.c0:>15.12f}")


_PARAM_FIELDS = ("input_scale", "input_shift", "output_shift", "output_scale")


def _param_fields(params: ActivationParams) -> Sequence[str]:
    return _PARAM_FIELDS + (("negative_slope",) if params.negative_slope is not None else ())


def _print_param_table(depths: Sequence[int], results: Sequence) -> None:
    fields = _param_fields(next(r for r in results if not isinstance(r, ValueError)))
    print(f"{'depth':>7}  " + "  ".join(f"{f:>16}" for f in fields))
    for depth, params in zip(depths, results):
        if isinstance(params, ValueError):
            print(f"{depth:>7}  {params}")
        else:
            print(f"{depth:>7}  " + "  ".join(f"{getattr(params, f):>16.10g}" for f in fields))


def _print_smooth(args: argparse.Namespace, depth: int, params: ActivationParams) -> None:
    from tat_ext import cmaps

    print(f"{args.activation} under {args.method} for a plain chain of {depth} nonlinear layers "
          f"({_targets(args)})")
    print("  phi_hat(x) = output_scale * (phi(input_scale * x + input_shift) + output_shift)")
    for field in _param_fields(params):
        print(f"  {field:<14} = {getattr(params, field): .12g}")
    if args.activation == "relu":
        print("  note: as in the reference library, ReLU's input shift is fixed and Q'(1) is not targeted")

    inv = cmaps.local_invariants(args.activation, params)
    print("per layer:")
    for label, value in (("Q(1)", inv.q_1), ("Q'(1)", inv.q_slope_1), ("C(0)", inv.c_val_0),
                         ("C'(1)", inv.c_slope_1), ("C''(1)", inv.c_curv_1)):
        print(f"  {label:<8} = {value: .12g}")
    slope, curv = _chain_derivatives_at_1(inv.c_slope_1, inv.c_curv_1, depth)
    print(f"network ({depth} layers):")
    if depth <= _MAX_PRINTED_C0_DEPTH:
        c = 0.0
        for _ in range(depth):
            c = cmaps.c_map(args.activation, c, params)
        print(f"  {'C_f(0)':<8} = {c: .12g}")
    else:
        print(f"  {'C_f(0)':<8} = (not computed beyond {_MAX_PRINTED_C0_DEPTH} layers: ~1 ms per layer; "
              "iterate tat_ext.cmaps.c_map)")
    for label, value in (("C_f'(1)", slope), ("C_f''(1)", curv)):
        print(f"  {label:<8} = {value: .12g}")


def _chain_derivatives_at_1(s: float, k: float, depth: int) -> tuple:
    """C_f'(1) and C_f''(1) of ``depth`` layers with C'(1) = s, C''(1) = k, in closed form.

    The chain rule at the fixed point c = 1, (C∘g)' = C'·g' and (C∘g)'' = C''·g'² + C'·g'', gives
    C_f'(1) = s^L and C_f''(1) = k·s^(L−1)·(1 + s + … + s^(L−1)).
    """
    log_s = math.log(s)
    geometric = depth if log_s == 0.0 else math.expm1(depth * log_s) / math.expm1(log_s)
    return math.exp(depth * log_s), k * math.exp((depth - 1) * log_s) * geometric
