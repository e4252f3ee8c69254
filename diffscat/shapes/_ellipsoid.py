"""Triaxial ellipsoid."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive, safe_norm
from .._custom_types import as_float
from ._base import AbstractSolid, extent_hint, material, placement

__all__ = ["Ellipsoid"]


class Ellipsoid(AbstractSolid):
    """A uniform ellipsoid with semi-axes (a, b, c) along the body x, y, z axes.

    **Arguments:**
    - `semi_axes`: (a, b, c) > 0, length unit; or give `a`, `b`, `c` separately (PyScatman style).
    - `delta`, `beta`: optical constants.
    - `rotation`: 3x3 matrix, r_lab = R r_body (columns are the body axes in the lab frame); default identity.
    - `centre`: (3,) lab-frame position.
    """

    semi_axes: Float[Array, "3"]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(
        self, semi_axes=None, delta=0.0, beta=0.0, *, rotation=None, centre=None, a=None, b=None, c=None
    ):
        if semi_axes is None:
            if a is None or b is None or c is None:
                raise TypeError("give semi_axes=(a, b, c) or all of a=, b=, c=")
            semi_axes = jnp.stack([as_float(v, n, ()) for v, n in ((a, "a"), (b, "b"), (c, "c"))])
        elif a is not None or b is not None or c is not None:
            raise TypeError("give either semi_axes or a, b, c, not both")
        self.semi_axes = check_positive(as_float(semi_axes, "semi_axes", (3,)), "semi_axes")
        dt = self.semi_axes.dtype
        self.delta, self.beta = material(delta, beta, dt)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def sdf_body(self, p):
        # First-order distance (rho - 1) / |grad rho| with rho = |p / a|: exact on the surface, within
        # O(d^2 curvature) near it, which is all the soft indicator needs.
        a = self.semi_axes
        rho = safe_norm(p / a)
        g = safe_norm(p / a**2)
        inner = g > 1e-6 / jnp.max(a)
        scale = jnp.where(inner, rho / jnp.where(inner, g, 1.0), jnp.min(a))
        return (rho - 1.0) * scale

    def body_radius(self):
        return jnp.max(self.semi_axes)

    def volume(self):
        return 4.0 / 3.0 * math.pi * jnp.prod(self.semi_axes)
