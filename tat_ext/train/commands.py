"""The training subcommands of `tat-ext`: `train`, `compare` and `sweep` (argument parsing, and
the exit statuses of a run: 0, 1 when it diverged, a file could not be written or a worker failed
(:class:`tat_ext.errors.RunError`), 2 for a user mistake (:class:`tat_ext.errors.UserError`; both
are reported by :func:`tat_ext.cli.main`), 130 when interrupted)."""
from __future__ import annotations

import argparse
import math
import sys

from tat_ext.utils.parsing import comma_list

__all__ = ["add_train", "add_compare", "add_sweep"]


def add_train(commands: argparse._SubParsersAction) -> None:
    """The `train` subcommand."""
    from tat_ext.train.config import add_arguments

    train = commands.add_parser(
        "train", help="train a model (progress, metrics, plots, checkpoints, --resume; torchrun-aware)",
        description="Train a model on the embedded digits, CIFAR-10 or synthetic data. Under "
                    "`torchrun --nproc_per_node=N -m tat_ext train ...` it trains with DistributedDataParallel.")
    add_arguments(train)
    train.set_defaults(handler=_run_train, parser=train)


_lr_list = comma_list(float, lambda v: math.isfinite(v) and v > 0, "learning rates > 0")
_depth_list = comma_list(int, lambda v: v >= 1, "numbers of layers >= 1")
_name_list = comma_list(str, bool, "names")


def add_compare(commands: argparse._SubParsersAction) -> None:
    """The `compare` subcommand (the main job)."""
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


def add_sweep(commands: argparse._SubParsersAction) -> None:
    """The `sweep` subcommand (the depth-sweep experiment)."""
    from tat_ext.train import sweep_grid as sweep_module
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


def _run_train(args: argparse.Namespace) -> int:
    from tat_ext.train.config import from_args
    from tat_ext.train.loop import train

    result = train(from_args(args))
    return 130 if result.interrupted else 0


def _run_compare(args: argparse.Namespace) -> int:
    from tat_ext.train.compare import compare, format_table
    from tat_ext.train.config import from_args

    config = from_args(args)
    outcomes = compare(config, lrs=args.lrs)
    print("\n" + format_table(config, outcomes))
    return 130 if getattr(outcomes[-1][2], "interrupted", False) else 0


def _run_sweep(args: argparse.Namespace) -> int:
    import shlex

    from tat_ext.train.config import from_args
    from tat_ext.train.sweep import WorkerDied, run_sweep
    from tat_ext.train.sweep_grid import SweepSettings
    from tat_ext.train.sweep_report import aggregate, format_summary

    settings = SweepSettings(base=from_args(args), depths=tuple(args.depths), methods=tuple(args.methods),
                             seeds=args.seeds, lrs=tuple(args.lrs), eta=args.sweep_eta, threads=args.threads)
    command = "tat-ext " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        result = run_sweep(settings, args.out, workers=args.workers, meta={"command": command})
    except WorkerDied as error:  # the finished runs are saved
        raise WorkerDied(f"{error}; finished runs are in {args.out}, rerun to continue") from None
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
