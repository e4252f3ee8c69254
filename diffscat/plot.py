"""Figures: diffraction patterns (log scale) with physical axes.

Matplotlib is imported lazily with the non-interactive Agg backend, so importing diffscat never needs a display.
"""

from __future__ import annotations

import os

import numpy as np

from ._experiment import Experiment
from ._figures import _plt, pyplot, save_figure
from ._plot_shape import plot_shape

__all__ = ["plot_pattern", "plot_shape", "pyplot", "save_figure"]


def _extent(experiment: Experiment, length_unit: str | None = None):
    """(extent, x label, y label, unit label) of the experiment's detector (`AbstractDetector.plot_axes`)."""
    return experiment.detector.plot_axes(float(experiment.wavelength), length_unit)


def plot_pattern(
    image,
    experiment: Experiment,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    ax=None,
    vmin_decades: float = 5.0,
    label: str = r"d$\sigma$/d$\Omega$",
    length_unit: str | None = None,
):
    """Show an image-shaped pattern on a log colour scale with physical axes and a colour bar.

    Axes: (q_x, q_y) for a QGrid, plane coordinates for a FlatDetector, angles in degrees otherwise.
    `vmin_decades`: dynamic range shown below the maximum. `length_unit`: the experiment's length unit for the
    axis labels (default: the words "length" / "inverse length"). Writes `path` (PNG/PDF, atomically) when given.
    Returns the matplotlib figure.
    """
    from matplotlib.colors import LogNorm

    plt = _plt()
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    else:
        fig = ax.figure
    pos = img[np.isfinite(img) & (img > 0)]
    vmax = pos.max() if pos.size else 1.0
    norm = LogNorm(vmin=vmax * 10.0 ** (-vmin_decades), vmax=vmax)
    extent, xl, yl, unit = _extent(experiment, length_unit)
    shown = np.where(img > 0, img, np.nan)
    im = ax.imshow(shown, origin="lower", norm=norm, extent=extent, cmap="magma", interpolation="nearest")
    ax.set_xlabel(f"{xl} [{unit}]")
    ax.set_ylabel(f"{yl} [{unit}]")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    if path is not None:
        save_figure(fig, path)
    return fig
