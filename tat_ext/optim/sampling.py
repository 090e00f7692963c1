"""Labels for the Monte-Carlo Fisher, drawn from the model's predictive distribution.

Each example's label depends only on (seed, step, example index), through a counter-based hash
(SplitMix64), not on a generator's state: N processes that hold different shares of a global batch
draw exactly the labels one process would, and a resumed run draws the same labels again.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["sample_labels", "uniforms"]

_MASK = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniforms(seed: int, step: int, index: torch.Tensor) -> torch.Tensor:
    """One float64 in [0, 1) per entry of ``index``, a pure function of (seed, step, index)."""
    key = _splitmix64(np.array([seed & _MASK], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(step & _MASK))
    bits = _splitmix64(key ^ index.cpu().numpy().astype(np.uint64))
    return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)


def sample_labels(logits: torch.Tensor, seed: int, step: int, index: torch.Tensor) -> torch.Tensor:
    """Class labels y_i ~ softmax(logits_i) by inverse CDF of :func:`uniforms` (float64 throughout,
    so the draw does not depend on the logits' dtype)."""
    cdf = torch.softmax(logits.detach().double(), dim=1).cumsum(dim=1)
    u = uniforms(seed, step, index).to(cdf.device).unsqueeze(1)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
