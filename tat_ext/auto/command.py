"""tat-ext tailor: build a user model, derive its kernel-map structure and print the table, the
solved activation and what tailoring changes.

    tat-ext tailor --model path/to/file.py:build --input-shape 1,3,32,32
    tat-ext tailor --model package.module:build --input-shape 1,64 --eta 0.8

The builder gets ``in_channels`` (from --input-shape), ``num_classes`` (--num-classes, default 10)
and any of ``depth``, ``width``, ``blocks`` passed on the command line, when its signature
accepts them.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

import torch

from tat_ext.activations import activation_names
from tat_ext.errors import UserError

__all__ = ["add_arguments", "main", "tailor_from_args"]

# tailor()'s arguments that are not flags of their own: the example input is --input-shape.
_ARGUMENTS = {"example_inputs": "input_shape"}


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected a batch shape like 1,3,32,32 (at least 2 positive ints), "
                                         f"got {text!r}")
    return shape


def _blocks(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block counts, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``tat-ext tailor``."""
    parser.add_argument("--model", required=True, help="path/to/file.py:build or package.module:build (a "
                                                        "callable returning an nn.Module)")
    parser.add_argument("--input-shape", required=True, type=_shape, help="example input shape, e.g. 1,3,32,32")
    parser.add_argument("--eta", type=float, default=0.9, help="TReLU's target C_f(0) (default 0.9)")
    parser.add_argument("--method", choices=("TAT", "DKS"), default="TAT")
    parser.add_argument("--activation", choices=activation_names(), default=None,
                        help="replace every activation by this one (default: keep the model's)")
    parser.add_argument("--rescale-shortcuts", type=float, default=None, metavar="W",
                        help="rewrite plain sums a + b as W·shortcut + sqrt(1 − W²)·residual")
    parser.add_argument("--no-normalize-input", dest="normalize_input", action="store_false",
                        help="do not add per-location normalization at the input")
    parser.add_argument("--num-classes", type=int, default=10, help="passed to the builder if it accepts it "
                                                                     "(default 10)")
    for flag, kind in (("--depth", int), ("--width", int), ("--blocks", _blocks)):
        parser.add_argument(flag, type=kind, default=None, help="passed to the builder if given and accepted")


def tailor_from_args(args: argparse.Namespace) -> torch.nn.Module:
    """Build and tailor the model the flags describe.

    Raises:
        UserError: naming the flag at fault (``--model`` for the model's own constructs).
    """
    from tat_ext.auto.builder import build_model, load_builder
    from tat_ext.auto.tailor import tailor

    try:
        builder, _ = load_builder(args.model)
        offered: Dict[str, Any] = {"in_channels": args.input_shape[1], "num_classes": args.num_classes}
        offered.update({k: getattr(args, k) for k in ("depth", "width", "blocks")
                        if getattr(args, k) is not None})
        model = build_model(builder, offered)
        return tailor(model, torch.zeros(args.input_shape), eta=args.eta, method=args.method,
                      activation=args.activation, rescale_shortcuts=args.rescale_shortcuts,
                      normalize_input=args.normalize_input)
    except (ValueError, TypeError) as error:
        argument = getattr(error, "argument", None)
        if argument is None or argument not in vars(args) and argument not in _ARGUMENTS:
            argument = "input_shape" if str(error).startswith("example_inputs") else "model"
        raise UserError(_ARGUMENTS.get(argument, argument), " ".join(str(error).split())) from None


def main(args: argparse.Namespace) -> int:
    """Print the tailored model's report; 0 on success."""
    tailored = tailor_from_args(args)
    print(tailored.tat.report())
    sys.stdout.flush()
    return 0
