"""Regularisers for spherical-harmonic shapes: functions of the shape added to the negative log-likelihood.

Each is a small hashable `eqx.Module` (so a fit with the same regulariser settings reuses its compilation);
`Compose` adds several. All are dimensionless (relative to the mean radius), so their weight means the same
for any size and length unit.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import diffscat as ds

__all__ = ["SHSmoothness", "SHDegreePrior", "Compose", "sh_degrees"]


def sh_degrees(n_coefficients: int) -> np.ndarray:
    """Degree l of every entry of a flat coefficient array (c_lm at index l^2 + l + m)."""
    lmax = math.isqrt(int(n_coefficients)) - 1
    return np.concatenate([np.full(2 * l + 1, l) for l in range(lmax + 1)])


def _coeffs(shape) -> Float[Array, " n"]:
    if not isinstance(shape, ds.SphericalHarmonics):
        raise TypeError(f"this regulariser needs a SphericalHarmonics shape, got {type(shape).__name__}")
    return shape.coefficients


class SHSmoothness(eqx.Module):
    """weight * sum_{l >= 1} (l (l + 1))^power c_lm^2 / c_00^2: penalises rough surfaces (power 1 is the
    surface-gradient energy of the radius function). `weight` >= 0 in NLL units."""

    weight: float = eqx.field(static=True)
    power: float = eqx.field(static=True, default=1.0)

    def __call__(self, shape) -> Float[Array, ""]:
        c = _coeffs(shape)
        l = jnp.asarray(sh_degrees(c.size), c.dtype)
        return self.weight * jnp.sum((l * (l + 1)) ** self.power * c**2) / c[0] ** 2


class SHDegreePrior(eqx.Module):
    """Gaussian prior on the power by degree: c_lm ~ N(0, (amplitude l^-decay c_00)^2) for l >= 1, i.e. adds
    0.5 sum_{l >= 1} c_lm^2 / (amplitude l^-decay c_00)^2. `amplitude`: expected relative deformation per
    coefficient at l = 1 (e.g. 0.1); `decay` >= 0 makes higher degrees quieter."""

    amplitude: float = eqx.field(static=True)
    decay: float = eqx.field(static=True, default=1.0)

    def __call__(self, shape) -> Float[Array, ""]:
        c = _coeffs(shape)
        l = np.maximum(sh_degrees(c.size), 1)
        s = jnp.asarray(self.amplitude * l ** (-self.decay), c.dtype)
        return 0.5 * jnp.sum((c[1:] / (s[1:] * c[0])) ** 2)


def sh_regularizer(regularizer=None):
    """The harmonic stages' regulariser: `regularizer`, or the default `SHDegreePrior(0.15)` when None."""
    return SHDegreePrior(0.15) if regularizer is None else regularizer


class Compose(eqx.Module):
    """Sum of regularisers: Compose((SHSmoothness(1e-2), SHDegreePrior(0.1)))."""

    terms: tuple = eqx.field(static=True)

    def __call__(self, shape) -> Float[Array, ""]:
        return sum(t(shape) for t in self.terms)
