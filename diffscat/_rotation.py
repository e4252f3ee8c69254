"""Rotations: matrices (r_lab = R r_body), quaternions, Euler angles, axis-angle and PyScatman's
latitude / longitude / rotation. All functions are differentiable and vmappable.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._custom_types import as_float, is_concrete, mm

__all__ = [
    "check_rotation",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "rotation_from_axis_angle",
    "rotation_from_quaternion",
    "quaternion_from_rotation",
    "rotation_from_euler",
    "euler_from_rotation",
    "rotation_from_scatman",
    "scatman_from_rotation",
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
    err = jnp.max(jnp.abs(mm(R, R.T) - jnp.eye(3, dtype=R.dtype)))
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
    return jnp.eye(3, dtype=axis.dtype) + jnp.sin(angle) * K + (1 - jnp.cos(angle)) * mm(K, K)


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
        return mm(mm(mats[0], mats[1]), mats[2])
    return mm(mm(mats[2], mats[1]), mats[0])


def rotation_from_scatman(latitude, longitude, rotation, degrees: bool = True) -> Float[Array, "3 3"]:
    """Rotation matrix (r_lab = R r_body) from PyScatman's latitude / longitude / rotation.

    The shape's main axis is its body +z axis (the polar axis of `SphericalHarmonics` and `RadialMap`, the
    third semi-axis of an `Ellipsoid`, the long axis of `Capsule`, `Spindle`, `Dumbbell`). It is pointed to

        u = (cos(lat) cos(lon), cos(lat) sin(lon), -sin(lat))

    so latitude +90 deg points it toward the incoming beam (-z, the source), -90 deg toward the detector (+z),
    latitude 0 lies in the plane orthogonal to the beam, and longitude is the azimuth from +x toward +y (the
    detector's phi). Then the body is turned by `rotation` about that axis (right-handed about u). As a
    matrix: R = R_z(lon) R_y(90 deg + lat) R_z(rot), i.e. intrinsic "ZYZ" Euler angles
    (lon, 90 deg + lat, rot). (0, 0, 0) maps body z to +x and body x to -z; (-90, 0, 0) is the identity.
    Differentiable and vmappable; angles in degrees unless `degrees=False`. See docs/shapes.md.
    """
    lat = jnp.asarray(latitude)
    lon = jnp.asarray(longitude)
    rot = jnp.asarray(rotation)
    dt = jnp.result_type(lat, lon, rot, float)
    lat, lon, rot = (a.astype(dt) for a in (lat, lon, rot))
    if degrees:
        lat, lon, rot = jnp.deg2rad(lat), jnp.deg2rad(lon), jnp.deg2rad(rot)
    return mm(mm(rotation_z(lon), rotation_y(lat + jnp.pi / 2)), rotation_z(rot))


def scatman_from_rotation(R, degrees: bool = True) -> Float[Array, "3"]:
    """(latitude, longitude, rotation) of a rotation matrix, the inverse of `rotation_from_scatman`.

    latitude in [-90, 90], longitude and rotation in (-180, 180] (degrees unless `degrees=False`). At the poles
    (main axis along the beam) longitude and rotation are not separate; longitude 0 is returned there and the
    whole turn goes into rotation. Differentiable away from the poles.
    """
    R = as_float(R, "rotation", (3, 3))
    u = R[:, 2]
    rho = jnp.hypot(u[0], u[1])
    lat = jnp.arctan2(-u[2], rho)
    pole = rho < 1e-7
    lon = jnp.where(pole, 0.0, jnp.arctan2(jnp.where(pole, 0.0, u[1]), jnp.where(pole, 1.0, u[0])))
    # M = R_y(90 + lat)^T R_z(lon)^T R = R_z(rot)
    M = mm(mm(rotation_y(lat + jnp.pi / 2).T, rotation_z(lon).T), R)
    rot = jnp.arctan2(M[1, 0], M[0, 0])
    out = jnp.stack([lat, lon, rot])
    return jnp.rad2deg(out) if degrees else out


def euler_from_rotation(R, seq: str = "ZYZ", degrees: bool = False) -> Float[Array, "3"]:
    """Euler angles of a rotation matrix, the inverse of `rotation_from_euler` (same `seq` convention).

    Proper sequences (first axis == last, e.g. "ZYZ") return the middle angle in [0, pi]; Tait-Bryan
    sequences ("XYZ", ...) in [-pi/2, pi/2]. At gimbal lock the third angle is set to 0. Differentiable away
    from gimbal lock.
    """
    if len(seq) != 3 or not (seq.isupper() or seq.islower()) or set(seq.lower()) - set("xyz"):
        raise ValueError(f"seq must be three of x/y/z, all upper (intrinsic) or lower case, got {seq!r}")
    if seq[0].lower() == seq[1].lower() or seq[1].lower() == seq[2].lower():
        raise ValueError(f"seq must not repeat an axis twice in a row, got {seq!r}")
    R = as_float(R, "rotation", (3, 3))
    if seq.islower():
        # extrinsic a1, a2, a3 about fixed axes == intrinsic a3, a2, a1 about moving axes (reversed order)
        ang = euler_from_rotation(R, seq[::-1].upper())
        ang = ang[::-1]
        return jnp.rad2deg(ang) if degrees else ang
    i, j, k = ("xyz".index(c) for c in seq.lower())
    proper = i == k
    if proper:
        k = 3 - i - j  # the third axis of the frame
    # parity of the permutation (i, j, k): +1 for cyclic order
    sgn = 1.0 if (i, j, k) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1.0
    eps = 1e-7
    if proper:
        # R = R_i(a) R_j(b) R_i(c)
        cb = jnp.clip(R[i, i], -1.0, 1.0)
        sb = jnp.hypot(R[i, j], R[i, k])
        b = jnp.arctan2(sb, cb)
        lock = sb < eps
        a = jnp.arctan2(jnp.where(lock, 0.0, R[j, i]), jnp.where(lock, 1.0, -sgn * R[k, i]))
        c = jnp.arctan2(jnp.where(lock, 0.0, R[i, j]), jnp.where(lock, 1.0, sgn * R[i, k]))
        # gimbal lock: R = R_i(a + c) (b = 0) or R_i(a) diag-flip R_i(-c) (b = pi); put it all in a
        a_lock = jnp.arctan2(sgn * R[k, j], R[j, j])
        a = jnp.where(lock, a_lock, a)
        c = jnp.where(lock, 0.0, c)
    else:
        # R = R_i(a) R_j(b) R_k(c)
        sb = jnp.clip(sgn * R[i, k], -1.0, 1.0)
        b = jnp.arcsin(sb)
        lock = jnp.abs(sb) > 1 - eps
        a = jnp.arctan2(jnp.where(lock, 0.0, -sgn * R[j, k]), jnp.where(lock, 1.0, R[k, k]))
        c = jnp.arctan2(jnp.where(lock, 0.0, -sgn * R[i, j]), jnp.where(lock, 1.0, R[i, i]))
        a_lock = jnp.arctan2(sgn * R[k, j], R[j, j])
        a = jnp.where(lock, a_lock, a)
        c = jnp.where(lock, 0.0, c)
    ang = jnp.stack([a, b, c])
    return jnp.rad2deg(ang) if degrees else ang
