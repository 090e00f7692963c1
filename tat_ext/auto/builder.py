"""User model builders for the command line: ``--model path/to/file.py:build`` or
``--model package.module:build``.

A builder is a callable returning an nn.Module. The keyword arguments a run offers
(``num_classes``, ``in_channels``, and ``depth``/``width``/``blocks`` when the user passed them)
are given to it when its signature accepts them (all of them if it takes ``**kwargs``).
A run records the builder's reference and the SHA-256 of its source file, so that a resumed run
can tell that the file changed.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from tat_ext._validate import ArgumentValueError

__all__ = ["BuilderRef", "build_model", "check_unchanged", "is_builder_ref", "load_builder", "source_hash",
           "tailor_arguments", "tailored_user_model"]


@dataclass(frozen=True)
class BuilderRef:
    """Where a builder lives: the reference as given, the source file and its SHA-256."""

    reference: str
    source: str
    sha256: str

    def to_dict(self) -> Dict[str, str]:
        return {"reference": self.reference, "source": self.source, "sha256": self.sha256}


def is_builder_ref(text: str) -> bool:
    """Whether ``text`` names a builder (``file.py:name`` or ``package.module:name``), not a zoo model."""
    return isinstance(text, str) and ":" in text


def source_hash(path: str) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def load_builder(reference: str, argument: str = "--model") -> Tuple[Callable[..., nn.Module], BuilderRef]:
    """The callable ``reference`` names, and its :class:`BuilderRef`.

    Raises:
        ArgumentValueError (a ValueError naming ``argument``): a file that does not exist, a module
            that cannot be imported, a missing or non-callable attribute.
    """
    location, _, name = reference.rpartition(":")
    if not location or not name.isidentifier():
        raise ArgumentValueError(argument, f"{argument} {reference!r}: expected path/to/file.py:builder or "
                                           "package.module:builder")
    if location.endswith(".py") or os.sep in location or "/" in location:
        path = os.path.abspath(location)
        if not os.path.isfile(path):
            raise ArgumentValueError(argument, f"{argument}: no such file {location!r}")
        module_name = f"tat_ext_user_model_{source_hash(path)[:16]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise ArgumentValueError(argument, f"{argument}: running {location!r} failed: "
                                               f"{type(error).__name__}: {error}") from None
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:
            raise ArgumentValueError(argument, f"{argument}: cannot import {location!r}: "
                                               f"{type(error).__name__}: {error}") from None
        path = getattr(module, "__file__", None)
        if path is None:
            raise ArgumentValueError(argument, f"{argument}: module {location!r} has no source file to record")
    builder = getattr(module, name, None)
    if not callable(builder):
        raise ArgumentValueError(argument, f"{argument}: {location!r} has no callable {name!r}")
    return builder, BuilderRef(reference, os.path.abspath(path), source_hash(path))


def build_model(builder: Callable[..., nn.Module], offered: Mapping[str, Any], argument: str = "--model") -> nn.Module:
    """Call ``builder`` with the ``offered`` keyword arguments its signature accepts.

    Raises:
        ArgumentValueError: the builder raised, or did not return an nn.Module.
    """
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        parameters = ()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    accepted = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in offered.items() if takes_any or k in accepted}
    try:
        model = builder(**kwargs)
    except Exception as error:
        raise ArgumentValueError(argument, f"{argument}: the builder raised {type(error).__name__}: {error} "
                                           f"(called with {kwargs})") from None
    if not isinstance(model, nn.Module):
        raise ArgumentValueError(argument, f"{argument}: the builder returned {type(model).__name__}, "
                                           "not an nn.Module")
    return model


# ``tat-ext train --activation`` names → tailor()'s method and activation.
_TRAIN_ACTIVATIONS = {"trelu": ("TAT", None)}


def tailor_arguments(activation: Optional[str]) -> Tuple[str, Optional[str]]:
    """(method, activation) of ``tailor`` for a ``tat-ext train --activation`` name: ``trelu``
    (default; the model's ReLUs become TReLU), ``tat-<name>`` or ``dks-<name>``.

    Raises:
        ArgumentValueError naming ``--activation`` (``relu``, the untransformed baseline, applies to
        the zoo models only).
    """
    name = activation or "trelu"
    if name in _TRAIN_ACTIVATIONS:
        return _TRAIN_ACTIVATIONS[name]
    method, _, base = name.partition("-")
    if method in ("tat", "dks") and base:
        return method.upper(), base
    raise ArgumentValueError("--activation", f"--activation {name!r} cannot tailor a user model: use trelu, "
                                             "tat-<name> or dks-<name>")


def tailored_user_model(reference: str, offered: Mapping[str, Any], example: torch.Tensor, *,
                        eta: Optional[float], activation: Optional[str],
                        shortcut_weight: float = 0.0) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the user's model from ``reference`` with the ``offered`` keyword arguments, tailor it
    (``shortcut_weight`` > 0 rescales plain sums), and say what it resolved to (for config.json:
    the builder's reference, source file and SHA-256, the derived structure and the changes).

    Raises:
        ArgumentValueError: a bad reference or builder (``--model``), a bad ``--activation`` or
            ``--eta``, or a construct TAT cannot handle (``--model``).
    """
    from tat_ext.auto.tailor import tailor

    builder, ref = load_builder(reference)
    model = build_model(builder, offered)
    method, name = tailor_arguments(activation)
    try:
        tailored = tailor(model, example, eta=0.9 if eta is None else eta, method=method, activation=name,
                          rescale_shortcuts=shortcut_weight or None)
    except ValueError as error:
        flag = {"eta": "--eta", "activation": "--activation"}.get(getattr(error, "argument", None), "--model")
        raise ArgumentValueError(flag, str(error)) from None
    resolved = {"builder": ref.to_dict(), "builder_kwargs": {k: v for k, v in offered.items()},
                "structure": tailored.tat.to_dict(), "table": tailored.tat.structure.table().splitlines()}
    return tailored, resolved


def check_unchanged(saved: Mapping[str, Any]) -> None:
    """For ``--resume``: the builder's source file must be the one the run started with.

    Raises:
        ArgumentValueError naming ``--model``: the file is gone or its SHA-256 differs.
    """
    source, sha = saved["source"], saved["sha256"]
    if not os.path.isfile(source):
        raise ArgumentValueError("--model", f"--resume: the model's source {source} no longer exists")
    now = source_hash(source)
    if now != sha:
        raise ArgumentValueError("--model", f"--resume: {source} changed since the run started (SHA-256 "
                                            f"{sha[:12]}… then, {now[:12]}… now); restore it, or start a new "
                                            "run with another --out")
