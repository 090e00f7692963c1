"""Figures without a display: matplotlib's Agg backend, PNG files written atomically."""
from __future__ import annotations

import io
from typing import Any

from tat_ext.utils.files import atomic_write

__all__ = ["figure", "pyplot", "save_png"]


def figure(**kwargs: Any) -> Any:
    """A matplotlib Figure on its own Agg canvas (``kwargs`` go to Figure): no GUI backend, and
    pyplot's global state is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only: works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str, **savefig_kwargs: Any) -> str:
    """Write ``fig`` to ``path`` as a PNG, atomically; returns ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return path
