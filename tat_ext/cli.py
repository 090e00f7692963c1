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
import sys
from typing import Optional, Sequence

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
