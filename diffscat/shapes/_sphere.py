"""Uniform sphere."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive
from .._custom_types import as_float
from ._base import AbstractSolid, extent_hint, material, placement

__all__ = ["Sphere"]


class Sphere(AbstractSolid):
    """A uniform sphere of `radius` (length unit), refractive index n = 1 - delta + i beta.

    **Arguments:**
    - `radius`: > 0, array leaf (differentiable).
    - `delta`, `beta`: optical constants (beta >= 0 absorbs).
    - `centre`: (3,) position in the lab frame, default the origin.
    - `rotation`: accepted for a uniform interface (a sphere is invariant), default identity.
    """

    radius: Float[Array, ""]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, radius, delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.radius = check_positive(as_float(radius, "radius", ()), "radius")
        self.delta, self.beta = material(delta, beta, self.radius.dtype)
        self.rotation, self.centre = placement(rotation, centre, self.radius.dtype)
        self.extent_hint = extent_hint(self.bounding_radius())

    def sdf_body(self, p):
        from .._checks import safe_norm

        return safe_norm(p) - self.radius

    def body_radius(self):
        return self.radius

    def volume(self):
        return 4.0 / 3.0 * math.pi * self.radius**3

    def form_factor(self, qr):
        """3 (sin u - u cos u) / u^3 with its Taylor series near 0 (finite value and gradient)."""
        small = jnp.abs(qr) < 1e-2
        u = jnp.where(small, 1.0, qr)
        return jnp.where(small, 1 - qr**2 / 10, 3 * (jnp.sin(u) - u * jnp.cos(u)) / u**3)
