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

from tat_ext.errors import UserError
from tat_ext.models.layers import activation_choices

__all__ = ["TRAIN_ACTIVATIONS", "BuilderRef", "build_for_request", "build_model", "check_resume", "check_unchanged",
           "describe", "is_builder_ref", "load_builder", "source_hash", "tailor_arguments", "tailored_user_model"]


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


def load_builder(reference: str) -> Tuple[Callable[..., nn.Module], BuilderRef]:
    """The callable ``reference`` names, and its :class:`BuilderRef`.

    Raises:
        UserError (a ValueError naming ``model``): a file that does not exist, a module that
            cannot be imported, a missing or non-callable attribute.
    """
    location, _, name = reference.rpartition(":")
    if not location or not name.isidentifier():
        raise UserError("model", f"--model {reference!r}: expected path/to/file.py:builder or "
                                           "package.module:builder")
    if location.endswith(".py") or os.sep in location or "/" in location:
        path = os.path.abspath(location)
        if not os.path.isfile(path):
            raise UserError("model", f"--model: no such file {location!r}")
        module_name = f"tat_ext_user_model_{source_hash(path)[:16]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise UserError("model", f"--model: running {location!r} failed: "
                                               f"{type(error).__name__}: {error}") from None
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:
            raise UserError("model", f"--model: cannot import {location!r}: "
                                               f"{type(error).__name__}: {error}") from None
        path = getattr(module, "__file__", None)
        if path is None:
            raise UserError("model", f"--model: module {location!r} has no source file to record")
    builder = getattr(module, name, None)
    if not callable(builder):
        raise UserError("model", f"--model: {location!r} has no callable {name!r}")
    return builder, BuilderRef(reference, os.path.abspath(path), source_hash(path))


def build_model(builder: Callable[..., nn.Module], offered: Mapping[str, Any]) -> nn.Module:
    """Call ``builder`` with the ``offered`` keyword arguments its signature accepts.

    Raises:
        UserError: the builder raised, or did not return an nn.Module.
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
        raise UserError("model", f"--model: the builder raised {type(error).__name__}: {error} "
                                           f"(called with {kwargs})") from None
    if not isinstance(model, nn.Module):
        raise UserError("model", f"--model: the builder returned {type(model).__name__}, "
                                           "not an nn.Module")
    return model


# The ``tat-ext train --activation`` names a user model takes: TReLU (the model's ReLUs, tailored)
# and the smooth TAT/DKS choices; ``relu`` (the untransformed baseline) is for the zoo models.
TRAIN_ACTIVATIONS = ("trelu",) + tuple(n for n in activation_choices() if n.startswith(("tat-", "dks-")))


def tailor_arguments(activation: Optional[str]) -> Tuple[str, Optional[str]]:
    """(method, activation) of ``tailor`` for a ``tat-ext train --activation`` name: ``trelu``
    (default; the model's ReLUs become TReLU), ``tat-<name>`` or ``dks-<name>``.

    Raises:
        UserError naming ``activation`` (``relu``, the untransformed baseline, applies to the zoo
            models only).
    """
    name = activation or "trelu"
    if name not in TRAIN_ACTIVATIONS:
        raise UserError("activation", f"--activation {name!r} cannot tailor a user model: use trelu, "
                                      "tat-<name> or dks-<name>")
    if name == "trelu":
        return "TAT", None
    method, _, base = name.partition("-")
    return method.upper(), base


def tailored_user_model(reference: str, offered: Mapping[str, Any], example: torch.Tensor, *,
                        eta: Optional[float], activation: Optional[str],
                        shortcut_weight: float = 0.0) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the user's model from ``reference`` with the ``offered`` keyword arguments, tailor it
    (``shortcut_weight`` > 0 rescales plain sums), and say what it resolved to (for config.json:
    the builder's reference, source file and SHA-256, the derived structure and the changes).

    Raises:
        UserError: a bad reference or builder (argument ``model``), a bad ``activation`` or
            ``eta``, or a construct TAT cannot handle (``model``).
    """
    from tat_ext.auto.tailor import tailor

    builder, ref = load_builder(reference)
    model = build_model(builder, offered)
    method, name = tailor_arguments(activation)
    try:
        tailored = tailor(model, example, eta=0.9 if eta is None else eta, method=method, activation=name,
                          rescale_shortcuts=shortcut_weight or None)
    except ValueError as error:
        argument = getattr(error, "argument", None)
        raise UserError(argument if argument in ("eta", "activation") else "model", str(error)) from None
    resolved = {"builder": ref.to_dict(), "builder_kwargs": {k: v for k, v in offered.items()},
                "structure": tailored.tat.to_dict(), "table": tailored.tat.structure.table().splitlines()}
    return tailored, resolved


def check_unchanged(saved: Mapping[str, Any]) -> None:
    """For ``--resume``: the builder's source file must be the one the run started with.

    Raises:
        UserError naming ``model``: the file is gone or its SHA-256 differs.
    """
    source, sha = saved["source"], saved["sha256"]
    if not os.path.isfile(source):
        raise UserError("model", f"--resume: the model's source {source} no longer exists")
    now = source_hash(source)
    if now != sha:
        raise UserError("model", f"--resume: {source} changed since the run started (SHA-256 {sha[:12]}… "
                                 f"then, {now[:12]}… now); restore it, or start a new run with another --out")


def build_for_request(reference: str, request: Any) -> nn.Module:
    """The model registry's builder for a user model: ``request`` is a
    :class:`tat_ext.models.registry.ModelRequest`; its ``num_classes`` and ``in_channels``, and
    ``depth``/``width``/``blocks`` when set, are offered to the builder; the example input is a
    batch of two zero images of the data's shape."""
    offered = {"num_classes": request.num_classes, "in_channels": request.in_channels}
    offered.update({k: getattr(request, k) for k in ("depth", "width", "blocks") if getattr(request, k) is not None})
    example = torch.zeros(2, request.in_channels, request.image_size, request.image_size)
    model, record = tailored_user_model(reference, offered, example, eta=request.eta,
                                        activation=request.activation, shortcut_weight=request.shortcut_weight)
    model.tat_builder = record  # read by describe()
    return model


def describe(model: nn.Module) -> Dict[str, Any]:
    """What a user model built by :func:`build_for_request` resolved to (config.json)."""
    info = model.tat
    if info.eta is not None:  # TReLU
        constants = info.activations["leaky_relu"]
        activation = {"name": "trelu", "slope": constants["slope"], "scale": constants["scale"], "eta": info.eta}
    else:
        activation = {"name": f"{info.method.lower()}-{','.join(info.activations)}", **{
            f"{name}.{key}": value for name, values in info.activations.items() for key, value in values.items()}}
    return {**model.tat_builder, "activation": activation}


def check_resume(saved_resolved: Mapping[str, Any]) -> None:
    """The model registry's ``--resume`` check: the builder's file is unchanged."""
    saved = saved_resolved.get("builder") if isinstance(saved_resolved, Mapping) else None
    if not isinstance(saved, Mapping) or "source" not in saved or "sha256" not in saved:
        raise UserError("model", "--resume: the saved run does not record the model's source file")
    check_unchanged(saved)
