"""Shape-comparison metrics for retrieval tests and benchmarks: IoU on a common grid, best over the twins.

A single diffraction pattern cannot tell an object from its point-inverted twin (r -> -r: identical Born
patterns) nor, at small angles, from its mirror image through the detector plane (z -> -z: identical
projection along the beam); it does not see a translation either. `iou` therefore compares the two shapes
after aligning their centroids, and takes the best over those ambiguities.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

import diffscat as ds

__all__ = ["indicator", "iou", "ellipsoid_axis_errors", "ellipsoid_axis_sigmas", "TWINS"]

# r -> M r for the four ambiguous images: identity, inversion, z-mirror, inversion + z-mirror (= 180 deg about z)
TWINS = {
    "identity": np.diag([1.0, 1.0, 1.0]),
    "inversion": np.diag([-1.0, -1.0, -1.0]),
    "z_mirror": np.diag([1.0, 1.0, -1.0]),
    "inversion_z_mirror": np.diag([-1.0, -1.0, 1.0]),
}


def indicator(shape: ds.AbstractShape, points: np.ndarray) -> np.ndarray:
    """Inside test (bool, shape `points.shape[:-1]`) of lab-frame `points` (..., 3) [length].

    Solids use their signed distance (< 0 inside); other shapes (VolumeMap, composites) are rendered on a grid
    of the points' spacing and thresholded at half their largest |dn| (points must then be a regular grid's
    centres, (nx, ny, nz, 3), centred on the origin)."""
    p = np.asarray(points, float)
    if isinstance(shape, ds.AbstractSolid):
        out = np.empty(p.shape[:-1], bool)
        flat = p.reshape(-1, 3)
        res = out.reshape(-1)
        step = 1 << 18
        for i in range(0, flat.shape[0], step):
            pts = jnp.asarray(flat[i : i + step], shape.dtype)  # sdf takes a jax array (annotation)
            res[i : i + step] = np.asarray(shape.sdf(pts)) < 0
        return out
    if p.ndim != 4:
        raise ValueError(f"points must be a grid (nx, ny, nz, 3) for a {type(shape).__name__}, got {p.shape}")
    pitch = [float(p[1, 0, 0, 0] - p[0, 0, 0, 0]), float(p[0, 1, 0, 1] - p[0, 0, 0, 1])]
    pitch.append(float(p[0, 0, 1, 2] - p[0, 0, 0, 2]))
    a = np.abs(np.asarray(shape.render(ds.VoxelGrid(p.shape[:3], pitch))))
    return a > 0.5 * a.max()


def _grid_points(radius: float, n: int) -> tuple[np.ndarray, float]:
    pitch = 2.0 * radius / n
    ax = (np.arange(n) - (n - 1) / 2.0) * pitch
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1), pitch


def _centroid(ind: np.ndarray, pts: np.ndarray) -> np.ndarray:
    n = ind.sum()
    return pts[ind].mean(axis=0) if n else np.zeros(3)


def iou(
    truth: ds.AbstractShape,
    fitted: ds.AbstractShape,
    *,
    n: int = 64,
    twins: bool = True,
    align_centroids: bool = True,
    return_twin: bool = False,
) -> float | tuple[float, str]:
    """Intersection over union of two shapes' volumes (0 disjoint .. 1 identical), on a common n^3 grid.

    **Arguments:**
    - `truth`, `fitted`: diffscat shapes (solids by their signed distance; others by their rendered dn).
    - `n`: grid points per axis over the cube holding both bounding balls (after alignment); the IoU's
      discretisation error is about (surface / volume) * pitch / 4, ~1 % at n = 64.
    - `twins`: best over the fitted shape's images under `TWINS` (identity, r -> -r, z -> -z, both).
    - `align_centroids`: translate `fitted` so that its centroid (of each image) coincides with the truth's.
    - `return_twin`: also return the name of the best image.
    """
    if not isinstance(truth, ds.AbstractShape) or not isinstance(fitted, ds.AbstractShape):
        raise TypeError("truth and fitted must be diffscat shapes")
    if int(n) < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    r = 1.02 * max(float(np.asarray(truth.bounding_radius())), float(np.asarray(fitted.bounding_radius())))
    # one grid twice as large first (centroids), then the comparison grid
    pts, _ = _grid_points(r, int(n))
    a = indicator(truth, pts)
    ca = _centroid(a, pts) if align_centroids else np.zeros(3)
    cb = np.zeros(3)
    if align_centroids:
        big, _ = _grid_points(2 * r, int(n))
        cb = _centroid(indicator(fitted, big), big)
    best, name = -1.0, "identity"
    for key, M in TWINS.items() if twins else [("identity", TWINS["identity"])]:
        # image of fitted under M, centroid moved onto the truth's: inside at p iff fitted inside at M (p - ca) + cb
        q = (pts - ca) @ M.T + cb
        if isinstance(fitted, ds.AbstractSolid):
            b = indicator(fitted, q)
        else:
            b = _nonsolid_image(fitted, pts, M, ca, cb, r, int(n))
        union = np.count_nonzero(a | b)
        val = np.count_nonzero(a & b) / union if union else 1.0
        if val > best:
            best, name = val, key
    return (float(best), name) if return_twin else float(best)


def _nonsolid_image(shape, pts, M, ca, cb, r, n):
    """Indicator of a non-solid shape's image by nearest-voxel lookup in its rendering on a grid twice as large."""
    big, pitch = _grid_points(2 * r, 2 * n)
    ind = indicator(shape, big)
    q = (pts - ca) @ M.T + cb
    idx = np.rint(q / pitch + (2 * n - 1) / 2.0).astype(int)
    ok = np.all((idx >= 0) & (idx < 2 * n), axis=-1)
    idx = np.clip(idx, 0, 2 * n - 1)
    return ok & ind[idx[..., 0], idx[..., 1], idx[..., 2]]


