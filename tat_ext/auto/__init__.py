"""Automatic TAT for any PyTorch model: trace it, derive its kernel-map structure, tailor it.

    structure = tat_ext.auto.derive(model, example_inputs)   # subnet_max_func, depth, table()
    tailored = tat_ext.auto.tailor(model, example_inputs)    # fx.GraphModule with .tat

The rules and their derivation: docs/math.md, "Deriving the structure of any model".
"""
from tat_ext.auto.report import TailorInfo
from tat_ext.auto.rules import UnsupportedConstruct
from tat_ext.auto.structure import Structure, derive
from tat_ext.auto.tailor import tailor

__all__ = ["Structure", "TailorInfo", "UnsupportedConstruct", "derive", "tailor"]
