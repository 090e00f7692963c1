"""The ``tat-ext`` command line (also ``python -m tat_ext``): it only dispatches to the packages
that implement each subcommand.

Subcommands:
    solve   activation parameters for a plain chain: the TReLU slope (default), or TAT/DKS for
            any registered activation, with the kernel-map invariants they reach (tools/solve.py).
    verify  the fused kernels against the reference on every device (the post-install check).
    bench   eager PyTorch vs torch.compile vs tat_ext: activation sizes, training steps, fixed cost.
    profile torch.profiler traces and per-kernel tables of training steps, unfused vs fused.
    train   train a model (tat_ext.train); also under torchrun.
    compare the main job: one deep vanilla net trained with TAT and with EOC ReLU, side by side.
    sweep   the depth sweep: TAT vs EOC ReLU vs ResNet+BN over depths, seeds and learning rates.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from tat_ext.errors import RunError, UserError

__all__ = ["build_parser", "main"]

# Subcommands implemented in tat_ext/tools/<name>.py (add_arguments + main; the module's docstring
# is the --help description).
_TOOLS = {
    "solve": "activation parameters for a plain chain of nonlinear layers",
    "verify": "check the fused kernels against the reference on every device (post-install check)",
    "bench": "time eager PyTorch, torch.compile and tat_ext: activation sizes and a training step",
    "profile": "torch.profiler traces and per-kernel tables of training steps, unfused vs fused",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``tat-ext`` parser; each subcommand stores its handler in ``args.handler``."""
    from tat_ext.train import commands as train_commands

    parser = argparse.ArgumentParser(prog="tat-ext", description="Tailored Activation Transformation tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in _TOOLS.items():
        _add_tool(commands, name, summary)
    train_commands.add_train(commands)
    train_commands.add_compare(commands)
    train_commands.add_sweep(commands)
    return parser


def _add_tool(commands: argparse._SubParsersAction, name: str, summary: str) -> None:
    module = importlib.import_module(f"tat_ext.tools.{name}")
    sub = commands.add_parser(name, help=summary, description=module.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub)
    sub.set_defaults(handler=module.main, parser=sub)


def _report(command: str, text: str) -> None:
    """One line on stderr, from one process only under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(f"tat-ext {command}: {text}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tat-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status: 2 for a
    user mistake (one line on stderr naming the flag), 1 for a run that could not finish (one
    line: what happened), 130 when interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded with tool results
        return args.handler(args)
    except SystemExit as exit_:  # argparse's way out: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else 1
    except UserError as error:
        _report(args.command, f"error: {error.one_line()}")
        return 2
    except RunError as error:
        _report(args.command, f"error: {' '.join(str(error).split())}")
        return 1
    except KeyboardInterrupt:  # during setup, or a second Ctrl-C: nothing (more) to save
        _report(args.command, "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
