"""tat_ext: Tailored Activation Transformation (TAT) for deep vanilla networks, with fused C++/CUDA
transformed Leaky ReLU kernels.

Public entry points:
    tat_ext.trelu                 the fused op (autograd-aware torch custom op)
    tat_ext.reference.trelu       its pure-PyTorch reference
    tat_ext.nn                    TReLU, TATConv2d, TATLinear modules
    tat_ext.transform, cmaps      TReLU/TAT/DKS solvers and kernel (Q/C) maps
    tat_ext.activations           activation functions by name, the transformed activation
    tat_ext.auto                  automatic TAT for any model: derive its structure, tailor it
    tat_ext.init, data            orthogonal (delta) initialization, per-location normalization
    tat_ext.diagnostics           checks of the kernel theory (and of the initialization) on a model
    tat_ext.models, datasets      vanilla TAT ResNets/MLPs and baselines; data sources (digits, CIFAR-10/100,
                                  image folders, npz, synthetic), augmentation, the batch loader
    tat_ext.optim                 K-FAC (the paper's optimizer) for the project's layers
    tat_ext.train                 tat-ext train / compare: the training run, checkpoints, torchrun
    tat_ext.tools                 tat-ext verify / bench / profile

The math behind them: docs/math.md. The submodules in ``_LAZY_SUBMODULES`` are imported on first
attribute access (PEP 562), so ``import tat_ext`` does not pay for SciPy and the solvers.
"""
import importlib
from typing import List

from tat_ext import nn, reference
from tat_ext.ops import trelu

__all__ = ["trelu", "reference", "nn"]
__version__ = "0.1.0"

# Public submodules reachable as ``tat_ext.<name>`` without an explicit import (as torch.nn.init
# is). Add new public submodules or subpackages here.
_LAZY_SUBMODULES = ("activations", "auto", "cmaps", "data", "datasets", "diagnostics", "init", "models",
                    "optim", "tools", "train", "transform")


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds it in this namespace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
