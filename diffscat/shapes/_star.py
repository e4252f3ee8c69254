"""Shared pieces for star-shaped bodies r <= R(direction) (spherical harmonics, radial maps) and for shapes
whose inside function is a level set: first-order signed distances from a value and its gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._checks import safe_norm

__all__ = ["unit_directions", "star_sdf", "level_set_sdf"]


def unit_directions(p):
    """(|p|, p / |p|) with a finite gradient at p = 0, where the direction is taken as +z."""
    n = safe_norm(p)
    pos = n > 0
    u = p / jnp.where(pos, n, 1.0)[..., None]
    ez = jnp.zeros_like(p).at[..., 2].set(1.0)
    return n, jnp.where(pos[..., None], u, ez)


def star_sdf(radius_fn, p):
    """First-order signed distance of the star-shaped body |p| <= R(p / |p|).

    d = (|p| - R(u)) / sqrt(1 + |grad_S R|^2 / R^2), with grad_S R the surface gradient of R on the unit
    sphere: f(p) = |p| - R(p/|p|) has |grad f| = sqrt(1 + |grad_S R|^2 / |p|^2), evaluated on the surface
    |p| = R. `radius_fn(v)` maps unit vectors (..., 3) to radii (...) and must be written for any vector
    of norm 1 (its gradient along v then is the tangential gradient). Exact for a sphere.
    """
    n, u = unit_directions(p)

    def total(v):
        # R(v / |v|): the gradient at |v| = 1 is the surface gradient (radial component removed).
        return jnp.sum(radius_fn(v / safe_norm(v)[..., None]))

    r = radius_fn(u)
    g = jax.grad(total)(u)
    g2 = jnp.sum(g * g, axis=-1)
    return (n - r) / jnp.sqrt(1.0 + g2 / (r * r))


def level_set_sdf(rho_fn, p, floor):
    """First-order signed distance (rho - 1) / |grad rho| of the body rho(p) <= 1, for a gauge function rho
    (positive, homogeneous of degree 1). Where |grad rho| is tiny (only at the centre) `floor` is used."""
    rho = rho_fn(p)
    g = jax.grad(lambda q: jnp.sum(rho_fn(q)))(p)
    gn = safe_norm(g)
    ok = gn > 1e-12
    return (rho - 1.0) / jnp.where(ok, gn, 1.0 / floor)
