"""Orientation conversions (matrix, quaternion, Euler, PyScatman latitude/longitude/rotation): both ways,
the documented convention, gradients, and every shape's `rotation=`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import diffscat as ds

RNG = np.random.default_rng(7)


def _fd_jacobian(f, x, h=1e-6):
    x = np.asarray(x, float)
    cols = []
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = h
        cols.append((np.asarray(f(jnp.asarray(x + e))) - np.asarray(f(jnp.asarray(x - e)))) / (2 * h))
    return np.stack(cols, axis=-1)


# --- PyScatman latitude / longitude / rotation ------------------------------------------------------------


@pytest.mark.parametrize(
    "lat, lon, axis",
    [
        (90.0, 0.0, [0, 0, -1]),  # toward the incoming beam (the source)
        (-90.0, 0.0, [0, 0, 1]),  # toward the detector
        (0.0, 0.0, [1, 0, 0]),
        (0.0, 90.0, [0, 1, 0]),
        (0.0, 180.0, [-1, 0, 0]),
        (45.0, 0.0, [math.sqrt(0.5), 0, -math.sqrt(0.5)]),
        (-30.0, -90.0, [0, -math.cos(math.radians(30)), 0.5]),
    ],
)
def test_scatman_main_axis_table(lat, lon, axis):
    """The table in docs/shapes.md: where the main (body z) axis points."""
    for rot in (0.0, 37.0):
        R = np.asarray(ds.rotation_from_scatman(lat, lon, rot))
        np.testing.assert_allclose(R[:, 2], axis, atol=1e-12)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)


def test_scatman_identity_and_rotation_about_main_axis():
    np.testing.assert_allclose(ds.rotation_from_scatman(-90.0, 0.0, 0.0), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(
        ds.rotation_from_scatman(0.0, 0.0, 0.0), [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12
    )
    # the third angle turns the body right-handedly about its (already oriented) main axis
    lat, lon = 25.0, -40.0
    R0 = np.asarray(ds.rotation_from_scatman(lat, lon, 0.0))
    R1 = np.asarray(ds.rotation_from_scatman(lat, lon, 30.0))
    u = R0[:, 2]
    turn = Rotation.from_rotvec(np.radians(30.0) * u).as_matrix()
    np.testing.assert_allclose(R1, turn @ R0, atol=1e-12)
    # equals intrinsic ZYZ Euler angles (lon, 90 + lat, rot)
    np.testing.assert_allclose(
        R1, ds.rotation_from_euler(np.radians([lon, 90 + lat, 30.0]), "ZYZ"), atol=1e-12
    )


def test_scatman_round_trip():
    for _ in range(50):
        lat, lon, rot = RNG.uniform(-89, 89), RNG.uniform(-179, 179), RNG.uniform(-179, 179)
        back = np.asarray(ds.scatman_from_rotation(ds.rotation_from_scatman(lat, lon, rot)))
        np.testing.assert_allclose(back, [lat, lon, rot], atol=1e-9)
    for _ in range(20):
        R = Rotation.random(random_state=RNG).as_matrix()
        np.testing.assert_allclose(ds.rotation_from_scatman(*ds.scatman_from_rotation(R)), R, atol=1e-10)
    # radians
    R = ds.rotation_from_scatman(0.3, -1.0, 2.0, degrees=False)
    np.testing.assert_allclose(ds.scatman_from_rotation(R, degrees=False), [0.3, -1.0, 2.0], atol=1e-12)
    # at the poles the turn goes into rotation
    for lat in (90.0, -90.0):
        R = ds.rotation_from_scatman(lat, 40.0, 10.0)
        a = np.asarray(ds.scatman_from_rotation(R))
        assert a[0] == pytest.approx(lat) and a[1] == 0.0
        np.testing.assert_allclose(ds.rotation_from_scatman(*a), R, atol=1e-9)


def test_scatman_gradients():
    x0 = np.array([20.0, -35.0, 50.0])
    J = np.asarray(jax.jacfwd(lambda a: ds.rotation_from_scatman(a[0], a[1], a[2]))(jnp.asarray(x0)))
    Jfd = _fd_jacobian(lambda a: ds.rotation_from_scatman(a[0], a[1], a[2]), x0, 1e-5)
    np.testing.assert_allclose(J, Jfd, atol=1e-9)
    R0 = np.asarray(ds.rotation_from_scatman(*x0))
    # inverse: gradient of the angles along a rotation about a fixed axis
    f = lambda t: ds.scatman_from_rotation(
        ds.rotation_from_axis_angle(jnp.array([0.3, -0.5, 0.8]), t[0]) @ R0
    )
    J = np.asarray(jax.jacfwd(f)(jnp.array([0.2])))
    np.testing.assert_allclose(J, _fd_jacobian(f, [0.2]), atol=1e-6)
    assert np.all(np.isfinite(J))


# --- quaternions and Euler angles -------------------------------------------------------------------------


def test_quaternion_round_trip_and_scipy():
    for _ in range(30):
        q = RNG.normal(size=4)
        q /= np.linalg.norm(q)
        R = np.asarray(ds.rotation_from_quaternion(q))
        ref = Rotation.from_quat(q[[1, 2, 3, 0]]).as_matrix()  # scipy: scalar last
        np.testing.assert_allclose(R, ref, atol=1e-12)
        q2 = np.asarray(ds.quaternion_from_rotation(R))
        np.testing.assert_allclose(q2, q * np.sign(q[0]), atol=1e-10)
    with pytest.raises(ValueError, match="quaternion"):
        ds.rotation_from_quaternion([1.0, 0.2, 0.0, 0.0])
    np.testing.assert_allclose(ds.rotation_from_quaternion([2.0, 0, 0, 0], normalise=True), np.eye(3))


@pytest.mark.parametrize("seq", ["ZYZ", "ZXZ", "XYX", "XYZ", "ZYX", "YZX", "zyz", "xyz", "zyx"])
def test_euler_round_trip(seq):
    proper = seq[0].lower() == seq[2].lower()
    for _ in range(20):
        a = RNG.uniform(-math.pi, math.pi, 3)
        a[1] = RNG.uniform(0.05, math.pi - 0.05) if proper else RNG.uniform(-1.5, 1.5)
        R = np.asarray(ds.rotation_from_euler(a, seq))
        np.testing.assert_allclose(R, Rotation.from_euler(seq, a).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(ds.euler_from_rotation(R, seq), a, atol=1e-9)
    # gimbal lock still round-trips to the same matrix
    for b in (0.0, math.pi) if proper else (math.pi / 2, -math.pi / 2):
        R = ds.rotation_from_euler([0.3, b, -0.7], seq)
        np.testing.assert_allclose(ds.rotation_from_euler(ds.euler_from_rotation(R, seq), seq), R, atol=1e-9)
    deg = np.asarray(
        ds.euler_from_rotation(ds.rotation_from_euler([10.0, 20.0, 30.0], seq, degrees=True), seq, True)
    )
    np.testing.assert_allclose(deg, [10.0, 20.0, 30.0], atol=1e-9)


def test_euler_bad_sequence():
    with pytest.raises(ValueError, match="seq"):
        ds.euler_from_rotation(np.eye(3), "ZZY")
    with pytest.raises(ValueError, match="seq"):
        ds.euler_from_rotation(np.eye(3), "ZyZ")


def test_euler_and_quaternion_gradients():
    a0 = np.array([0.3, 1.1, -0.4])
    f = lambda a: ds.euler_from_rotation(ds.rotation_from_euler(a, "ZYZ"), "ZYZ")
    np.testing.assert_allclose(jax.jacfwd(f)(jnp.asarray(a0)), np.eye(3), atol=1e-9)
    q0 = np.array([0.8, 0.2, -0.4, 0.4])
    q0 /= np.linalg.norm(q0)
    g = lambda q: ds.quaternion_from_rotation(ds.rotation_from_quaternion(q, normalise=True))
    J = np.asarray(jax.jacfwd(g)(jnp.asarray(q0)))
    np.testing.assert_allclose(J, _fd_jacobian(g, q0), atol=1e-6)


# --- shapes follow their rotation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda R: ds.Ellipsoid((1.0, 1.5, 2.5), rotation=R),
        lambda R: ds.Capsule(0.8, 2.0, rotation=R),
        lambda R: ds.Spindle(0.9, 2.2, rotation=R),
        lambda R: ds.Dumbbell(0.9, 2.4, 0.4, rotation=R),
        lambda R: ds.Cube(2.0, rotation=R),
        lambda R: ds.SphericalHarmonics.from_triplets([(0, 0, 6.0), (2, 0, 1.0), (3, 1, 0.5)], rotation=R),
        lambda R: ds.RadialMap(
            np.array([[1.0, 1.2, 1.1, 1.3], [1.5, 1.4, 1.6, 1.5], [1.8, 2.0, 1.9, 2.1]]), rotation=R
        ),
        lambda R: ds.Decahedron(2.5, 0.1, 0.2, rotation=R),
        lambda R: ds.Superellipsoid((1.0, 1.4, 2.0), (0.5, 1.5), rotation=R),
        lambda R: ds.CoreShell(ds.Sphere(0.5), ds.Ellipsoid((1.0, 1.5, 2.0)), rotation=R),
        lambda R: ds.Composite([ds.Sphere(0.8, centre=(0, 0, 1.0)), ds.Cube(1.0)], rotation=R),
    ],
)
def test_shapes_rotate_with_rotation(make):
    """occupancy(R p) of the rotated shape == occupancy(p) of the unrotated one; latitude +90 points the main
    axis toward the source (-z)."""
    R = np.asarray(ds.rotation_from_scatman(30.0, 70.0, -20.0))
    s0, s1 = make(None), make(R)
    p = RNG.uniform(-2.5, 2.5, (2000, 3))
    np.testing.assert_array_equal(np.asarray(s1.occupancy(p @ R.T, 0.0)), np.asarray(s0.occupancy(p, 0.0)))
    up = make(ds.rotation_from_scatman(90.0, 0.0, 0.0))
    np.testing.assert_array_equal(
        np.asarray(up.occupancy(p * [-1, 1, -1], 0.0)), np.asarray(s0.occupancy(p, 0.0))
    )  # R_y(180 deg)
