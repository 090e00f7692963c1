"""The ``tat-ext`` command line (also ``python -m tat_ext``).

Subcommands:
    solve   activation parameters for a plain chain: the TReLU slope (default), or TAT/DKS for
            any registered activation, with the kernel-map invariants they reach.
    verify  the fused kernels against the reference on every device (the post-install check).
    bench   eager PyTorch vs torch.compile vs tat_ext: activation sizes and a training step.
    profile torch.profiler traces and per-kernel tables of training steps, unfused vs fused.
    train   train a model (tat_ext.train); also under torchrun.
    compare the main job: one deep vanilla net trained with TAT and with EOC ReLU, side by side.
    sweep   the depth sweep: TAT vs EOC ReLU vs ResNet+BN over depths, seeds and learning rates.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import warnings
from typing import Callable, List, Optional, Sequence

from tat_ext.activations import ActivationParams, activation_names

__all__ = ["build_parser", "main"]

_DEFAULT_ETA = 0.9
_DEFAULT_TAU = 0.3
_DEFAULT_ZETA = 1.5
_DEFAULT_Q_SLOPE = 1.0
# C_f(0) of a smooth chain is its C map applied layer by layer (~1 ms per layer): printed up to here.
_MAX_PRINTED_C0_DEPTH = 5_000
# The solvers' ArgumentValueError.argument -> the option that sets it.
_OPTION_OF = {"depth": "--depth", "eta": "--eta", "tau": "--tau", "zeta": "--zeta", "q_slope": "--q-slope"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of layers, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (number of nonlinear layers), got {value}")
    return value


def _depth_list(text: str) -> List[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list of depths, e.g. 10,50,100")
    return [_positive_int(p) for p in parts]


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


def build_parser() -> argparse.ArgumentParser:
    """The ``tat-ext`` parser; each subcommand stores its handler in ``args.handler``."""
    parser = argparse.ArgumentParser(prog="tat-ext", description="Tailored Activation Transformation tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_solve(commands)
    for name, summary in _TOOLS.items():
        _add_tool(commands, name, summary)
    _add_train(commands)
    _add_compare(commands)
    _add_sweep(commands)
    return parser


# Subcommands implemented in tat_ext/tools/<name>.py (add_arguments + main).
_TOOLS = {
    "verify": "check the fused kernels against the reference on every device (post-install check)",
    "bench": "time eager PyTorch, torch.compile and tat_ext: activation sizes and a training step",
    "profile": "torch.profiler traces and per-kernel tables of training steps, unfused vs fused",
}


def _add_tool(commands: argparse._SubParsersAction, name: str, summary: str) -> None:
    module = importlib.import_module(f"tat_ext.tools.{name}")
    sub = commands.add_parser(name, help=summary, description=module.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub)
    sub.set_defaults(handler=_run_tool, parser=sub, tool_main=module.main)


def _run_tool(args: argparse.Namespace) -> int:
    from tat_ext.tools.common import UsageError

    try:
        return args.tool_main(args)
    except UsageError as error:  # a user mistake: one line naming the argument, exit 2
        print(f"tat-ext {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tat-ext {args.command}: interrupted", file=sys.stderr)
        return 130


def _add_solve(commands: argparse._SubParsersAction) -> None:
    solve = commands.add_parser(
        "solve",
        help="activation parameters for a plain chain of nonlinear layers",
        description="Solve TAT/DKS activation parameters for a plain chain of DEPTH nonlinear layers "
                    "(a vanilla ResNet-50 has 49). Default: the TReLU slope (leaky_relu under TAT).",
    )
    where = solve.add_mutually_exclusive_group(required=True)
    where.add_argument("--depth", type=_positive_int, help="number of nonlinear layers")
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
    solve.set_defaults(handler=_run_solve, parser=solve)


def _run_solve(args: argparse.Namespace) -> int:
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
            option = _OPTION_OF.get(getattr(error, "argument", None), "--depth" if trelu else "--activation")
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
def _add_train(commands: argparse._SubParsersAction) -> None:
    from tat_ext.train.config import add_arguments

    train = commands.add_parser(
        "train", help="train a model (progress, metrics, plots, checkpoints, --resume; torchrun-aware)",
        description="Train a model on the embedded digits, CIFAR-10 or synthetic data. Under "
                    "`torchrun --nproc_per_node=N -m tat_ext train ...` it trains with DistributedDataParallel.")
    add_arguments(train)
    train.set_defaults(handler=_run_train, parser=train)


def _lr_list(text: str) -> List[float]:
    values = [_float(p) for p in text.split(",") if p.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates > 0, got {text!r}")
    return values


def _add_compare(commands: argparse._SubParsersAction) -> None:
    from tat_ext.train.compare import COMPARE_DEFAULTS, COMPARE_LRS
    from tat_ext.train.config import add_arguments

    compare = commands.add_parser(
        "compare", help="the same deep vanilla net trained with TAT and with EOC ReLU, side by side",
        description="Train one vanilla network with TAT's TReLU and with Edge-of-Chaos ReLU at each "
                    "learning rate of --lrs (same seed, data and settings), and print the test "
                    "accuracies side by side. With --out, run i goes to OUT/<activation>-lr<lr>.")
    add_arguments(compare, defaults=COMPARE_DEFAULTS, exclude=("activation", "eta", "resume", "lr"))
    compare.add_argument("--lrs", type=_lr_list, default=list(COMPARE_LRS),
                         help="comma-separated learning rates (default " + ",".join(f"{v:g}" for v in COMPARE_LRS)
                              + ")")
    compare.set_defaults(handler=_run_compare, parser=compare)


def _name_list(text: str) -> List[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    from tat_ext.train import sweep as sweep_module
    from tat_ext.train.config import add_arguments

    sweep = commands.add_parser(
        "sweep", help="the depth sweep: TAT vs EOC ReLU vs ResNet+BN over depths, seeds and learning rates",
        description="Train every method at every depth, learning rate and seed (each (method, depth) picks its "
                    "rate on a validation part held out from the training split; the test split is only "
                    "reported), in parallel worker processes, and write OUT/sweep.json (every finished run, "
                    "written as it finishes), OUT/sweep.md (tables) and OUT/sweep.png (test accuracy and trained "
                    "rates against depth). Running the same command again with the same --out continues an "
                    "interrupted sweep: finished runs are skipped. Rules: tat_ext/train/sweep.py.")
    g = sweep.add_argument_group("grid")
    g.add_argument("--depths", type=_depth_list, default=list(sweep_module.DEFAULT_DEPTHS),
                   help="nonlinear layers on the deepest path; D maps to round((D-1)/3) bottleneck blocks "
                        "(default " + ",".join(map(str, sweep_module.DEFAULT_DEPTHS)) + ")")
    g.add_argument("--methods", type=_name_list, default=list(sweep_module.DEFAULT_METHODS),
                   help="trelu (TAT), relu (EOC ReLU), resnet (ResNet-V2 + BatchNorm) (default "
                        + ",".join(sweep_module.DEFAULT_METHODS) + ")")
    g.add_argument("--seeds", type=int, default=sweep_module.DEFAULT_SEEDS,
                   help=f"seeds 0..N-1 per method, depth and rate (default {sweep_module.DEFAULT_SEEDS})")
    g.add_argument("--lrs", type=_lr_list, default=list(sweep_module.DEFAULT_LRS),
                   help="the learning-rate grid every method gets (default "
                        + ",".join(f"{v:g}" for v in sweep_module.DEFAULT_LRS) + ")")
    g.add_argument("--eta", dest="sweep_eta", metavar="ETA", type=float, default=sweep_module.DEFAULT_ETA,
                   help="TAT's target C_f(0) where the depth reaches it; below, the largest reachable eta "
                        f"rounded down (default {sweep_module.DEFAULT_ETA})")
    add_arguments(sweep, defaults=sweep_module.SWEEP_DEFAULTS,
                  exclude=("model", "depth", "blocks", "activation", "eta", "shortcut_weight", "lr", "seed",
                           "out", "resume", "compile"))
    g = sweep.add_argument_group("sweep execution")
    g.add_argument("--workers", type=int, help="parallel worker processes (default: CPU cores / --threads); "
                                               "the results do not depend on it")
    g.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    g.add_argument("--out", default="tat-ext-sweep",
                   help="sweep directory; an existing one is continued (default ./tat-ext-sweep)")
    sweep.set_defaults(handler=_run_sweep, parser=sweep)


def _train_error(command: str, error: Exception, status: int = 2) -> int:
    """A user mistake in a training run (status 2), or a diverged run (1): one line on stderr,
    once under torchrun."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"tat-ext {command}: error: {error}", file=sys.stderr)
    return status


