"""tat_ext: Tailored Activation Transformation (TAT) for deep vanilla networks, with fused C++/CUDA
transformed Leaky ReLU kernels.

Public entry points:
    tat_ext.trelu                 the fused op (autograd-aware torch custom op)
    tat_ext.reference.trelu       its pure-PyTorch reference
    tat_ext.nn                    TReLU, TATConv2d, TATLinear modules
    tat_ext.transform, cmaps      TReLU/TAT/DKS solvers and kernel (Q/C) maps
    tat_ext.init, data            orthogonal (delta) initialization, per-location normalization
    tat_ext.diagnostics           checks of the kernel theory on a real model
"""
from tat_ext import nn, reference
from tat_ext.ops import trelu

__all__ = ["trelu", "reference", "nn"]
__version__ = "0.1.0"
