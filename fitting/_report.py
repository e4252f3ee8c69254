"""Report figure of a fit: data | model | residuals (log scale), loss curve and a shape preview."""

from __future__ import annotations

import os

import numpy as np

import diffscat as ds

from ._result import FitResult

__all__ = ["plot_report"]


def _shape_projection(shape: ds.AbstractShape, n: int = 48):
    """Projected occupancy of the shape along z (beam) and along x, on an n^3 grid around it."""
    r = float(np.asarray(shape.bounding_radius()))
    grid = ds.VoxelGrid((n, n, n), 2.2 * r / n)
    vol = np.abs(np.asarray(shape.render(grid)))
    return vol.sum(axis=2).T, vol.sum(axis=0).T, r  # [y, x] and [z, y]


def plot_report(result: FitResult, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Figure with data, model (expected counts), residual map, loss history and a shape preview.

    Patterns use `diffscat.plot.plot_pattern` (log colour scale, physical axes; masked pixels blank); the
    residuals are the loss's signed normalised residuals (`AbstractLoss.residuals`) on a linear scale (about unit variance at a good fit).
    The preview is `diffscat.plot.plot_shape` when available, else projections of the rendered shape along
    the beam (z) and along x. Writes `path` atomically when given; returns the figure.
    """
    from diffscat.plot import plot_pattern, pyplot as _plt, save_figure

    plt = _plt()
    exp = result.experiment
    fig, axes = plt.subplots(2, 3, figsize=(15, 9), dpi=100)
    mask = result.mask
    data = np.where(mask, result.data, np.nan)
    model = np.where(mask, result.model_counts, np.nan)
    lo = max(float(np.nanmax(model)) * 1e-6, 0.1)
    plot_pattern(np.where(data > 0, data, lo / 10), exp, ax=axes[0, 0], title="data", label="counts")
    plot_pattern(np.maximum(model, lo / 10), exp, ax=axes[0, 1], title="model", label="counts")
    res = result.residuals()
    lim = max(3.0, float(np.nanpercentile(np.abs(res), 99)))
    im = axes[0, 2].imshow(res, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[0, 2].set_title(f"residuals ({result.loss_kind})")
    fig.colorbar(im, ax=axes[0, 2])
    ax = axes[1, 0]
    h = np.asarray(result.loss_history, float)
    if h.size:
        ax.plot(np.arange(1, h.size + 1), h - min(h.min(), result.loss) + 1.0, "-o", ms=3)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss - final + 1 (NLL units)")
    ax.set_title(f"loss: {result.n_steps} steps, converged={result.converged}")
    yx, zy, r = _shape_projection(result.model)
    ext = [-1.1 * r, 1.1 * r, -1.1 * r, 1.1 * r]
    axes[1, 1].imshow(yx, origin="lower", extent=ext, cmap="viridis")
    axes[1, 1].set_title("shape: projection along beam (z)")
    axes[1, 1].set_xlabel("x")
    axes[1, 1].set_ylabel("y")
    axes[1, 2].imshow(zy, origin="lower", extent=ext, cmap="viridis")
    axes[1, 2].set_title("shape: projection along x")
    axes[1, 2].set_xlabel("y")
    axes[1, 2].set_ylabel("z (beam)")
    lines = []
    for k in result.free:
        v, s = np.asarray(result.values[k]), np.asarray(result.sigmas.get(k, np.full(3, np.nan)))
        if k == "orientation":
            lines.append(f"orientation sigma = {_fmt(s, '.2g')} deg")
        else:
            lines.append(f"{k} = {_fmt(v, '.5g')} +- {_fmt(s, '.2g')}")
    fig.suptitle(
        (title + "\n" if title else "")
        + f"{type(result.model).__name__}: "
        + "; ".join(lines)
        + f"\nloss/pixel {result.loss / max(result.n_used, 1):.3f}, {result.time_s:.2f} s",
        fontsize=10,
    )
    if path is not None:
        save_figure(fig, path)
    return fig


def _fmt(a, spec):
    a = np.atleast_1d(np.asarray(a, float)).ravel()
    txt = ", ".join(format(x, spec) for x in a[:8]) + (", ..." if a.size > 8 else "")
    return txt if a.size == 1 else f"[{txt}]"
