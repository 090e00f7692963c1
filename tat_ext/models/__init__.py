"""Ready networks that apply TAT correctly for their own architecture.

    vanilla_resnet(depth, num_classes, *, width=64, activation="trelu", eta=0.9, shortcut_weight=0.0,
                   in_channels=3, small_input=False, input_size=None, blocks=None, bottleneck=None)
    resnet(depth, num_classes, *, width=64, in_channels=3, small_input=False, input_size=None, ...)
    vanilla_mlp(depth, width, num_classes, *, in_features=64, activation="trelu", eta=0.9)

Every vanilla model normalizes its inputs per location, is delta-orthogonally initialized, and
exposes ``subnet_max_func`` (its architecture in C-value space) and ``activation`` (the solved
activation: ``model.activation.slope`` is ``solve_trelu(subnet_max_func=model.subnet_max_func,
eta=eta).slope`` for ``"trelu"``).

The models ``tat-ext train`` builds by name are in :mod:`tat_ext.models.registry`
(:func:`register_model` adds one).
"""
from tat_ext.models.common import STANDARD_DEPTHS, StagePlan
from tat_ext.models.layers import ActivationChoice, activation_choices
from tat_ext.models.mlp import VanillaMLP, vanilla_mlp
from tat_ext.models.registry import ModelRequest, ModelSpec, get_model_spec, model_names, register_model
from tat_ext.models.resnet import ResNet, resnet
from tat_ext.models.vanilla_resnet import VanillaResNet, vanilla_resnet

__all__ = [
    "STANDARD_DEPTHS",
    "ActivationChoice",
    "ModelRequest",
    "ModelSpec",
    "ResNet",
    "StagePlan",
    "VanillaMLP",
    "VanillaResNet",
    "activation_choices",
    "get_model_spec",
    "model_names",
    "register_model",
    "resnet",
    "vanilla_mlp",
    "vanilla_resnet",
]
