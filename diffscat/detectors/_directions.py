"""Directions: arbitrary pixel directions (no image geometry)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive
from .._custom_types import as_float
from ._base import AbstractDetector, PixelDirections

__all__ = ["Directions"]


class Directions(AbstractDetector):
    """Arbitrary pixel directions: `theta`, `phi` in radians, any (equal) array shape.

    `solid_angle` (sr, same shape) is optional; without it the solid angle is NaN (photon counts then need one).
    Not registered: it has no config or CXI representation (writing one to CXI stores only its class name).
    """

    theta: Float[Array, "*pix"]
    phi: Float[Array, "*pix"]
    solid_angle: Float[Array, "*pix"] | None

    def __init__(self, theta, phi, solid_angle=None):
        theta = as_float(theta, "theta")
        phi = as_float(phi, "phi")
        if theta.shape != phi.shape:
            raise ValueError(f"theta and phi must have the same shape, got {theta.shape} and {phi.shape}")
        if theta.ndim == 0:
            raise ValueError("theta and phi must be arrays with at least one element")
        self.theta = check_positive(theta, "theta", allow_zero=True)
        self.phi = phi
        if solid_angle is not None:
            solid_angle = as_float(solid_angle, "solid_angle", theta.shape)
        self.solid_angle = solid_angle

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.theta.shape)

    def pixels(self) -> PixelDirections:
        st = jnp.sin(self.theta)
        sa = self.solid_angle if self.solid_angle is not None else jnp.full(self.shape, jnp.nan)
        valid = self.theta < math.pi / 2
        return PixelDirections(
            st * jnp.cos(self.phi), st * jnp.sin(self.phi), 2 * jnp.sin(self.theta / 2) ** 2, sa, valid
        )
