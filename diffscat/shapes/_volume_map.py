"""Voxel maps of dn = n - 1."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .._checks import check_finite
from .._custom_types import complex_dtype, default_float
from .._grid import VoxelGrid
from ._base import AbstractShape, extent_hint

__all__ = ["VolumeMap"]


class VolumeMap(AbstractShape):
    """A complex dn = n - 1 map on voxel centres.

    The array is centred on the origin with axes (x, y, z) and the beam along +z (the last axis): voxel
    (i, j, s) sits at ((i - (nx-1)/2) dx, (j - (ny-1)/2) dy, (s - (nz-1)/2) dz). Anisotropic pitch is allowed.
    Simulated on its own grid (the default) it is exactly the discrete eq. 9 of docs/physics.md.

    **Arguments:**
    - `dn`: (nx, ny, nz) complex (or real) array of n - 1, finite; differentiable leaf.
    - `pitch`: (dx, dy, dz) or a scalar, > 0 (static).
    """

    dn: Complex[Array, "nx ny nz"]
    pitch: tuple[float, float, float] = eqx.field(static=True)
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, dn, pitch):
        dn = jnp.asarray(dn)
        if dn.ndim != 3:
            raise ValueError(f"dn must be a 3-D array (nx, ny, nz), got shape {dn.shape}")
        if jnp.issubdtype(dn.dtype, jnp.bool_) or jnp.issubdtype(dn.dtype, jnp.integer):
            raise TypeError("dn must be a float or complex array of n - 1 (see VolumeMap docs)")
        if not jnp.issubdtype(dn.dtype, jnp.complexfloating):
            dn = dn.astype(complex_dtype(dn.dtype if dn.dtype == jnp.float64 else default_float()))
        self.dn = check_finite(dn, "dn")
        self.pitch = VoxelGrid(dn.shape, pitch).pitch
        self.extent_hint = extent_hint(float(np.linalg.norm(self.grid.half_extent)))

    @property
    def grid(self) -> VoxelGrid:
        """The map's own voxel grid."""
        return VoxelGrid(self.dn.shape, self.pitch)

    def render(self, grid: VoxelGrid) -> Complex[Array, "nx ny nz"]:
        if grid == self.grid:
            return self.dn
        return resample(self.dn, self.grid, grid)

    def bounding_radius(self) -> Float[Array, ""]:
        return jnp.asarray(float(np.linalg.norm(self.grid.half_extent)))

    def volume(self) -> Float[Array, ""]:
        """Occupied volume: sum of |dn| / max |dn| times the voxel volume (fill-weighted)."""
        a = jnp.abs(self.dn)
        return jnp.sum(a) / jnp.maximum(jnp.max(a), jnp.finfo(a.dtype).tiny) * self.grid.voxel_volume

    def max_abs_dn(self):
        return jnp.max(jnp.abs(self.dn))


def resample(dn, src: VoxelGrid, dst: VoxelGrid):
    """Trilinear resampling of a voxel map from grid `src` to grid `dst` (zero outside `src`).

    Box-averages first when `dst` is coarser (so the integral of dn is preserved to first order).
    """
    out_pts = dst.points(jnp.finfo(dn.dtype).dtype)
    coords = []
    for k in range(3):
        coords.append(out_pts[..., k] / src.pitch[k] + (src.shape[k] - 1) / 2.0)
    re = jax.scipy.ndimage.map_coordinates(dn.real, coords, order=1, mode="constant", cval=0.0)
    im = jax.scipy.ndimage.map_coordinates(dn.imag, coords, order=1, mode="constant", cval=0.0)
    return jax.lax.complex(re, im)
