"""A spindle (lemon): a circular arc rotated about the body z axis, pointed at both ends (pymsft's Spindle)."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive, safe_norm
from .._custom_types import as_float, is_concrete
from ._base import AbstractSolid, extent_hint, material, placement

__all__ = ["Spindle"]


class Spindle(AbstractSolid):
    """A lemon-shaped solid of revolution about body z with tips at z = +-`half_length` and equatorial radius
    `radius` <= `half_length`. Its meridian is a circular arc of radius r0 = (c^2 + a^2) / (2 a) whose
    centre lies at distance r0 - a on the far side of the axis: rho(z) = sqrt(r0^2 - z^2) - (r0 - a). pymsft's
    Spindle(aspect_ratio) is Spindle(radius=1/aspect_ratio, half_length=1); radius = half_length is a sphere.

    **Arguments:**
    - `radius`: > 0, equatorial radius a (length unit).
    - `half_length`: >= radius, c.
    - `delta`, `beta`, `rotation`, `centre`: as for every solid.

    Exact signed distance (a vesica revolved); volume 2 pi (r0^2 c - c^3/3 - (r0 - a) r0^2 asin(c / r0)).
    """

    radius: Float[Array, ""]
    half_length: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, radius, half_length, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.radius = check_positive(as_float(radius, "radius", ()), "radius")
        dt = self.radius.dtype
        c = check_positive(as_float(half_length, "half_length", (), dt), "half_length")
        msg = "half_length must be >= radius (a spindle is pointed)"
        if is_concrete(c) and is_concrete(self.radius):
            if float(c) < float(self.radius) * (1 - 1e-12):
                raise ValueError(f"{msg}, got half_length={float(c)}, radius={float(self.radius)}")
        else:
            c = eqx.error_if(c, c < self.radius * (1 - 1e-6), msg)
        self.half_length = c
        self.delta, self.beta = material(delta, beta, dt)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def _arc(self):
        a, c = self.radius, self.half_length
        r0 = (c * c + a * a) / (2 * a)
        return r0, r0 - a

    def sdf_body(self, p):
        c = self.half_length
        r0, d = self._arc()
        x = safe_norm(p[..., :2])  # distance from the axis
        y = jnp.abs(p[..., 2])
        # the nearest point is the tip when the point lies beyond the line from the arc centre through it
        tip = (y - c) * d > x * c
        to_tip = safe_norm(jnp.stack([x, y - c], axis=-1))
        to_arc = safe_norm(jnp.stack([x + d, y], axis=-1)) - r0
        return jnp.where(tip, to_tip, to_arc)

    def body_radius(self):
        return self.half_length

    def volume(self):
        c = self.half_length
        r0, d = self._arc()
        # asin(c / r0) = atan2(c, r0 - a) since sqrt(r0^2 - c^2) = r0 - a; smooth at the sphere (a = c)
        return 2 * math.pi * (r0**2 * c - c**3 / 3 - d * r0**2 * jnp.arctan2(c, d))
