"""What :func:`tat_ext.auto.tailor` did: the ``.tat`` attribute of a tailored model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from tat_ext.auto.structure import Structure

__all__ = ["TailorInfo"]


@dataclass(frozen=True)
class TailorInfo:
    """The record a tailored model carries as ``model.tat``.

    Attributes:
        structure: the derived :class:`~tat_ext.auto.Structure` of the tailored graph.
        method: ``"TAT"`` or ``"DKS"``.
        eta: TReLU's target C_f(0) (None for smooth activations).
        activations: per activation name, the solved constants (``slope``/``scale``/shifts for
            the Leaky ReLU family, the transformed activation's parameters otherwise).
        changes: one line per change made to the model, in order.
        warnings: the structure's warnings (pooling in the body, dropout, ...).
    """

    structure: Structure
    method: str
    eta: Optional[float]
    activations: Dict[str, Dict[str, float]]
    changes: Tuple[str, ...]
    warnings: Tuple[str, ...]

    def to_dict(self) -> dict:
        """A JSON-ready summary (for a run's config.json)."""
        return {"method": self.method, "eta": self.eta, "depth": self.structure.depth,
                "is_chain": self.structure.is_chain, "activation_nodes": list(self.structure.activations),
                "activations": self.activations, "changes": list(self.changes), "warnings": list(self.warnings)}

    def report(self) -> str:
        """The structure's table followed by the solved constants, the changes and the warnings."""
        lines = [self.structure.table(), ""]
        for name, params in self.activations.items():
            values = ", ".join(f"{key}={value:.10g}" for key, value in params.items())
            lines.append(f"{self.method} {name}: {values}" + (f" (eta={self.eta:g})" if self.eta is not None else ""))
        lines += [f"changed: {change}" for change in self.changes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()
