"""K-FAC's Kronecker factors: bias-corrected moving averages, π-split damping, damped inverses.

With the per-step statistics A_t = (1/(N·T)) Σ ā āᵀ and G_t = (1/(N·T)) Σ g gᵀ, each factor is
the bias-corrected moving average S/w with S ← decay·S + X_t and w ← decay·w + 1 (decay 0: the
current batch only). The curvature block of a layer with T output locations is T·(A ⊗ G); the
damped factors are A + π·sqrt(λ/T)·I and G + (sqrt(λ/T)/π)·I with π = sqrt((tr A/dim A)/(tr G/dim G)),
and the preconditioned gradient is (1/T)·G_d⁻¹ ∇W̄ A_d⁻¹ (docs/kfac.md). A factor too large to
form (e.g. the flatten head of a small-input net: dim A = 16,385) is kept as its diagonal, a 1-D
tensor; the same formulas then hold with diag(A) in place of A.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

__all__ = ["CurvatureError", "Factors", "damped_inverses", "pi_split"]


class CurvatureError(RuntimeError):
    """A damped factor could not be inverted (non-finite or numerically indefinite curvature):
    the training is diverging; a training loop reports it as such."""


@dataclass
class Factors:
    """One layer's moving averages: the decayed sums of A_t and G_t and their common weight w."""

    a_sum: torch.Tensor
    g_sum: torch.Tensor
    weight: float = 0.0
    locations: int = 1
    a_inverse: Optional[torch.Tensor] = None
    g_inverse: Optional[torch.Tensor] = None

    @classmethod
    def zeros(cls, in_dim: int, out_dim: int, dtype: torch.dtype, device: torch.device,
              diagonal_a: bool = False, diagonal_g: bool = False) -> "Factors":
        """Zero sums; a diagonal factor is a 1-D tensor of its diagonal."""
        return cls(torch.zeros((in_dim,) if diagonal_a else (in_dim, in_dim), dtype=dtype, device=device),
                   torch.zeros((out_dim,) if diagonal_g else (out_dim, out_dim), dtype=dtype, device=device))

    def update(self, a: torch.Tensor, g: torch.Tensor, decay: float, locations: int) -> None:
        """Fold in one step's A_t, G_t."""
        self.a_sum.mul_(decay).add_(a)
        self.g_sum.mul_(decay).add_(g)
        self.weight = decay * self.weight + 1.0
        self.locations = locations

    @property
    def a(self) -> torch.Tensor:
        return self.a_sum / self.weight

    @property
    def g(self) -> torch.Tensor:
        return self.g_sum / self.weight

    def invert(self, damping: float) -> None:
        """Recompute the damped inverses from the current averages."""
        self.a_inverse, self.g_inverse = damped_inverses(self.a, self.g, damping, self.locations)

    def precondition(self, grad: torch.Tensor) -> torch.Tensor:
        """(1/T)·G_d⁻¹ ∇W̄ A_d⁻¹ for ∇W̄ = [∇W ∇b] as an [out, dim A] matrix."""
        g_inv, a_inv = self.g_inverse, self.a_inverse
        left = g_inv @ grad if g_inv.dim() == 2 else g_inv.unsqueeze(1) * grad
        return (left @ a_inv if a_inv.dim() == 2 else left * a_inv) / self.locations

    def state(self) -> Dict[str, object]:
        return {"a_sum": self.a_sum, "g_sum": self.g_sum, "weight": self.weight, "locations": self.locations,
                "a_inverse": self.a_inverse, "g_inverse": self.g_inverse}

    def load(self, state: Dict[str, object]) -> None:
        """Restore :meth:`state` (tensors moved to this layer's device, dtype kept)."""
        device = self.a_sum.device

        def tensor(key: str, like: torch.Tensor) -> Optional[torch.Tensor]:
            value = state[key]
            if value is None:
                return None
            if not isinstance(value, torch.Tensor) or value.shape != like.shape:
                raise ValueError(f"{key}: expected a tensor of shape {tuple(like.shape)}, got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
            return value.to(device=device, dtype=like.dtype)

        self.a_sum, self.g_sum = tensor("a_sum", self.a_sum), tensor("g_sum", self.g_sum)
        self.a_inverse, self.g_inverse = tensor("a_inverse", self.a_sum), tensor("g_inverse", self.g_sum)
        self.weight, self.locations = float(state["weight"]), int(state["locations"])


def pi_split(a: torch.Tensor, g: torch.Tensor) -> float:
    """π = sqrt((tr A/dim A)/(tr G/dim G)); 1 when either trace is zero or not finite (e.g. a
    layer whose output never reached the loss), which splits the damping evenly."""
    mean_a, mean_g = _trace(a) / a.shape[0], _trace(g) / g.shape[0]
    if mean_a > 0 and mean_g > 0 and math.isfinite(mean_a / mean_g):
        return math.sqrt(mean_a / mean_g)
    return 1.0


def _trace(m: torch.Tensor) -> float:
    return (m.trace() if m.dim() == 2 else m.sum()).item()


def _spd_inverse(m: torch.Tensor, shift: float) -> torch.Tensor:
    """(M + shift·I)⁻¹ for a PSD matrix M, or 1/(d + shift) for a diagonal d."""
    if m.dim() == 1:
        return 1.0 / (m + shift)
    m = m + shift * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    chol, info = torch.linalg.cholesky_ex(m)
    if info.item() != 0:
        raise CurvatureError("a damped Kronecker factor is not positive definite (non-finite or numerically "
                             "indefinite curvature)")
    return torch.cholesky_inverse(chol)


def damped_inverses(a: torch.Tensor, g: torch.Tensor, damping: float,
                    locations: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(A + π·sqrt(λ/T)·I)⁻¹ and (G + (sqrt(λ/T)/π)·I)⁻¹ (factored Tikhonov damping)."""
    pi = pi_split(a, g)
    root = math.sqrt(damping / locations)
    return _spd_inverse(a, pi * root), _spd_inverse(g, root / pi)
