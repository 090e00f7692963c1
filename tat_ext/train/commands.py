"""The training subcommands of `tat-ext`: `train` and `compare` (argument parsing, and the exit
statuses of a run: 0, 1 when it diverged, 2 for a user mistake, 130 when interrupted)."""
from __future__ import annotations

import argparse
import math
import sys
from typing import List

__all__ = ["add_train", "add_compare"]


def add_train(commands: argparse._SubParsersAction) -> None:
    """The `train` subcommand."""
    from tat_ext.train.config import add_arguments

    train = commands.add_parser(
        "train", help="train a model (progress, metrics, plots, checkpoints, --resume; torchrun-aware)",
        description="Train a model on the embedded digits, CIFAR-10 or synthetic data. Under "
                    "`torchrun --nproc_per_node=N -m tat_ext train ...` it trains with DistributedDataParallel.")
    add_arguments(train)
    train.set_defaults(handler=_run_train, parser=train)


def _lr_list(text: str) -> List[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates > 0, got {text!r}")
    return values


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
