"""A vanilla multilayer perceptron for TAT: ``depth`` linear layers each followed by the
activation, then a linear classifier; inputs are flattened and per-location normalized (as one
location, with a homogeneous coordinate appended)."""
from __future__ import annotations

import torch
from torch import nn

from tat_ext import _validate
from tat_ext.models.layers import ActivationChoice, PerLocationNorm, init_vanilla_

__all__ = ["VanillaMLP", "vanilla_mlp"]


class VanillaMLP(nn.Module):
    """See :func:`vanilla_mlp`. Attributes: ``activation`` (the resolved ActivationChoice), ``depth``."""

    def __init__(self, depth: int, width: int, num_classes: int, *, in_features: int,
                 activation: str = "trelu", eta: float = 0.9, fused: bool = True) -> None:
        super().__init__()
        for name, value in (("depth", depth), ("width", width), ("num_classes", num_classes),
                            ("in_features", in_features)):
            _validate.integer(name, value, ge=1)
        self.depth = int(depth)
        self.activation = ActivationChoice.resolve(activation, self.subnet_max_func, eta,
                                                   chain_depth=self.depth, fused=fused)
        self.normalize = PerLocationNorm(channel_dim=-1)
        sizes = [in_features + 1] + [width] * depth
        self.layers = nn.Sequential(*(self.activation.linear(a, b) for a, b in zip(sizes, sizes[1:])))
        self.head = nn.Linear(width, num_classes)
        init_vanilla_(self, self.activation)

    def subnet_max_func(self, x: float, r_fn) -> float:
        """A plain chain: one ``r_fn`` per hidden layer (the reference library's convention)."""
        for _ in range(self.depth):
            x = r_fn(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.normalize(torch.flatten(x, 1))))


def vanilla_mlp(depth: int, width: int, num_classes: int, *, in_features: int = 64,
                activation: str = "trelu", eta: float = 0.9, fused: bool = True) -> VanillaMLP:
    """A vanilla MLP with ``depth`` nonlinear (hidden) layers of ``width`` units.

    Args:
        depth: hidden layers, each linear + activation (the net has depth + 1 linear layers).
        width: hidden units per layer.
        num_classes: classifier outputs.
        in_features: inputs per example after flattening (64 for the 8x8 digits).
        activation, eta, fused: as for :func:`tat_ext.models.vanilla_resnet`.

    Raises:
        ValueError: an out-of-range argument (named), an unknown activation, or an ``eta`` the
            depth cannot reach (the message names the minimum depth).
    """
    return VanillaMLP(depth, width, num_classes, in_features=in_features, activation=activation, eta=eta,
                      fused=fused)
