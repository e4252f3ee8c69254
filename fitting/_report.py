"""Report figure of a fit: data | model | residuals on the detector's axes, loss curve and shape projections."""

from __future__ import annotations

import os

import numpy as np

import diffscat as ds

from ._result import FitResult

__all__ = ["plot_report"]


def _shape_projection(shape: ds.AbstractShape, n: int = 48):
    """Projected thickness of the shape along z (beam) and along x, on an n^3 grid around it.

    Returns ([y, x] map, [z, y] map, half width r, quantity label): the line integral of the occupancy (fill
    fraction, length units) when the shape has one, else of |dn|."""
    from diffscat.shapes._base import soft_width

    r = float(np.asarray(shape.bounding_radius()))
    pitch = 2.2 * r / n
    grid = ds.VoxelGrid((n, n, n), pitch)
    if hasattr(shape, "occupancy"):
        vol = np.asarray(shape.occupancy(grid.points(shape.dtype), soft_width(grid.pitch)))
        what = "projected thickness"
    else:
        vol = np.abs(np.asarray(shape.render(grid)))
        what = r"projected |$\Delta n$|"
    return vol.sum(axis=2).T * pitch, vol.sum(axis=0).T * pitch, 1.1 * r, what  # [y, x] and [z, y]


def plot_report(
    result: FitResult,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    length_unit: str | None = None,
):
    """Figure with data, model (expected counts), residual map, loss history and projections of the shape.

    Data and model share one log colour scale (counts per pixel) and the detector's physical axes
    (`diffscat.plot.pattern_axes`: q in inverse `length_unit`, a flat detector's plane in mm, angles in degrees);
    the residual map (the loss's signed normalised residuals, `AbstractLoss.residuals`, about unit variance at a
    good fit) is drawn on the same axes. Masked pixels are grey in every panel, zero counts black
    (`diffscat.plot.MASKED_COLOUR`, `UNDER_COLOUR`). The bottom row shows the loss per used pixel at each step and the fitted
    shape's projected thickness along the beam (z) and along x. `length_unit`: the data's length unit for the
    labels (None: generic words). Writes `path` atomically when given; returns the figure.
    """
    from diffscat._figures import add_mask_legend, colour_map
    from diffscat.plot import pattern_axes, plot_pattern, pyplot, save_figure, shape_summary

    plt = pyplot()
    exp = result.experiment
    u = length_unit or "length"
    fig = plt.figure(figsize=(15, 9.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, 3)
    mask = np.asarray(result.mask, bool) & np.isfinite(result.data)
    data = np.asarray(result.data, float)
    model = np.asarray(result.model_counts, float)
    used = mask & np.isfinite(model)
    top = max(float(np.max(data[used], initial=0.0)), float(np.max(model[used], initial=0.0)), 1e-30)
    counts = bool(np.all(data[used] == np.round(data[used])))
    if counts:  # 1 count is in the colour range, 0 counts below it (black)
        lo, label = max(top * 1e-6, min(0.1, top * 1e-2)), "counts per pixel"
    else:  # e.g. dsigma/dOmega or detector units: five decades
        lo, label = top * 1e-5, "signal per pixel (data units)"
    common = dict(length_unit=length_unit, mask=mask, vmin=lo, vmax=top, label=label)
    plot_pattern(data, exp, ax=axes[0, 0], title=f"data ({int(mask.sum())} pixels used)", **common)
    plot_pattern(model, exp, ax=axes[0, 1], title="model (expected signal, fitted scale)", **common)

    ax = axes[0, 2]
    res = np.where(mask, result.residuals(), np.nan)
    lim = max(3.0, float(np.nanpercentile(np.abs(res), 99))) if np.any(np.isfinite(res)) else 3.0
    extent, xl, yl = pattern_axes(exp, length_unit)
    im = ax.imshow(
        res,
        origin="lower",
        extent=extent,
        cmap=colour_map("RdBu_r", under=None),
        vmin=-lim,
        vmax=lim,
        interpolation="nearest",
    )
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(f"residuals ({result.loss_kind} loss)", fontsize=9)
    fig.colorbar(im, ax=ax, label="normalised residual (data - model)", extend="both")
    if not np.all(mask):
        add_mask_legend(ax)

    ax = axes[1, 0]
    h = np.asarray(result.loss_history, float)
    if h.size:
        ax.plot(np.arange(1, h.size + 1), h / max(result.n_used, 1), "-o", ms=3)
        ax.axhline(result.loss / max(result.n_used, 1), color="0.5", lw=0.8, ls="--", label="final")
        ax.legend(fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"{result.loss_kind} loss per used pixel")
    ax.set_title(
        f"loss: {result.n_steps} steps, converged = {result.converged}, "
        f"final {result.loss / max(result.n_used, 1):.4g} per pixel",
        fontsize=9,
    )
    yx, zy, r, what = _shape_projection(result.model)
    ext = [-r, r, -r, r]
    for ax, img, (la, lb), t in (
        (axes[1, 1], yx, ("x", "y"), "fitted shape: projection along the beam (z)"),
        (axes[1, 2], zy, ("y", "z (beam)"), "fitted shape: projection along x"),
    ):
        im = ax.imshow(img, origin="lower", extent=ext, cmap="viridis", interpolation="nearest")
        ax.set_xlabel(f"{la} [{u}]")
        ax.set_ylabel(f"{lb} [{u}]")
        ax.set_title(t, fontsize=9)
        fig.colorbar(im, ax=ax, label=f"{what} [{u}]")
    lines = []
    for k in result.free:
        v, s = np.asarray(result.values[k]), np.asarray(result.sigmas.get(k, np.full(3, np.nan)))
        if k == "orientation":
            lines.append(f"orientation sigma = {_fmt(s, '.2g')} deg")
        else:
            lines.append(f"{k} = {_fmt(v, '.5g')} +- {_fmt(s, '.2g')}")
    fig.suptitle(
        (title + "\n" if title else "")
        + shape_summary(result.model, length_unit)
        + "\nfitted: "
        + "; ".join(lines)
        + f"; loss/pixel {result.loss / max(result.n_used, 1):.4g}, {result.time_s:.1f} s",
        fontsize=10,
    )
    if path is not None:
        save_figure(fig, path)
    return fig


def _fmt(a, spec):
    a = np.atleast_1d(np.asarray(a, float)).ravel()
    txt = ", ".join(format(x, spec) for x in a[:8]) + (", ..." if a.size > 8 else "")
    return txt if a.size == 1 else f"[{txt}]"
