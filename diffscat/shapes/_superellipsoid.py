"""Superellipsoid (Barr): from boxes through ellipsoids to octahedra."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, Float

from .._checks import check_positive
from .._custom_types import as_float, is_concrete
from ._base import AbstractSolid, extent_hint, material, placement
from ._star import level_set_sdf

__all__ = ["Superellipsoid"]


def _safe_pow(x, k):
    """x^k for x >= 0 with value and gradient 0 at x = 0 (k >= 1)."""
    pos = x > 0
    return jnp.where(pos, jnp.exp(k * jnp.log(jnp.where(pos, x, 1.0))), 0.0)


@eqx.filter_jit
def _sdf(shape, p):
    return level_set_sdf(shape.gauge, p, jnp.min(shape.semi_axes))


def _beta(a, b):
    return jnp.exp(gammaln(a) + gammaln(b) - gammaln(a + b))


class Superellipsoid(AbstractSolid):
    """Barr's superellipsoid ((|x/a|^(2/e2) + |y/b|^(2/e2))^(e2/e1) + |z/c|^(2/e1)) <= 1.

    **Arguments:**
    - `semi_axes`: (a, b, c) > 0 along body x, y, z (length unit).
    - `exponents`: (e1, e2) in (0, 2]: e1 shapes the meridian (along z), e2 the xy cross-section;
      1 = ellipsoid, -> 0 box, 2 = octahedron-like (|x/a| + |y/b| + |z/c| <= 1 for e1 = e2 = 2).
    - `delta`, `beta`, `rotation`, `centre`: as for every solid.

    Signed distance (rho - 1) / |grad rho| with the degree-1 gauge rho = F^(e1/2). Volume analytic:
    2 a b c e1 e2 B(e1/2 + 1, e1) B(e2/2, e2/2).
    """

    semi_axes: Float[Array, "3"]
    exponents: Float[Array, "2"]
    delta: Float[Array, ""]
    beta: Float[Array, ""]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, semi_axes, exponents=(1.0, 1.0), delta=0.0, beta=0.0, *, rotation=None, centre=None):
        self.semi_axes = check_positive(as_float(semi_axes, "semi_axes", (3,)), "semi_axes")
        dt = self.semi_axes.dtype
        e = check_positive(as_float(exponents, "exponents", (2,), dt), "exponents")
        msg = "exponents must be in (0, 2]"
        if is_concrete(e):
            if float(jnp.max(e)) > 2.0:
                raise ValueError(f"{msg}, got {e}")
        else:
            e = eqx.error_if(e, jnp.any(e > 2.0), msg)
        self.exponents = e
        self.delta, self.beta = material(delta, beta, dt)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = extent_hint(self.bounding_radius())

    def gauge(self, p):
        """rho(p) = F^(e1/2), homogeneous of degree 1; the surface is rho = 1."""
        e1, e2 = self.exponents[0], self.exponents[1]
        q = jnp.abs(p / self.semi_axes)
        xy = _safe_pow(q[..., 0], 2 / e2) + _safe_pow(q[..., 1], 2 / e2)
        F = _safe_pow(xy, e2 / e1) + _safe_pow(q[..., 2], 2 / e1)
        return _safe_pow(F, e1 / 2)

    def sdf_body(self, p):
        return _sdf(self, p)

    def grid_fill(self, grid, rotation=None, centre=None):
        # Small exponents make near-flat faces (rounded boxes), which a Gaussian profile aliases when they lie
        # along voxel planes; the linearised partial volume is exact there and ignores the scale of the gauge.
        return self.linearised_fill(grid, rotation, centre)

    def body_radius(self):
        # the farthest surface point, on a fine grid of the parametric surface, plus 1 %
        e1, e2 = self.exponents[0], self.exponents[1]
        eta = jnp.linspace(0.0, math.pi / 2, 65, dtype=self.semi_axes.dtype)
        om = jnp.linspace(0.0, math.pi / 2, 65, dtype=self.semi_axes.dtype)
        ce, se = _safe_pow(jnp.cos(eta), e1)[:, None], _safe_pow(jnp.sin(eta), e1)[:, None]
        co, so = _safe_pow(jnp.cos(om), e2)[None, :], _safe_pow(jnp.sin(om), e2)[None, :]
        a, b, c = self.semi_axes
        r2 = (a * ce * co) ** 2 + (b * ce * so) ** 2 + (c * se) ** 2
        return 1.01 * jnp.sqrt(jnp.max(r2))

    def volume(self):
        e1, e2 = self.exponents[0], self.exponents[1]
        return 2 * jnp.prod(self.semi_axes) * e1 * e2 * _beta(e1 / 2 + 1, e1) * _beta(e2 / 2, e2 / 2)
