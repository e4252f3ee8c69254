"""Small dtype helpers shared by the package.

Array shapes are written inline in each signature (`Float[Array, "ny nx"]`), where the reader needs them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = ["default_float", "as_float", "is_concrete", "complex_dtype"]


def mm(a, b) -> Array:
    """`a @ b` at full float32 precision (`Precision.HIGHEST`). On Ampere/Hopper GPUs a plain float32 matmul is
    TF32 (10-bit mantissa, ~3e-4 relative): rotated voxel coordinates, rotation checks and Fisher matrices need
    more than that (a rotation composed in a vmapped fit failed `check_rotation` on an H200 this way)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def default_float() -> jnp.dtype:
    """The default real dtype: float64 when `jax_enable_x64` is on, else float32."""
    return jnp.dtype(jnp.result_type(float))


def as_float(x, name: str, shape: tuple[int, ...] | None = None, dtype=None) -> Array:
    """Convert `x` to a real floating array, checking its shape (a structure error names `name`).

    Integers become the default float; existing floating arrays keep their precision unless `dtype` is
    given. Tracers pass through (their shape is still checked).
    """
    if isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got complex dtype {x.dtype}")
    if dtype is None:
        if isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating):
            dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        else:
            dtype = default_float()
    try:
        arr = jnp.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real number or array, got {x!r}") from e
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def is_concrete(x) -> bool:
    """True when `x` holds a concrete value (not a tracer), so Python-level checks may read it."""
    return not isinstance(x, jax.core.Tracer)


def complex_dtype(real_dtype) -> jnp.dtype:
    return jnp.dtype(jnp.complex128 if jnp.dtype(real_dtype) == jnp.float64 else jnp.complex64)
