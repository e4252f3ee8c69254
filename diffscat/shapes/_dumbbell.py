"""A dumbbell: two equal spheres joined by a cylindrical neck."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive, safe_norm, safe_sqrt
from .._custom_types import as_float, is_concrete
from ._base import AbstractSolid, extent_hint, material, placement

__all__ = ["Dumbbell"]


class Dumbbell(AbstractSolid):
    """Two spheres of `radius` centred at z = +-separation/2 on the body z axis, joined by a cylinder of
    radius `neck` along the axis between the two centres (union of the three).

    **Arguments:**
    - `radius`: > 0, sphere radius (length unit).
    - `separation`: > 0, distance between the sphere centres (spheres overlap when < 2 radius).
    - `neck`: in (0, radius], neck radius.
    - `delta`, `beta`, `rotation`, `centre`: as for every solid.

    Signed distance min(d_sphere1, d_sphere2, d_neck): exact outside, a bound inside. Volume analytic:
    union of the spheres (minus their lens) plus the part of the neck outside both spheres.
    """

    radius: Float[Array, ""]
    separation: Float[Array, ""]
    neck: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, radius, separation, neck, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.radius = check_positive(as_float(radius, "radius", ()), "radius")
        dt = self.radius.dtype
        self.separation = check_positive(as_float(separation, "separation", (), dt), "separation")
        nk = check_positive(as_float(neck, "neck", (), dt), "neck")
        if is_concrete(nk) and is_concrete(self.radius):
            if float(nk) > float(self.radius):
                raise ValueError(f"neck must be <= radius, got neck={float(nk)}, radius={float(self.radius)}")
        else:
            nk = eqx.error_if(nk, nk > self.radius, "neck must be <= radius")
        self.neck = nk
        self.delta, self.beta = material(delta, beta, dt)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def sdf_body(self, p):
        h = self.separation / 2
        z = p[..., 2]
        rho = safe_norm(p[..., :2])
        s1 = safe_norm(p - jnp.array([0.0, 0.0, 1.0], p.dtype) * h) - self.radius
        s2 = safe_norm(p + jnp.array([0.0, 0.0, 1.0], p.dtype) * h) - self.radius
        # capped cylinder |z| <= h, rho <= neck (exact distance)
        dx = rho - self.neck
        dz = jnp.abs(z) - h
        outside = safe_norm(jnp.stack([jnp.maximum(dx, 0.0), jnp.maximum(dz, 0.0)], axis=-1))
        cyl = outside + jnp.minimum(jnp.maximum(dx, dz), 0.0)
        return jnp.minimum(jnp.minimum(s1, s2), cyl)

    def body_radius(self):
        return self.separation / 2 + self.radius

    def volume(self):
        r, s, a = self.radius, self.separation, self.neck
        lens = jnp.where(s < 2 * r, math.pi * (4 * r + s) * jnp.maximum(2 * r - s, 0.0) ** 2 / 12, 0.0)
        spheres = 2 * (4.0 / 3.0) * math.pi * r**3 - lens
        rho0sq = jnp.maximum(
            r**2 - s**2 / 4, 0.0
        )  # neck rings with rho < rho0 are inside a sphere everywhere
        a2 = jnp.maximum(a**2, rho0sq)
        neck = math.pi * s * (a2 - rho0sq) - (4.0 * math.pi / 3.0) * (
            safe_sqrt(r**2 - rho0sq) ** 3 - safe_sqrt(r**2 - a2) ** 3
        )
        return spheres + neck
