"""Shape preview: three central slices of the rendered |dn| (or occupancy, delta, beta) and a 3-D view of its
surface voxels."""

from __future__ import annotations

import os

import numpy as np

from ._figures import _plt, save_figure, shape_summary
from ._grid import VoxelGrid
from .shapes import AbstractShape, VolumeMap
from .shapes._base import soft_width

__all__ = ["plot_shape"]

_QUANTITIES = {
    "abs": r"|$\Delta n$| = |n - 1|",
    "occupancy": "occupancy (fill fraction)",
    "delta": r"$\delta$ = -Re(n - 1)",
    "beta": r"$\beta$ = Im(n - 1)",
}


def _preview_grid(shape: AbstractShape, n: int) -> VoxelGrid:
    if isinstance(shape, VolumeMap):
        return shape.grid
    r = shape.extent_hint
    if r is None:
        r = float(np.asarray(shape.bounding_radius()))
    pitch = 2 * r / (n - 4)
    return VoxelGrid.around(r, pitch, margin=2)


def surface_voxels(inside: np.ndarray) -> np.ndarray:
    """Boolean (nx, ny, nz): the voxels of `inside` with at least one face-neighbour outside (or on the edge)."""
    pad = np.pad(inside, 1, constant_values=False)
    interior = (
        pad[2:, 1:-1, 1:-1]
        & pad[:-2, 1:-1, 1:-1]
        & pad[1:-1, 2:, 1:-1]
        & pad[1:-1, :-2, 1:-1]
        & pad[1:-1, 1:-1, 2:]
        & pad[1:-1, 1:-1, :-2]
    )
    return inside & ~interior


def plot_shape(
    shape: AbstractShape,
    path: str | os.PathLike | None = None,
    *,
    grid: VoxelGrid | None = None,
    n: int = 64,
    quantity: str = "abs",
    title: str | None = None,
    length_unit: str | None = None,
):
    """Preview a shape: central slices x = 0, y = 0, z = 0 of the rendered map and a 3-D view of its
    surface (the voxels with fill >= 1/2 next to one below), coloured by height along the beam (z).

    **Arguments:**
    - `shape`: any diffscat shape (concrete values).
    - `path`: PNG or PDF to write (atomically) when given.
    - `grid`: voxel grid to render on; default about `n` voxels across the shape (a `VolumeMap`'s own grid).
    - `quantity`: what the slices show: "abs" (|dn| = |n - 1|, default: non-zero inside any material, also
      for delta = 0), "occupancy" (fill fraction 0..1 of the outer surface), "delta" (-Re dn) or "beta" (Im dn).
    - `title`: figure title (default: the class and its parameters, `diffscat.plot.shape_summary`).
    - `length_unit`: the shape's length unit ("nm", ...) for the axis labels (default: the word "length").

    Lab frame, beam along +z. Returns the matplotlib figure.
    """
    if not isinstance(shape, AbstractShape):
        raise TypeError(f"shape must be a diffscat shape, got {type(shape).__name__}")
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity must be one of {sorted(_QUANTITIES)}, got {quantity!r}")
    plt = _plt()
    grid = grid or _preview_grid(shape, n)
    dn = np.asarray(shape.render(grid))
    if hasattr(shape, "occupancy"):  # the outer surface, whatever the materials inside
        occ = np.asarray(shape.occupancy(grid.points(shape.dtype), soft_width(grid.pitch)))
    else:
        absd = np.abs(dn)
        occ = absd / max(absd.max(), np.finfo(float).tiny)
    if quantity == "abs" and not np.any(dn):  # n = 1 everywhere (delta = beta = 0): show the geometry
        quantity = "occupancy"
    vals = {"delta": -dn.real, "beta": dn.imag, "abs": np.abs(dn), "occupancy": occ}[quantity]
    u = length_unit or "length"
    x, y, z = (np.asarray(a) for a in grid.axes())
    cx, cy, cz = (int(np.argmin(np.abs(a))) for a in (x, y, z))  # the voxels nearest the origin

    fig = plt.figure(figsize=(15.0, 4.0), dpi=110, layout="constrained")
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.35])
    lim = max(abs(vals.min()), abs(vals.max())) or 1.0
    vmin = -lim if vals.min() < 0 else 0.0
    cmap = "RdBu_r" if vmin < 0 else "viridis"
    panels = [
        (vals[:, :, cz].T, (x, y), f"x [{u}]", f"y [{u}]", f"slice z = {z[cz]:.3g} {u}"),
        (vals[:, cy, :].T, (x, z), f"x [{u}]", f"z (beam) [{u}]", f"slice y = {y[cy]:.3g} {u}"),
        (vals[cx, :, :].T, (y, z), f"y [{u}]", f"z (beam) [{u}]", f"slice x = {x[cx]:.3g} {u}"),
    ]
    im, axes = None, []
    for k, (img, (a, b), la, lb, t) in enumerate(panels):
        ax = fig.add_subplot(gs[0, k])
        da, db = (a[1] - a[0]) if len(a) > 1 else 1.0, (b[1] - b[0]) if len(b) > 1 else 1.0
        ext = [a[0] - da / 2, a[-1] + da / 2, b[0] - db / 2, b[-1] + db / 2]
        im = ax.imshow(
            img, origin="lower", extent=ext, cmap=cmap, vmin=vmin, vmax=lim, interpolation="nearest"
        )
        ax.set_xlabel(la)
        ax.set_ylabel(lb)
        ax.set_title(t, fontsize=9)
        ax.set_aspect("equal")
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.85, label=_QUANTITIES[quantity])

    ax3 = fig.add_subplot(gs[0, 3], projection="3d")
    inside = occ >= 0.5
    surf = surface_voxels(inside)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    pts = np.stack([X[surf], Y[surf], Z[surf]], -1)
    if len(pts) > 20000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
    if len(pts):
        ax3.scatter(
            pts[:, 0], pts[:, 1], pts[:, 2], c=pts[:, 2], cmap="viridis", s=2, depthshade=True, linewidths=0
        )
    r = max(abs(x).max(), abs(y).max(), abs(z).max())
    ax3.set_xlim(-r, r)
    ax3.set_ylim(-r, r)
    ax3.set_zlim(-r, r)
    ax3.set_box_aspect((1, 1, 1))
    ax3.set_xlabel(f"x [{u}]")
    ax3.set_ylabel(f"y [{u}]")
    ax3.set_zlabel(f"z (beam) [{u}]")
    ax3.set_title("outer surface (fill >= 1/2), colour = z", fontsize=9)
    if not len(pts):
        ax3.text2D(0.5, 0.5, "no voxel >= 1/2 filled", transform=ax3.transAxes, ha="center")
    fig.suptitle(title or shape_summary(shape, length_unit), fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig
