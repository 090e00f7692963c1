"""tat_ext.optim: K-FAC, the optimizer of the TAT paper's recipe (docs/kfac.md).

- :mod:`~tat_ext.optim.capture`: which layers are preconditioned; hooks that read each layer's
  input and the gradient at its pre-activation.
- :mod:`~tat_ext.optim.factors`: the Kronecker factors' moving averages, damping and inverses.
- :mod:`~tat_ext.optim.sampling`: labels of the Monte-Carlo Fisher, keyed to (seed, step, example).
- :mod:`~tat_ext.optim.kfac`: :class:`KFAC`, the ``torch.optim.Optimizer``.
- :mod:`~tat_ext.optim.step`: :func:`classification_step`, one step with any optimizer.
"""
from tat_ext.optim.factors import CurvatureError
from tat_ext.optim.kfac import FISHERS, KFAC
from tat_ext.optim.step import classification_step

__all__ = ["CurvatureError", "FISHERS", "KFAC", "classification_step"]
