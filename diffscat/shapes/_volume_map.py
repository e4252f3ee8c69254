"""Voxel maps of dn = n - 1."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .._checks import check_finite
from .._custom_types import complex_dtype, default_float, is_concrete, mm
from .._grid import VoxelGrid
from ._base import AbstractShape, extent_hint

__all__ = ["VolumeMap"]


class VolumeMap(AbstractShape):
    """A complex dn = n - 1 map on voxel centres.

    The array is centred on the origin with axes (x, y, z) and the beam along +z (the last axis): voxel
    (i, j, s) sits at ((i - (nx-1)/2) dx, (j - (ny-1)/2) dy, (s - (nz-1)/2) dz). Anisotropic pitch is allowed.
    Simulated on its own grid (the default) it is exactly the discrete eq. 9 of docs/conventions.md. On another
    grid (`simulate(..., grid=)` or `pitch=`) each voxel is taken as a uniform box and averaged over the new
    voxels (`resample`): the integral of dn is conserved exactly, and the low-q pattern is unchanged.

    **Arguments:**
    - `dn`: (nx, ny, nz) complex (or real) array of n - 1, finite; differentiable leaf.
    - `pitch`: (dx, dy, dz) or a scalar, > 0 (static).

    - `rotation`, `centre`: optional placement (r_lab = R r_map + centre; differentiable). A placed map is
      resampled conservatively to the target pitch along its own axes, then interpolated trilinearly at the
      rotated voxel centres (integral conserved to second order); its own `grid` then becomes the smallest
      grid of its pitch holding its bounding ball. Default None: the map sits unrotated on its own grid.

    Boolean or fractional occupancy voxels filled with one material: `VolumeMap.from_mask(mask, pitch,
    delta, beta)` (PyScatman's boolean VolumeMap).
    """

    dn: Complex[Array, "nx ny nz"]
    pitch: tuple[float, float, float] = eqx.field(static=True)
    rotation: Float[Array, "3 3"] | None
    centre: Float[Array, "3"] | None
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, dn, pitch, *, rotation=None, centre=None):
        dn = jnp.asarray(dn)
        if dn.ndim != 3:
            raise ValueError(f"dn must be a 3-D array (nx, ny, nz), got shape {dn.shape}")
        if jnp.issubdtype(dn.dtype, jnp.bool_) or jnp.issubdtype(dn.dtype, jnp.integer):
            raise TypeError(
                "dn must be a float or complex array of n - 1; for boolean/occupancy voxels use "
                "VolumeMap.from_mask(mask, pitch, delta, beta)"
            )
        if not jnp.issubdtype(dn.dtype, jnp.complexfloating):
            dn = dn.astype(complex_dtype(dn.dtype if dn.dtype == jnp.float64 else default_float()))
        self.dn = check_finite(dn, "dn")
        self.pitch = VoxelGrid(dn.shape, pitch).pitch
        if rotation is None and centre is None:
            self.rotation = self.centre = None
        else:
            from ._base import placement

            self.rotation, self.centre = placement(rotation, centre, jnp.finfo(self.dn.dtype).dtype)
        r = self.bounding_radius()
        self.extent_hint = extent_hint(r) if is_concrete(r) else None

    @classmethod
    def from_mask(cls, mask, pitch, delta=0.0, beta=0.0, *, rotation=None, centre=None) -> VolumeMap:
        """Voxels filled with one material: dn = mask * (-delta + i beta).

        **Arguments:**
        - `mask`: (nx, ny, nz) boolean (inside / outside) or real occupancy in [0, 1] (partial-volume
          fill fractions), finite.
        - `pitch`: voxel pitch (dx, dy, dz) or a scalar (length unit).
        - `delta`, `beta`: optical constants (beta >= 0); differentiable when traced.
        - `rotation`, `centre`: optional placement, as for the constructor.
        """
        m = jnp.asarray(mask)
        if m.ndim != 3:
            raise ValueError(f"mask must be a 3-D array (nx, ny, nz), got shape {m.shape}")
        if jnp.issubdtype(m.dtype, jnp.complexfloating):
            raise TypeError("mask must be boolean or real occupancy in [0, 1], got a complex array")
        from ._base import material

        d, b = material(delta, beta)
        if jnp.issubdtype(m.dtype, jnp.bool_) or jnp.issubdtype(m.dtype, jnp.integer):
            m = m.astype(d.dtype)
        m = check_finite(m, "mask")
        if is_concrete(m) and (float(jnp.min(m)) < 0 or float(jnp.max(m)) > 1):
            raise ValueError("mask must hold occupancies in [0, 1] (or booleans)")
        rdt = jnp.result_type(m.dtype, d.dtype)
        dn = m.astype(rdt) * jax.lax.complex(-d.astype(rdt), b.astype(rdt))
        return cls(dn, pitch, rotation=rotation, centre=centre)

    @property
    def placed(self) -> bool:
        """True when the map has a rotation / centre (static: decided at construction)."""
        return self.rotation is not None

    @property
    def map_grid(self) -> VoxelGrid:
        """The grid of the array itself (its axes, unrotated, centred on the origin)."""
        return VoxelGrid(self.dn.shape, self.pitch)

    @property
    def grid(self) -> VoxelGrid:
        """The map's own simulation grid: the array's grid, or for a placed map the smallest grid of the same
        pitch holding its bounding ball."""
        if not self.placed:
            return self.map_grid
        r = self.extent_hint
        if r is None:
            raise ValueError("a VolumeMap placed with traced rotation/centre needs an explicit grid=")
        return VoxelGrid.around(r, self.pitch, margin=1)

    def render(self, grid: VoxelGrid) -> Complex[Array, "nx ny nz"]:
        if not self.placed:
            if grid == self.map_grid:
                return self.dn
            return resample(self.dn, self.map_grid, grid)
        # conservative averaging to the target pitch along the map's own axes, then trilinear sampling at the
        # target voxel centres taken into the map frame: r_map = R^T (r - centre)
        src = self.map_grid
        inter = VoxelGrid(
            tuple(
                int(np.ceil(n * p / q)) + 2 for n, p, q in zip(src.shape, src.pitch, grid.pitch, strict=True)
            ),
            grid.pitch,
        )
        dn = resample(self.dn, src, inter)
        rdt = jnp.finfo(dn.dtype).dtype
        body = mm(grid.points(rdt) - self.centre.astype(rdt), self.rotation.astype(rdt))
        coords = [body[..., k] / inter.pitch[k] + (inter.shape[k] - 1) / 2.0 for k in range(3)]
        re = jax.scipy.ndimage.map_coordinates(dn.real, coords, order=1, mode="constant", cval=0.0)
        im = jax.scipy.ndimage.map_coordinates(dn.imag, coords, order=1, mode="constant", cval=0.0)
        return jax.lax.complex(re, im)

    def bounding_radius(self) -> Float[Array, ""]:
        r = jnp.asarray(float(np.linalg.norm(self.map_grid.half_extent)))
        return r if not self.placed else r + jnp.linalg.norm(self.centre)

    def volume(self) -> Float[Array, ""]:
        """Occupied volume: sum of |dn| / max |dn| times the voxel volume (fill-weighted)."""
        a = jnp.abs(self.dn)
        return jnp.sum(a) / jnp.maximum(jnp.max(a), jnp.finfo(a.dtype).tiny) * self.map_grid.voxel_volume

    def max_abs_dn(self):
        return jnp.max(jnp.abs(self.dn))


def overlap_matrix(n_dst: int, p_dst: float, n_src: int, p_src: float) -> np.ndarray:
    """(n_dst, n_src) weights: length of the overlap of dst cell i and src cell j over p_dst (both grids centred
    on the origin). Rows sum to the covered fraction of each dst cell; columns times p_dst sum to p_src for
    src cells inside the dst grid, so the integral is conserved."""
    ed = (np.arange(n_dst + 1) - n_dst / 2.0) * p_dst
    es = (np.arange(n_src + 1) - n_src / 2.0) * p_src
    lo = np.maximum(ed[:-1, None], es[None, :-1])
    hi = np.minimum(ed[1:, None], es[None, 1:])
    return np.clip(hi - lo, 0.0, None) / p_dst


def resample(dn, src: VoxelGrid, dst: VoxelGrid):
    """Conservative resampling of a voxel map from grid `src` to grid `dst` (both centred on the origin).

    Each source voxel is a uniform box; each destination voxel gets the average of dn over its box (zero
    outside `src`). Separable: one small matrix per axis. The integral of dn (sum dn * voxel volume) is
    conserved exactly when `dst` covers `src`; finer grids see the boxes, coarser grids their averages.
    """
    rdt = jnp.finfo(dn.dtype).dtype
    W = [
        jnp.asarray(overlap_matrix(dst.shape[k], dst.pitch[k], src.shape[k], src.pitch[k]), rdt)
        for k in range(3)
    ]
    hi = jax.lax.Precision.HIGHEST
    out = jnp.einsum("ai,ijk->ajk", W[0].astype(dn.dtype), dn, precision=hi)
    out = jnp.einsum("bj,ajk->abk", W[1].astype(dn.dtype), out, precision=hi)
    return jnp.einsum("ck,abk->abc", W[2].astype(dn.dtype), out, precision=hi)
