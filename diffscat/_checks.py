"""Two-tier input checks: Python errors for concrete values, `eqx.error_if` for traced ones."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._custom_types import is_concrete


def check_positive(x, name: str, allow_zero: bool = False):
    """Raise `ValueError` naming `name` if any element of `x` is not (strictly) positive or not finite.

    Concrete values are checked in Python at once; traced values through `eqx.error_if`.
    """
    msg = f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite"
    if is_concrete(x):
        a = np.asarray(x)
        bad = ~np.isfinite(a) | ((a < 0) if allow_zero else (a <= 0))
        if np.any(bad):
            raise ValueError(f"{msg}, got {a if a.size < 10 else a[bad][:5]}")
        return x
    bad = ~jnp.isfinite(x) | ((x < 0) if allow_zero else (x <= 0))
    return eqx.error_if(x, jnp.any(bad), msg)


def check_finite(x, name: str):
    """Raise naming `name` if `x` has NaN or inf entries."""
    if is_concrete(x):
        if not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
        return x
    return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"{name} must be finite (no NaN or inf)")


def safe_norm(x, axis=-1, eps: float = 0.0):
    """Euclidean norm with a finite gradient at zero (the double-`where` trick)."""
    sq = jnp.sum(x * x, axis=axis)
    pos = sq > eps
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def safe_sqrt(x):
    """sqrt with a zero (not NaN/inf) gradient at and below zero."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)
