"""A star-shaped body whose radius is tabulated over latitude x longitude (PyScatman's RadialMap)."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_finite, check_positive, safe_norm
from .._custom_types import as_float
from ._base import AbstractSolid, extent_hint, material, placement
from ._star import star_sdf

__all__ = ["RadialMap"]


@eqx.filter_jit
def _sdf(shape, p):
    return star_sdf(shape._radius_unit, p)


class RadialMap(AbstractSolid):
    """A star-shaped body |r| <= R(latitude, longitude) with R tabulated on a latitude x longitude grid.

    Sampling (PyScatman's, Colombo et al. 2022 Sec. 5.2): row i is latitude -90 deg + i * 180 deg / nlat
    (i = 0 .. nlat - 1), column j is longitude j * 360 deg / nlon. Latitude is measured from the body xy
    plane toward body +z (the main axis: -90 deg is body -z), longitude from body +x toward +y. A 4 x 4 map
    thus holds latitudes -90, -45, 0, 45 deg and longitudes 0, 90, 180, 270 deg.

    Interpolation is bilinear (as PyScatman), periodic in longitude and pole-aware: the south pole (row 0)
    is one point, so its radius is the mean of row 0; the north pole (+90 deg, not sampled) gets the mean of
    the last row; between the last row and the north pole R is interpolated in latitude.

    **Arguments:**
    - `radii`: (nlat, nlon) array, > 0, finite, length units; nlat >= 2, nlon >= 3. Differentiable leaf.
    - `delta`, `beta`: optical constants.
    - `rotation`: 3x3, r_lab = R r_body; `centre`: (3,) lab position.
    """

    radii: Float[Array, "nlat nlon"]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, radii, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        r = as_float(radii, "radii")
        if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 3:
            raise ValueError(f"radii must be a 2-D (nlat >= 2, nlon >= 3) array, got shape {r.shape}")
        r = check_finite(r, "radii")
        self.radii = check_positive(r, "radii")
        dt = r.dtype
        self.delta, self.beta = material(delta, beta, dt)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def _table(self):
        """(nlat + 1, nlon) table: pole rows replaced by their means, the north-pole row appended."""
        r = self.radii
        south = jnp.broadcast_to(jnp.mean(r[0]), r[0].shape)
        north = jnp.broadcast_to(jnp.mean(r[-1]), r[-1].shape)
        return jnp.concatenate([south[None], r[1:], north[None]], axis=0)

    def _radius_unit(self, u):
        nlat, nlon = self.radii.shape
        x, y, z = u[..., 0], u[..., 1], u[..., 2]
        rho = safe_norm(u[..., :2])
        lat = jnp.arctan2(z, rho)
        axis = rho > 0
        lon = jnp.arctan2(jnp.where(axis, y, 0.0), jnp.where(axis, x, 1.0))
        lon = jnp.where(lon < 0, lon + 2 * math.pi, lon)
        t = (lat + math.pi / 2) * (nlat / math.pi)  # 0 .. nlat
        i0 = jnp.clip(jnp.floor(t), 0, nlat - 1).astype(jnp.int32)
        ft = t - i0
        s = lon * (nlon / (2 * math.pi))
        j0 = jnp.clip(jnp.floor(s), 0, nlon - 1).astype(jnp.int32)
        fs = s - j0
        j1 = (j0 + 1) % nlon
        T = self._table()
        r00, r01 = T[i0, j0], T[i0, j1]
        r10, r11 = T[i0 + 1, j0], T[i0 + 1, j1]
        return (1 - ft) * ((1 - fs) * r00 + fs * r01) + ft * ((1 - fs) * r10 + fs * r11)

    def radius(self, directions) -> Float[Array, "*b"]:
        """Interpolated radius at body-frame `directions` (..., 3) (normalised inside)."""
        d = jnp.asarray(directions, self.radii.dtype)
        return self._radius_unit(d / jnp.linalg.norm(d, axis=-1, keepdims=True))

    @staticmethod
    def grid_angles(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
        """Latitudes (nlat,) and longitudes (nlon,) in radians of the map's samples."""
        return -np.pi / 2 + np.arange(nlat) * np.pi / nlat, np.arange(nlon) * 2 * np.pi / nlon

    @classmethod
    def from_radius_function(
        cls, radius_fn, nlat: int, nlon: int, delta=0.0, beta=0.0, *, rotation=None, centre=None
    ) -> RadialMap:
        """Tabulate R(latitude, longitude) (NumPy function, radians) on the map's grid."""
        lat, lon = cls.grid_angles(nlat, nlon)
        r = np.asarray(radius_fn(lat[:, None], lon[None, :]), float) * np.ones((nlat, nlon))
        return cls(r, delta, beta, rotation=rotation, centre=centre)

    def sdf_body(self, p):
        return _sdf(self, p)

    def body_radius(self):
        # bilinear interpolation never exceeds the table's largest value
        return jnp.max(self.radii)

    def volume(self):
        """Integral of R^3 / 3 over the sphere by quadrature on a grid 4x finer than the map (~1e-4)."""
        nlat, nlon = self.radii.shape
        nt, nphi = 4 * nlat + 8, 4 * nlon + 8
        x, w = np.polynomial.legendre.leggauss(nt)
        phi = (np.arange(nphi) + 0.5) * 2 * np.pi / nphi
        st = np.sqrt(1 - x**2)
        u = np.stack(
            [st[:, None] * np.cos(phi), st[:, None] * np.sin(phi), np.broadcast_to(x[:, None], (nt, nphi))],
            -1,
        )
        wt = w[:, None] * (2 * np.pi / nphi)
        r = self._radius_unit(jnp.asarray(u, self.radii.dtype))
        return jnp.sum(jnp.asarray(wt, self.radii.dtype) * r**3) / 3.0
