"""Rotations: matrices (r_lab = R r_body), quaternions, Euler angles, axis-angle and PyScatman's
latitude / longitude / rotation. All functions are differentiable and vmappable.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._custom_types import as_float, is_concrete

__all__ = [
    "check_rotation",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "rotation_from_axis_angle",
    "rotation_from_quaternion",
    "quaternion_from_rotation",
    "rotation_from_euler",
]

ORTHO_TOL = 1e-4


def check_rotation(R, name: str = "rotation") -> Float[Array, "3 3"]:
    """Validate a proper rotation matrix (3x3, orthonormal, det +1); return it as an array."""
    R = as_float(R, name)
    if R.shape != (3, 3):
        raise ValueError(f"{name} must be a 3x3 matrix, got shape {R.shape}")
    tol = max(ORTHO_TOL, 100 * float(jnp.finfo(R.dtype).eps))
    if is_concrete(R):
        a = np.asarray(R, dtype=float)
        err = np.max(np.abs(a @ a.T - np.eye(3)))
        if not np.isfinite(err) or err > tol or np.linalg.det(a) < 0:
            raise ValueError(f"{name} must be orthonormal with det +1 (max |R R^T - I| = {err:.2e})")
        return R
    err = jnp.max(jnp.abs(R @ R.T - jnp.eye(3, dtype=R.dtype)))
    return eqx.error_if(R, (err > tol) | (jnp.linalg.det(R) < 0), f"{name} must be orthonormal, det +1")


def _axis_rotation(angle, i: int, j: int):
    angle = jnp.asarray(angle)
    c, s = jnp.cos(angle), jnp.sin(angle)
    one = jnp.ones_like(c)
    zero = jnp.zeros_like(c)
    m = [[one, zero, zero], [zero, one, zero], [zero, zero, one]]
    m[i][i], m[i][j], m[j][i], m[j][j] = c, -s, s, c
    return jnp.stack([jnp.stack(r, axis=-1) for r in m], axis=-2)


def rotation_x(angle) -> Float[Array, "*b 3 3"]:
    """Right-handed rotation by `angle` (radians) about +x."""
    return _axis_rotation(angle, 1, 2)


def rotation_y(angle) -> Float[Array, "*b 3 3"]:
    """Right-handed rotation by `angle` (radians) about +y."""
    return _axis_rotation(angle, 2, 0)


def rotation_z(angle) -> Float[Array, "*b 3 3"]:
    """Right-handed rotation by `angle` (radians) about +z."""
    return _axis_rotation(angle, 0, 1)


def rotation_from_axis_angle(axis, angle) -> Float[Array, "3 3"]:
    """Rodrigues' formula: rotation by `angle` (radians) about the unit vector `axis`."""
    axis = as_float(axis, "axis", (3,))
    axis = axis / jnp.linalg.norm(axis)
    K = jnp.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return jnp.eye(3, dtype=axis.dtype) + jnp.sin(angle) * K + (1 - jnp.cos(angle)) * (K @ K)


def rotation_from_quaternion(q, normalise: bool = False) -> Float[Array, "3 3"]:
    """Rotation matrix of the unit quaternion q = (w, x, y, z) (scalar first).

    With `normalise=False` a quaternion whose norm differs from 1 by more than 1e-4 is an error naming
    `quaternion`; with `normalise=True` it is divided by its norm (useful inside fits).
    """
    q = as_float(q, "quaternion", (4,))
    n = jnp.linalg.norm(q)
    if normalise:
        q = q / n
    elif is_concrete(q):
        if abs(float(n) - 1.0) > 1e-4:
            raise ValueError(f"quaternion must have unit norm, got norm {float(n):.6g}")
    else:
        q = eqx.error_if(q, jnp.abs(n - 1) > 1e-4, "quaternion must have unit norm")
    w, x, y, z = q
    return jnp.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def quaternion_from_rotation(R) -> Float[Array, "4"]:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix (Shepperd's method, branch-free)."""
    R = as_float(R, "rotation", (3, 3))
    t = jnp.trace(R)
    cands = jnp.stack(
        [
            jnp.array([1 + t, R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]),
            jnp.array([R[2, 1] - R[1, 2], 1 + 2 * R[0, 0] - t, R[0, 1] + R[1, 0], R[0, 2] + R[2, 0]]),
            jnp.array([R[0, 2] - R[2, 0], R[0, 1] + R[1, 0], 1 + 2 * R[1, 1] - t, R[1, 2] + R[2, 1]]),
            jnp.array([R[1, 0] - R[0, 1], R[0, 2] + R[2, 0], R[1, 2] + R[2, 1], 1 + 2 * R[2, 2] - t]),
        ]
    )
    k = jnp.argmax(jnp.array([t, R[0, 0], R[1, 1], R[2, 2]]))
    q = cands[k]
    q = q / jnp.linalg.norm(q)
    return q * jnp.where(q[0] < 0, -1.0, 1.0)


def rotation_from_euler(angles, seq: str = "ZYZ", degrees: bool = False) -> Float[Array, "3 3"]:
    """Rotation from three Euler angles.

    `seq` uses scipy's convention: upper case (e.g. "ZYZ", "XYZ") = intrinsic rotations about the body's
    moving axes, R = R_a(a1) R_b(a2) R_c(a3); lower case ("zyz") = extrinsic rotations about fixed lab axes,
    R = R_c(a3) R_b(a2) R_a(a1).
    """
    if len(seq) != 3 or not (seq.isupper() or seq.islower()) or set(seq.lower()) - set("xyz"):
        raise ValueError(f"seq must be three of x/y/z, all upper (intrinsic) or lower case, got {seq!r}")
    angles = as_float(angles, "angles", (3,))
    if degrees:
        angles = jnp.deg2rad(angles)
    fn = {"x": rotation_x, "y": rotation_y, "z": rotation_z}
    mats = [fn[c](a) for c, a in zip(seq.lower(), angles, strict=True)]
    if seq.isupper():
        return mats[0] @ mats[1] @ mats[2]
    return mats[2] @ mats[1] @ mats[0]
