"""The models ``tat-ext train`` (and the sweep) can build, by name.

A :class:`ModelSpec` says how to build a model from a :class:`ModelRequest` and which settings
apply to it; the training config checks settings against it, the trainer builds from it, and the
sweep picks its methods' models from it. Adding a model (or a user's builder) is one
:func:`register_model` call::

    def build(request: ModelRequest) -> nn.Module:
        return MyNet(request.depth, request.num_classes, width=request.width)

    register_model(ModelSpec("mynet", build, defaults={"width": 32}, takes_eta=False,
                             activations=("relu",), summary="my network"))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import nn

from tat_ext.errors import UserError
from tat_ext.models.mlp import vanilla_mlp
from tat_ext.models.resnet import resnet
from tat_ext.models.vanilla_resnet import vanilla_resnet

__all__ = ["ModelRequest", "ModelSpec", "get_model_spec", "model_names", "register_model"]


@dataclass(frozen=True)
class ModelRequest:
    """What the trainer asks a builder for: the run's model settings and the data's shape.

    ``eta`` is None when the activation has none (only TReLU does); ``blocks`` is None for the
    standard plan of ``depth``; ``small_input`` is True for images of at most 64x64 pixels.
    """

    depth: int
    width: int
    activation: str
    eta: Optional[float]
    shortcut_weight: float
    blocks: Optional[Tuple[int, ...]]
    num_classes: int
    in_channels: int
    image_size: int
    small_input: bool


@dataclass(frozen=True)
class ModelSpec:
    """A buildable model.

    Attributes:
        name: its ``--model`` name.
        builder: ``builder(request) -> nn.Module``; raises ValueError (ideally a
            :class:`tat_ext.errors.UserError` naming the argument) for settings it cannot build.
        defaults: defaults of the training settings for this model (``{"width": 8}``).
        takes_eta: whether TAT's η applies (with ``--activation trelu``).
        activations: the activations it accepts (None: every vanilla-model choice,
            :func:`tat_ext.models.activation_choices`); the first is the default.
        takes_blocks: whether ``--blocks`` (a custom stage plan) applies.
        takes_shortcut_weight: whether ``--shortcut-weight`` applies.
        batch_norm: whether it has normalization layers (the sweep schedules those runs first:
            they are the slowest at a given depth).
        summary: one line for ``--help``.
    """

    name: str
    builder: Callable[[ModelRequest], nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    takes_eta: bool = True
    activations: Optional[Tuple[str, ...]] = None
    takes_blocks: bool = False
    takes_shortcut_weight: bool = False
    batch_norm: bool = False
    summary: str = ""

    @property
    def default_activation(self) -> str:
        return "trelu" if self.activations is None else self.activations[0]

    def uses_eta(self, activation: Optional[str]) -> bool:
        """Whether η applies with ``activation`` (None: the default one)."""
        return self.takes_eta and (activation or self.default_activation) == "trelu"


_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Make ``spec`` buildable as ``--model spec.name``; returns it.

    Raises:
        ValueError: the name is taken (pass ``replace=True`` to replace it) or not a valid name.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    if not spec.name or not isinstance(spec.name, str) or spec.name.startswith("-"):
        raise ValueError(f"spec.name must be a non-empty name, got {spec.name!r}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"a model named {spec.name!r} is already registered (pass replace=True)")
    _REGISTRY[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``.

    Raises:
        ValueError: no such model (the message lists the registered ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError("model", f"model must be one of {', '.join(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def model_names() -> Tuple[str, ...]:
    """The registered model names, in registration order."""
    return tuple(_REGISTRY)


def _image(request: ModelRequest) -> Dict[str, Any]:
    return {"in_channels": request.in_channels, "small_input": request.small_input,
            "input_size": request.image_size if request.small_input else None}


def _plan(request: ModelRequest) -> Dict[str, Any]:
    return {} if request.blocks is None else {"blocks": request.blocks, "bottleneck": True}


def _eta(request: ModelRequest) -> Dict[str, Any]:
    return {} if request.eta is None else {"eta": request.eta}


def _build_vanilla_resnet(request: ModelRequest) -> nn.Module:
    return vanilla_resnet(request.depth, request.num_classes, width=request.width, activation=request.activation,
                          shortcut_weight=request.shortcut_weight, **_eta(request), **_image(request),
                          **_plan(request))


def _build_resnet(request: ModelRequest) -> nn.Module:
    return resnet(request.depth, request.num_classes, width=request.width, **_image(request), **_plan(request))


def _build_vanilla_mlp(request: ModelRequest) -> nn.Module:
    return vanilla_mlp(request.depth, request.width, request.num_classes,
                       in_features=request.in_channels * request.image_size ** 2, activation=request.activation,
                       **_eta(request))


# Default widths train the embedded digits (measured; README "Choosing the training settings").
register_model(ModelSpec("vanilla_resnet", _build_vanilla_resnet, {"width": 8}, takes_blocks=True,
                         takes_shortcut_weight=True, summary="vanilla ResNet-V2 shape for TAT"))
register_model(ModelSpec("resnet", _build_resnet, {"width": 8}, takes_eta=False, activations=("relu",),
                         takes_blocks=True, batch_norm=True, summary="ResNet-V2 with BatchNorm (baseline)"))
register_model(ModelSpec("vanilla_mlp", _build_vanilla_mlp, {"width": 128}, summary="vanilla MLP for TAT"))
