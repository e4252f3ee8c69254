"""Shape-comparison metrics for retrieval tests and benchmarks: IoU on a common grid, best over the twins.

A single diffraction pattern cannot tell an object from its point-inverted twin (r -> -r: identical Born
patterns) nor, at small angles, from its mirror image through the detector plane (z -> -z: identical
projection along the beam); it does not see a translation either. `iou` therefore compares the two shapes
after aligning their centroids, and takes the best over those ambiguities.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import diffscat as ds

__all__ = ["indicator", "iou", "TWINS"]

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
