"""Figure plumbing shared by every plot module: matplotlib on the Agg backend, atomic writes.

Matplotlib is imported lazily, so importing diffscat never needs a display. `plot.py` (patterns) and
`_plot_shape.py` (shape previews) both build on this module and not on each other.
"""

from __future__ import annotations

import os

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> str:
    """Write a matplotlib figure atomically (temporary file + rename); creates the folder. Returns the path."""
    path = os.fspath(path)
    from ._files import atomic_output

    with atomic_output(path, suffix=os.path.splitext(path)[1] or ".png") as tmp:
        fig.savefig(tmp, dpi=fig.dpi, bbox_inches="tight")
    return path


_plt = pyplot  # the short name used inside diffscat
