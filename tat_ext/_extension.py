"""Loads the compiled extension (which registers torch.ops.tat_ext.*) if it was built."""
from __future__ import annotations

import warnings

try:
    from tat_ext import _C as C  # importing registers the operators

    AVAILABLE = True
    WITH_CUDA = bool(C.with_cuda)
    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    C = None
    AVAILABLE = False
    WITH_CUDA = False
    LOAD_ERROR = str(exc)

_warned: set[str] = set()



def warn_fallback(reason: str) -> None:
    """Warns once per distinct reason that the pure-PyTorch reference is used instead."""
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"tat_ext: {reason}; using the pure-PyTorch reference (correct, but not fused)",
            RuntimeWarning,
            stacklevel=3,
        )
