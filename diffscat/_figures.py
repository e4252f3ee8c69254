"""Figure plumbing shared by every plot module: matplotlib on the Agg backend, atomic writes, the colours
and labels every figure uses.

Matplotlib is imported lazily, so importing diffscat never needs a display. `plot.py` (patterns) and
`_plot_shape.py` (shape previews) both build on this module and not on each other; `fitting`'s reports too.

Colours (the same in every figure): masked pixels (mask False, and pixels that are not on the detector) are
`MASKED_COLOUR`, a neutral grey (the colour map's "bad" colour); on log scales, zero counts and values below the
shown range are `UNDER_COLOUR`, black (the colour map's "under" colour, shown as the colour bar's lower
triangle).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

__all__ = [
    "pyplot",
    "save_figure",
    "MASKED_COLOUR",
    "UNDER_COLOUR",
    "colour_map",
    "unit_label",
    "shape_summary",
    "add_mask_legend",
]

MASKED_COLOUR = "#9e9e9e"  # neutral grey: masked pixels, everywhere
UNDER_COLOUR = "#000000"  # black: zero counts / below the colour range on log scales


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


def colour_map(name: str = "magma", *, under: str | None = UNDER_COLOUR):
    """A copy of the named matplotlib colour map with bad (NaN: masked) pixels in `MASKED_COLOUR` and values
    below the norm's range in `under` (None: the map's lowest colour)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return cmap.with_extremes(bad=MASKED_COLOUR, under=under if under is not None else cmap(0.0))


def add_mask_legend(ax, *, masked: bool = True, under: bool = False, loc: str = "upper right") -> None:
    """A small legend on `ax` naming the masked colour and (`under`, log scales) the zero / below-range one."""
    from matplotlib.patches import Patch

    handles = []
    if masked:
        handles.append(Patch(facecolor=MASKED_COLOUR, edgecolor="0.3", label="masked"))
    if under:
        handles.append(Patch(facecolor=UNDER_COLOUR, edgecolor="0.3", label="0 / below scale"))
    if not handles:
        return
    ax.legend(handles=handles, loc=loc, fontsize=7, framealpha=0.8, handlelength=1.0, borderpad=0.3)


def unit_label(unit: str | None) -> str:
    """Axis-label form of a unit: "1/nm" -> "nm$^{-1}$" (mathtext), None -> ""; others unchanged."""
    if unit is None:
        return ""
    if unit.startswith("1/"):
        return f"{unit[2:]}$^{{-1}}$"
    return unit


_GREEK = {"delta": r"$\delta$", "beta": r"$\beta$"}


def shape_summary(shape, length_unit: str | None = None, *, max_items: int = 6) -> str:
    """One-line description of a shape for figure titles: class name and its scalar / short-vector
    parameters (rotation and a zero centre left out), e.g. "Sphere: radius = 7, δ = 0, β = 0.001 (lengths
    in nm)"."""
    parts = []
    for f in dataclasses.fields(shape):
        if f.metadata.get("static", False) or f.name in ("rotation", "extent_hint"):
            continue
        v = getattr(shape, f.name, None)
        if not (hasattr(v, "shape") and hasattr(v, "dtype")):
            continue
        a = np.asarray(v)
        if a.size > 4 or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            continue
        if f.name == "centre" and not np.any(a):
            continue
        txt = (
            format(float(a), ".4g")
            if a.size == 1
            else "(" + ", ".join(format(x, ".4g") for x in a.ravel()) + ")"
        )
        parts.append(f"{_GREEK.get(f.name, f.name)} = {txt}")
    head = type(shape).__name__
    if not parts:
        return head
    more = ", ..." if len(parts) > max_items else ""
    unit = f" (lengths in {length_unit})" if length_unit else ""
    return f"{head}: " + ", ".join(parts[:max_items]) + more + unit


_plt = pyplot  # the short name used inside diffscat
