"""Figures: diffraction patterns (log scale) with physical axes.

Matplotlib is imported lazily with the non-interactive Agg backend, so importing diffscat never needs a display.
Colours shared by every figure (`diffscat._figures`): masked pixels grey (`MASKED_COLOUR`), zero counts and
values below the colour range black (`UNDER_COLOUR`, the colour bar's lower triangle).
"""

from __future__ import annotations

import os

import numpy as np

from ._experiment import Experiment
from ._figures import (
    MASKED_COLOUR,
    UNDER_COLOUR,
    _plt,
    add_mask_legend,
    colour_map,
    pyplot,
    save_figure,
    shape_summary,
    unit_label,
)
from ._plot_shape import plot_shape

__all__ = [
    "plot_pattern",
    "plot_shape",
    "pattern_axes",
    "pyplot",
    "save_figure",
    "shape_summary",
    "MASKED_COLOUR",
    "UNDER_COLOUR",
]

# Plane coordinates of flat detectors are shown in this unit (lengths of the config's unit converted).
PLANE_UNIT = "mm"
_PRETTY = {"q_x": "$q_x$", "q_y": "$q_y$", "theta_x": r"$\theta_x$", "theta_y": r"$\theta_y$"}


def _extent(experiment: Experiment, length_unit: str | None = None):
    """(extent, x label, y label, unit label) of the experiment's detector (`AbstractDetector.plot_axes`)."""
    return experiment.detector.plot_axes(float(experiment.wavelength), length_unit)


def pattern_axes(experiment: Experiment, length_unit: str | None = None):
    """(extent [x0, x1, y0, y1] or None, x label, y label) for showing an image-shaped pattern.

    From the detector's `plot_axes`: q in inverse `length_unit` (QGrid), plane coordinates in mm (FlatDetector,
    when `length_unit` is known), angles in degrees (AngleGrid); the labels carry the unit in brackets. Without
    `length_unit` the labels say "length" / "inverse length"."""
    extent, xl, yl, unit = experiment.detector.plot_axes(
        float(experiment.wavelength), length_unit, plane_unit=PLANE_UNIT if length_unit else None
    )
    u = unit_label(unit)
    return extent, f"{_PRETTY.get(xl, xl)} [{u}]", f"{_PRETTY.get(yl, yl)} [{u}]"


def plot_pattern(
    image,
    experiment: Experiment,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    ax=None,
    vmin_decades: float = 5.0,
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = r"d$\sigma$/d$\Omega$",
    length_unit: str | None = None,
    mask=None,
):
    """Show an image-shaped pattern on a log colour scale with physical axes and a colour bar.

    **Arguments:**
    - `image`: (ny, nx) pattern (dsigma/dOmega, photons, counts...); NaN pixels are shown as masked.
    - `experiment`: its geometry. Axes: (q_x, q_y) in inverse `length_unit` for a QGrid, detector-plane X, Y in
      mm for a FlatDetector, angles theta_x, theta_y in degrees otherwise (`pattern_axes`).
    - `path`: PNG/PDF to write (atomically) when given.
    - `title`, `label` (colour-bar label, with its unit), `ax` (draw into an existing axes).
    - `vmin_decades`: dynamic range shown below the maximum; `vmin`: the lower end of the colour range
      instead (e.g. 0.5 for counts, so that 1 count is in range and 0 counts are not); `vmax`: the upper end
      (default the largest shown value; give one `vmin`, `vmax` to panels that are compared).
    - `length_unit`: the experiment's length unit ("nm", ...) for the axes (None: generic words).
    - `mask`: (ny, nx) booleans, True = use; False pixels are grey (`MASKED_COLOUR`), as are pixels that are not
      on the detector. Zero and below-range values are black (`UNDER_COLOUR`).

    Returns the matplotlib figure.
    """
    from matplotlib.colors import LogNorm

    plt = _plt()
    img = np.array(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if tuple(img.shape) != tuple(experiment.shape):
        raise ValueError(
            f"image has shape {img.shape} but the experiment's detector has {tuple(experiment.shape)}"
        )
    bad = ~np.isfinite(img) | ~np.asarray(experiment.valid, bool)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != img.shape:
            raise ValueError(f"mask must have the image's shape {img.shape}, got {mask.shape}")
        bad |= ~mask
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.4, 4.4), dpi=120, layout="constrained")
    else:
        fig = ax.figure
    pos = img[~bad & (img > 0)]
    if vmax is None:
        vmax = pos.max() if pos.size else 1.0
    vmax = float(vmax)
    lo = vmax * 10.0 ** (-vmin_decades) if vmin is None else float(vmin)
    if not lo < vmax:
        lo = vmax / 10.0
    norm = LogNorm(vmin=lo, vmax=vmax)
    extent, xl, yl = pattern_axes(experiment, length_unit)
    shown = np.where(img > 0, img, lo * 1e-3)  # zeros: below the range -> the under colour
    shown[bad] = np.nan
    im = ax.imshow(
        shown, origin="lower", norm=norm, extent=extent, cmap=colour_map("magma"), interpolation="nearest"
    )
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label, extend="min")
    if np.any(bad) or np.any(~bad & (img < lo)):
        add_mask_legend(ax, masked=bool(np.any(bad)), under=bool(np.any(~bad & (img < lo))))
    if path is not None:
        save_figure(fig, path)
    return fig