def _sorted_axes(e: ds.Ellipsoid) -> tuple[np.ndarray, np.ndarray]:
    """(semi-axes, unit axis directions as columns), shortest axis first, float64 NumPy."""
    a = np.asarray(e.semi_axes, float)
    order = np.argsort(a)
    return a[order], np.asarray(e.rotation, float)[:, order]


def ellipsoid_axis_errors(
    truth: ds.Ellipsoid, fitted: ds.Ellipsoid
) -> tuple[Float[np.ndarray, "3"], Float[np.ndarray, "3"]]:
    """Per principal axis, shortest first: the relative semi-axis error (fitted / truth - 1) and the angle
    [deg] between the truth's and the fitted axis directions.

    Axes are paired by sorted length; an axis's sign does not matter; the fitted ellipsoid's z-mirror image
    (the ambiguity of a single pattern, `TWINS`; an ellipsoid is its own r -> -r image) is used when its
    largest angle is smaller. Axes of nearly equal length are paired arbitrarily and their directions are
    poorly determined by any pattern: compare with `ellipsoid_axis_sigmas`.
    """
    for name, e in (("truth", truth), ("fitted", fitted)):
        if not isinstance(e, ds.Ellipsoid):
            raise TypeError(f"{name} must be a diffscat.Ellipsoid, got {type(e).__name__}")
    at, Rt = _sorted_axes(truth)
    af, Rf = _sorted_axes(fitted)
    best = None
    for M in (TWINS["identity"], TWINS["z_mirror"]):
        ang = np.degrees(np.arccos(np.clip(np.abs(np.sum(Rt * (M @ Rf), axis=0)), 0.0, 1.0)))
        if best is None or ang.max() < best.max():
            best = ang
    return af / at - 1.0, best


def ellipsoid_axis_sigmas(result) -> tuple[Float[np.ndarray, "3"], Float[np.ndarray, "3"]]:
    """Statistical 1-sigma uncertainties of a fitted ellipsoid's principal axes, shortest axis first: the
    semi-axes [length unit of the fit] and each axis's direction [deg].

    `result`: a `FitResult` of a `diffscat.Ellipsoid` with "semi_axes" and "orientation" free and
    `uncertainties=True` (its Laplace sigmas; the orientation's are small rotations about the fitted body
    axes). An axis turns under the rotations about the two other axes, so its direction sigma is the
    quadrature sum of those two (their correlation neglected). Two semi-axes of nearly equal length leave the
    rotation about the third axis, and so both their directions, poorly determined: the data then fix the
    plane of the pair, not the axes in it. The sigmas are a local (quadratic) approximation: on 10 ellipsoids
    of the evaluation set (128^2, 8 fresh noise draws each, fits from the truth) the rms of the largest
    axis-direction error was 0.6-1.9x the largest direction sigma (docs/fitting.md, session 33).
    """
    model = getattr(result, "model", None)
    if not isinstance(model, ds.Ellipsoid):
        raise TypeError(f"result must be a FitResult of a diffscat.Ellipsoid, got {type(model).__name__}")
    sig = getattr(result, "sigmas", None) or {}
    missing = [k for k in ("semi_axes", "orientation") if k not in sig]
    if missing:
        raise ValueError(
            f"result has no sigmas for {missing}: fit with free=('semi_axes', 'orientation', ...) and "
            "uncertainties=True"
        )
    order = np.argsort(np.asarray(model.semi_axes, float))
    s = np.asarray(sig["orientation"], float)
    per_axis = np.array([np.hypot(s[(i + 1) % 3], s[(i + 2) % 3]) for i in range(3)])
    return np.asarray(sig["semi_axes"], float)[order], per_axis[order]
