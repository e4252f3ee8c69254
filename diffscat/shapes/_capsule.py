"""A capsule (pill): a cylinder with hemispherical caps."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive, safe_norm
from .._custom_types import as_float
from ._base import AbstractSolid, extent_hint, material, placement

__all__ = ["Capsule"]


class Capsule(AbstractSolid):
    """A pill: all points within `radius` of the segment from -length/2 to +length/2 on the body z axis.

    **Arguments:**
    - `radius`: > 0, cylinder and cap radius (length unit).
    - `length`: >= 0, length of the cylindrical part (distance between the cap centres); the total length
      is length + 2 radius. length = 0 is a sphere.
    - `delta`, `beta`, `rotation`, `centre`: as for every solid.

    Exact signed distance; volume pi r^2 L + 4/3 pi r^3.
    """

    radius: Float[Array, ""]
    length: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, radius, length, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.radius = check_positive(as_float(radius, "radius", ()), "radius")
        dt = self.radius.dtype
        self.length = check_positive(as_float(length, "length", (), dt), "length", allow_zero=True)
        self.delta, self.beta = material(delta, beta, dt)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def sdf_body(self, p):
        h = self.length / 2
        zc = jnp.clip(p[..., 2], -h, h)
        q = p - jnp.stack([jnp.zeros_like(zc), jnp.zeros_like(zc), zc], axis=-1)
        return safe_norm(q) - self.radius

    def body_radius(self):
        return self.length / 2 + self.radius

    def volume(self):
        r = self.radius
        return math.pi * r**2 * self.length + 4.0 / 3.0 * math.pi * r**3