def _run_train(args: argparse.Namespace) -> int:
    from tat_ext.train import Diverged, TrainError, train
    from tat_ext.train.config import from_args

    try:
        result = train(from_args(args))
    except TrainError as error:
        return _train_error("train", error)
    except Diverged as error:
        return _train_error("train", error, status=1)
    except KeyboardInterrupt:  # during setup, or a second Ctrl-C: nothing (more) to save
        print("tat-ext train: interrupted", file=sys.stderr)
        return 130
    return 130 if result.interrupted else 0


def _run_compare(args: argparse.Namespace) -> int:
    from tat_ext.train import TrainError
    from tat_ext.train.compare import compare, format_table
    from tat_ext.train.config import from_args

    config = from_args(args)
    try:
        outcomes = compare(config, lrs=args.lrs)
    except TrainError as error:
        return _train_error("compare", error)
    except KeyboardInterrupt:
        print("tat-ext compare: interrupted", file=sys.stderr)
        return 130
    print("\n" + format_table(config, outcomes))
    return 130 if getattr(outcomes[-1][2], "interrupted", False) else 0


def _run_sweep(args: argparse.Namespace) -> int:
    import shlex

    from tat_ext.train import TrainError
    from tat_ext.train.config import from_args
    from tat_ext.train.sweep import SweepSettings, WorkerDied, run_sweep
    from tat_ext.train.sweep_report import aggregate, format_summary

    settings = SweepSettings(base=from_args(args), depths=tuple(args.depths), methods=tuple(args.methods),
                             seeds=args.seeds, lrs=tuple(args.lrs), eta=args.sweep_eta, threads=args.threads)
    command = "tat-ext " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        result = run_sweep(settings, args.out, workers=args.workers, meta={"command": command})
    except TrainError as error:
        return _train_error("sweep", error)
    except WorkerDied as error:  # the finished runs are saved
        return _train_error("sweep", f"{error}; finished runs are in {args.out}, rerun to continue", status=1)
    except KeyboardInterrupt:  # before the first run
        print("tat-ext sweep: interrupted", file=sys.stderr)
        return 130
    print(format_summary(settings, aggregate(settings, result.records)))
    print(f"\n{len(result.records)} runs finished; {args.out}/sweep.md, sweep.png, sweep.json")
    if result.interrupted:
        print("tat-ext sweep: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    if result.errors:
        print(f"tat-ext sweep: {result.errors} runs failed with an error (see {args.out}/sweep.json); run the "
              "same command again to retry them", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tat-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (2 for bad input, with the offending argument named on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded with tool results
        return args.handler(args)
    except SystemExit as exit_:  # argparse's way out: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
