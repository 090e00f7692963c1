"""Training: ``tat-ext train`` and its in-process API.

    from tat_ext.train import TrainConfig, train
    result = train(TrainConfig(depth=101, activation="relu", epochs=10))   # out=None: no files
    result.test_acc, result.history

See :mod:`tat_ext.train.loop` (the run), :mod:`tat_ext.train.config` (settings and flags),
:mod:`tat_ext.train.checkpoint` (run directory and checkpoint format), :mod:`tat_ext.train.distributed`
(torchrun), :mod:`tat_ext.train.compare` (TAT vs EOC ReLU side by side) and
:mod:`tat_ext.train.sweep` (the depth sweep: TAT vs EOC ReLU vs ResNet+BN over depths, seeds and
learning rates; its grid in :mod:`tat_ext.train.sweep_grid`, its tables and figure in
:mod:`tat_ext.train.sweep_report`).
"""
from tat_ext.train.config import Diverged, TrainConfig, TrainError
from tat_ext.train.loop import TrainResult, train

__all__ = ["Diverged", "TrainConfig", "TrainError", "TrainResult", "train"]
