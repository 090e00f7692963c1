"""One training step of a classifier with any optimizer, K-FAC's extra backward included."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.optim.kfac import KFAC

__all__ = ["classification_step"]


def classification_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
    """Forward, mean cross-entropy, (for :class:`KFAC`) the MC Fisher's backward, backward,
    ``optimizer.step()`` and ``zero_grad``; returns the detached loss."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if isinstance(optimizer, KFAC):
        optimizer.curvature_backward(logits)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
