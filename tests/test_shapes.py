"""Shape library (issue: shape library): volumes, inside tests, special cases, gradients, batching, errors,
VolumeMap masks and resampling, the preview figure."""

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import rel_l2
from scipy.spatial import ConvexHull
from scipy.special import sph_harm_y

import diffscat as ds
from diffscat.shapes._base import soft_width

PHI = (1 + math.sqrt(5)) / 2
TILT = np.asarray(ds.rotation_from_euler(np.array([0.4, 0.9, -0.3])))
EXP = ds.Experiment(1.0, ds.QGrid(32, 30.0))
PITCH = ds.default_pitch(1.0, math.radians(30.0))  # lambda / 4


# --- independent inside tests (body frame), written from each model's definition --------------------


def _hull_inside(vertices):
    eq = ConvexHull(np.asarray(vertices, float)).equations  # a . p + b <= 0 inside
    return lambda p: np.all(p @ eq[:, :3].T + eq[:, 3] <= 0, axis=-1)


def _sh_triplets_radius(triplets):
    def r(p):
        n = np.linalg.norm(p, axis=-1)
        th = np.arccos(np.clip(p[..., 2] / np.maximum(n, 1e-300), -1, 1))
        ph = np.arctan2(p[..., 1], p[..., 0])
        return sum((v * sph_harm_y(l, m, th, ph)).real for l, m, v in triplets)

    return r


def _rmap_fn(lat, lon):
    return 2.6 + 0.5 * np.sin(lat) ** 2 + 0.3 * np.cos(lat) ** 2 * np.cos(2 * lon) + 0.2 * np.sin(lat)


def _decahedron_inside(edge, ino, marks):
    rho, s36, c36 = 1 / (2 * math.sin(math.pi / 5)), math.sin(math.pi / 5), math.cos(math.pi / 5)
    h = math.sqrt(1 - rho**2)
    verts = [(0, 0, h * edge), (0, 0, -h * edge)] + [
        (rho * edge * math.cos(2 * math.pi * k / 5), rho * edge * math.sin(2 * math.pi * k / 5), 0)
        for k in range(5)
    ]
    hull = _hull_inside(verts)

    def inside(p):
        ok = hull(p)
        for k in range(5):
            a = (2 * k + 1) * math.pi / 5
            ok &= p[..., 0] * math.cos(a) + p[..., 1] * math.sin(a) <= rho * c36 * edge * (1 - ino)
            b = 2 * k * math.pi / 5
            pu = p[..., 0] * math.cos(b) + p[..., 1] * math.sin(b)
            pv = -p[..., 0] * math.sin(b) + p[..., 1] * math.cos(b)
            ok &= ~(pu - np.abs(pv) * s36 / c36 >= rho * edge * (1 - marks))
        return ok

    return inside


SH_TRIPLETS = [
    (0, 0, 3.0 * math.sqrt(4 * math.pi)),
    (2, 0, 0.6),
    (2, 1, 0.4),
    (3, -2, 0.5),
    (3, 2, 0.3j),
    (4, 0, 0.3),
]
_CUBOCT_V = [
    p for p in {tuple(np.roll(v, k)) for v in [(a, b, 0) for a in (-1, 1) for b in (-1, 1)] for k in range(3)}
]
_ICO_V = [tuple(np.roll((0, a, b * PHI), k)) for a in (-1, 1) for b in (-1, 1) for k in range(3)]
_BOX_N = np.concatenate([np.eye(3), -np.eye(3), [np.array([1.0, 1.0, 1.0]) / math.sqrt(3)]])
_BOX_D = np.array([1.8, 2.2, 2.0, 1.7, 2.1, 1.9, 2.6])


def _models():
    """name -> (shape at typical size, tilted, lab-frame centre; body-frame inside test; size scale)."""
    c = np.array([0.3, -0.2, 0.1])
    kw = dict(delta=0.01, beta=0.002, rotation=TILT, centre=c)
    return {
        "sphere": (ds.Sphere(3.0, 0.01, 0.002, centre=c), lambda p: np.linalg.norm(p, axis=-1) <= 3.0, 3.0),
        "ellipsoid": (
            ds.Ellipsoid((2.4, 3.0, 3.6), **kw),
            lambda p: np.sum((p / np.array([2.4, 3.0, 3.6])) ** 2, -1) <= 1,
            3.0,
        ),
        "spherical_harmonics": (
            ds.SphericalHarmonics.from_triplets(SH_TRIPLETS, **kw),
            lambda p: np.linalg.norm(p, axis=-1) <= _sh_triplets_radius(SH_TRIPLETS)(p),
            3.0,
        ),
        "radial_map": (
            ds.RadialMap.from_radius_function(_rmap_fn, 48, 96, **kw),
            lambda p: (
                np.linalg.norm(p, axis=-1)
                <= _rmap_fn(
                    np.arctan2(p[..., 2], np.hypot(p[..., 0], p[..., 1])), np.arctan2(p[..., 1], p[..., 0])
                )
            ),
            3.0,
        ),
        "convex_polyhedron": (
            ds.ConvexPolyhedron(_BOX_N, _BOX_D, **kw),
            lambda p: np.all(p @ _BOX_N.T <= _BOX_D, -1),
            2.0,
        ),
        "cube": (ds.Cube(4.5, **kw), lambda p: np.max(np.abs(p), -1) <= 2.25, 2.25),
        "octahedron": (ds.Octahedron(5.5, **kw), lambda p: np.sum(np.abs(p), -1) <= 5.5 / math.sqrt(2), 3.0),
        "truncated_octahedron": (
            ds.TruncatedOctahedron(4.0 * math.sqrt(2), 0.3, **kw),
            lambda p: (np.sum(np.abs(p), -1) <= 4.0) & (np.max(np.abs(p), -1) <= 4.0 * 0.7),
            3.0,
        ),
        "cuboctahedron": (
            ds.Cuboctahedron(3.2, **kw),
            _hull_inside(np.array(_CUBOCT_V) * 3.2 / math.sqrt(2)),
            3.0,
        ),
        "icosahedron": (ds.Icosahedron(3.6, **kw), _hull_inside(np.array(_ICO_V) * 3.6 / 2), 3.0),
        "decahedron": (
            ds.Decahedron(4.5, ino=0.15, marks=0.25, **kw),
            _decahedron_inside(4.5, 0.15, 0.25),
            3.0,
        ),
        "capsule": (
            ds.Capsule(1.8, 3.0, **kw),
            lambda p: np.hypot(np.hypot(p[..., 0], p[..., 1]), np.maximum(np.abs(p[..., 2]) - 1.5, 0)) <= 1.8,
            2.0,
        ),
        "dumbbell": (
            ds.Dumbbell(2.0, 3.6, 1.0, **kw),
            lambda p: (
                (np.linalg.norm(p - [0, 0, 1.8], axis=-1) <= 2.0)
                | (np.linalg.norm(p + [0, 0, 1.8], axis=-1) <= 2.0)
                | ((np.hypot(p[..., 0], p[..., 1]) <= 1.0) & (np.abs(p[..., 2]) <= 1.8))
            ),
            2.0,
        ),
        "spindle": (ds.Spindle(2.0, 3.8, **kw), None, 2.0),
        "superellipsoid": (
            ds.Superellipsoid((2.6, 3.0, 3.4), (0.6, 1.4), **kw),
            lambda p: (
                (np.abs(p[..., 0] / 2.6) ** (2 / 1.4) + np.abs(p[..., 1] / 3.0) ** (2 / 1.4)) ** (1.4 / 0.6)
                + np.abs(p[..., 2] / 3.4) ** (2 / 0.6)
                <= 1
            ),
            2.6,
        ),
        "core_shell": (
            ds.CoreShell(
                ds.Sphere(1.5, 0.03, 0.004),
                ds.Ellipsoid((2.6, 3.0, 3.3), 0.01, 0.002),
                rotation=TILT,
                centre=c,
            ),
            lambda p: np.sum((p / np.array([2.6, 3.0, 3.3])) ** 2, -1) <= 1,
            2.6,
        ),
        "composite": (
            ds.Composite(
                [
                    ds.Sphere(2.4, 0.01, 0.002, centre=(1.0, 0.0, 0.0)),
                    ds.Cube(3.6, 0.02, 0.001, centre=(-1.2, 0.3, 0.0)),
                ],
                rotation=TILT,
                centre=c,
            ),
            lambda p: (
                (np.linalg.norm(p - [1.0, 0, 0], axis=-1) <= 2.4)
                | (np.max(np.abs(p - [-1.2, 0.3, 0.0]), -1) <= 1.8)
            ),
            2.4,
        ),
    }


def _spindle_inside(a, c):
    r0 = (c * c + a * a) / (2 * a)

    def inside(p):
        z = np.abs(p[..., 2])
        rho = np.hypot(p[..., 0], p[..., 1])
        return (z <= c) & (rho <= np.sqrt(np.maximum(r0**2 - z**2, 0)) - (r0 - a))

    return inside


MODELS = _models()
MODELS["spindle"] = (MODELS["spindle"][0], _spindle_inside(2.0, 3.8), 2.0)
NAMES = list(MODELS)


def _placement(shape):
    return np.asarray(shape.rotation), np.asarray(shape.centre)


_occ = eqx.filter_jit(lambda s, pts, w: s.occupancy(pts, w))
_sim = eqx.filter_jit(ds.simulate)  # one compiled program per shape class, detector and grid


@pytest.mark.parametrize("name", NAMES)
def test_volume_formula_against_fine_grid_count(name):
    """volume() (analytic or exact/quadrature) vs a hard count of the independent inside test."""
    shape, inside, _ = MODELS[name]
    R, c = _placement(shape)
    r = float(shape.bounding_radius()) - np.linalg.norm(c)
    h = r / 42
    x = (np.arange(-int(r / h) - 2, int(r / h) + 3) + 0.3819) * h  # offset: no face on a grid plane
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    # a rotated counting grid, so that no flat face lies along grid planes
    p = np.stack([X, Y, Z], -1).reshape(-1, 3) @ np.asarray(ds.rotation_from_euler(np.array([0.7, 1.1, 0.2])))
    count = np.sum(inside(p)) * h**3
    assert abs(count / float(shape.volume()) - 1) < 4e-3, (count, float(shape.volume()))


@pytest.mark.parametrize("name", NAMES)
def test_rendered_volume_within_1_percent_at_default_pitch(name):
    shape, _, _ = MODELS[name]
    grid = ds.default_grid(shape, EXP)
    assert grid.pitch[0] == pytest.approx(PITCH)
    fill = _occ(shape, grid.points(jnp.float64), soft_width(grid.pitch))
    rendered = float(jnp.sum(fill)) * grid.voxel_volume
    assert abs(rendered / float(shape.volume()) - 1) < 0.01, (rendered, float(shape.volume()))


@pytest.mark.parametrize("name", NAMES)
def test_occupancy_matches_inside_test_away_from_boundary(name):
    shape, inside, scale = MODELS[name]
    R, c = _placement(shape)
    rng = np.random.default_rng(3)
    rb = float(shape.bounding_radius()) - np.linalg.norm(c)
    pb = rng.uniform(-1.05 * rb, 1.05 * rb, (6000, 3))  # body frame (composite frame for composites)
    lab = pb @ R.T + c
    hard = np.asarray(_occ(shape, jnp.asarray(lab), 0.0))
    assert set(np.unique(hard)) <= {0.0, 1.0}
    ref = inside(pb)
    # away from the boundary: the verdict does not change when the point moves by 3 % of the size
    steps = rng.normal(size=(8, 1, 3))
    steps *= 0.03 * scale / np.linalg.norm(steps, axis=-1, keepdims=True)
    stable = np.all([inside(pb + s) == ref for s in steps], axis=0)
    assert stable.sum() > 4000 and ref[stable].sum() > 500
    np.testing.assert_array_equal(hard[stable] == 1.0, ref[stable])


# --- special cases --------------------------------------------------------------------------------------


def test_sh_with_only_c00_is_a_sphere():
    a = 2.7
    sh = ds.SphericalHarmonics([a * math.sqrt(4 * math.pi)], 0.01, 0.002)
    sp = ds.Sphere(a, 0.01, 0.002)
    assert float(sh.volume()) == pytest.approx(float(sp.volume()), rel=1e-12)
    assert sh.extent_hint == sp.extent_hint
    np.testing.assert_allclose(_sim(sh, EXP), _sim(sp, EXP), rtol=1e-10, atol=0)
    # also with higher harmonics present but zero
    sh2 = ds.SphericalHarmonics(np.r_[a * math.sqrt(4 * math.pi), np.zeros(8)], 0.01, 0.002)
    grid = ds.default_grid(sp, EXP)
    np.testing.assert_allclose(_sim(sh2, EXP, grid=grid), _sim(sp, EXP, grid=grid), rtol=1e-10, atol=0)
    assert float(sh2.volume()) == pytest.approx(float(sp.volume()), rel=1e-12)


def test_constant_radial_map_is_a_sphere():
    rm = ds.RadialMap(np.full((6, 9), 2.7), 0.01, 0.002)
    sp = ds.Sphere(2.7, 0.01, 0.002)
    np.testing.assert_allclose(_sim(rm, EXP), _sim(sp, EXP), rtol=1e-10, atol=0)
    assert float(rm.volume()) == pytest.approx(float(sp.volume()), rel=1e-10)


def test_ellipsoid_vs_sh_and_radial_map_approximations():
    axes = np.array([2.6, 3.0, 3.4])

    def r_polar(theta, phi):
        theta, phi = np.broadcast_arrays(theta, phi)
        u = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
        return 1 / np.sqrt(np.sum((u / axes) ** 2, -1))

    ell = ds.Ellipsoid(axes, 0.01, 0.002, rotation=TILT)
    sh = ds.SphericalHarmonics.from_radius_function(r_polar, 8, 0.01, 0.002, rotation=TILT)
    rm = ds.RadialMap.from_radius_function(
        lambda lat, lon: r_polar(np.pi / 2 - lat, lon), 64, 128, 0.01, 0.002, rotation=TILT
    )
    grid = ds.default_grid(ell, EXP)
    I = np.asarray(_sim(ell, EXP, grid=grid))
    for approx, tol in ((sh, 0.03), (rm, 0.03)):
        assert float(approx.volume()) == pytest.approx(float(ell.volume()), rel=3e-3)
        err = rel_l2(_sim(approx, EXP, grid=grid), I)
        assert err < tol, (type(approx).__name__, err)


def test_sh_real_basis_against_scipy_and_orthonormal():
    from diffscat.shapes._harmonics import _sphere_grid, sh_index

    rng = np.random.default_rng(0)
    u = rng.normal(size=(40, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    th, ph = np.arccos(u[:, 2]), np.arctan2(u[:, 1], u[:, 0])
    L = 9
    Y = np.asarray(ds.shapes.real_sph_harm(L, u))
    for l in range(L + 1):
        for m in range(-l, l + 1):
            if m == 0:
                ref = sph_harm_y(l, 0, th, ph).real
            elif m > 0:
                ref = math.sqrt(2) * (-1) ** m * sph_harm_y(l, m, th, ph).real
            else:
                ref = math.sqrt(2) * (-1) ** m * sph_harm_y(l, -m, th, ph).imag
            np.testing.assert_allclose(Y[:, sh_index(l, m)], ref, atol=1e-12)
    uu, w = _sphere_grid(2 * L + 6, 4 * L + 8)
    B = np.asarray(ds.shapes.real_sph_harm(L, uu))
    np.testing.assert_allclose(np.einsum("tp,tpi,tpj->ij", w, B, B), np.eye((L + 1) ** 2), atol=1e-12)
    # Y_11 ~ +x, Y_1-1 ~ +y, Y_10 ~ +z (no Condon-Shortley phase)
    e = np.eye(3)
    Y1 = np.asarray(ds.shapes.real_sph_harm(1, e))
    assert Y1[0, 3] > 0 and Y1[1, 1] > 0 and Y1[2, 2] > 0


def test_from_triplets_follows_eq10_eq11():
    """R = Re sum v Y_l^m (complex orthonormal, Condon-Shortley phase, eq. 11 for m < 0)."""
    trip = SH_TRIPLETS + [(2, -2, -0.2), (1, 1, 0.1 - 0.3j), (1, -1, 0.25), (2, 1, 0.05)]
    sh = ds.SphericalHarmonics.from_triplets(trip)
    rng = np.random.default_rng(1)
    u = rng.normal(size=(200, 3))
    np.testing.assert_allclose(sh.raw_radius(u), _sh_triplets_radius(trip)(u), atol=1e-12)
    # the documented table, entry by entry
    c = np.asarray(ds.SphericalHarmonics.from_triplets([(0, 0, 10.0), (3, 2, 1.0)]).coefficients)
    assert c[0] == 10.0 and c[9 + 3 + 2] == pytest.approx(1 / math.sqrt(2))
    c = np.asarray(ds.SphericalHarmonics.from_triplets([(0, 0, 10.0), (3, -1, 2j)]).coefficients)
    assert c[9 + 3 - 1] == pytest.approx(2 / math.sqrt(2)) and c[9 + 3 + 1] == 0
    c = np.asarray(ds.SphericalHarmonics.from_triplets([(0, 0, 10.0), (1, 1, 1j)]).coefficients)
    assert c[1] == pytest.approx(1 / math.sqrt(2))  # -(-1)^1 Im v / sqrt 2
    c = np.asarray(ds.SphericalHarmonics.from_triplets([(0, 0, 10.0), (1, -1, 0.5)]).coefficients)
    assert c[3] == pytest.approx(0.5 / math.sqrt(2))


def test_negative_sh_radius_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="negative"):
        sh = ds.SphericalHarmonics.from_triplets([(0, 0, 1.0), (1, 0, 1.5)])
    r = np.asarray(sh.radius(np.array([[0, 0, -1.0], [0, 0, 1.0]])))
    assert (
        r[0] > 0
        and r[0] < 0.05 * float(sh.coefficients[0])
        and r[1] == pytest.approx(0.2821 + 0.7330, abs=1e-3)
    )
    assert np.isfinite(float(sh.volume()))


# --- gradients vs central finite differences --------------------------------------------------------

GEXP = ds.Experiment(1.0, ds.QGrid(9, 30.0))
GGRID = ds.VoxelGrid((16, 16, 16), 0.25)


def _orient(q):
    """lat, lon, rot (deg), centre (3) from a parameter vector tail."""
    return dict(rotation=ds.rotation_from_scatman(q[0], q[1], q[2]), centre=q[3:6])


TAIL = [20.0, 35.0, -50.0, 0.05, -0.04, 0.03]
GRAD_MODELS = {
    "sphere": (lambda q: ds.Sphere(q[0], q[1], q[2], **_orient(q[3:])), [1.3, 0.01, 0.003]),
    "ellipsoid": (lambda q: ds.Ellipsoid(q[0:3], q[3], q[4], **_orient(q[5:])), [1.0, 1.2, 1.5, 0.01, 0.003]),
    "spherical_harmonics": (
        lambda q: ds.SphericalHarmonics(q[:9], q[9], q[10], **_orient(q[11:])),
        [1.3 * math.sqrt(4 * math.pi), 0.1, -0.15, 0.2, 0.1, -0.1, 0.15, 0.05, 0.1, 0.01, 0.003],
    ),
    "radial_map": (
        lambda q: ds.RadialMap(q[:12].reshape(3, 4), q[12], q[13], **_orient(q[14:])),
        [1.2, 1.3, 1.25, 1.35, 1.4, 1.3, 1.2, 1.35, 1.3, 1.45, 1.25, 1.3, 0.01, 0.003],
    ),
    "convex_polyhedron": (
        lambda q: ds.ConvexPolyhedron(_BOX_N, q[:7], q[7], q[8], **_orient(q[9:])),
        [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.4, 0.01, 0.003],
    ),
    "cube": (lambda q: ds.Cube(q[0], q[1], q[2], **_orient(q[3:])), [2.0, 0.01, 0.003]),
    "octahedron": (lambda q: ds.Octahedron(q[0], q[1], q[2], **_orient(q[3:])), [2.4, 0.01, 0.003]),
    "truncated_octahedron": (
        lambda q: ds.TruncatedOctahedron(q[0], q[1], q[2], q[3], **_orient(q[4:])),
        [2.6, 0.3, 0.01, 0.003],
    ),
    "cuboctahedron": (lambda q: ds.Cuboctahedron(q[0], q[1], q[2], **_orient(q[3:])), [1.4, 0.01, 0.003]),
    "icosahedron": (lambda q: ds.Icosahedron(q[0], q[1], q[2], **_orient(q[3:])), [1.6, 0.01, 0.003]),
    "decahedron": (
        lambda q: ds.Decahedron(q[0], q[1], q[2], q[3], q[4], **_orient(q[5:])),
        [2.0, 0.2, 0.3, 0.01, 0.003],
    ),
    "capsule": (lambda q: ds.Capsule(q[0], q[1], q[2], q[3], **_orient(q[4:])), [0.8, 1.0, 0.01, 0.003]),
    "dumbbell": (
        lambda q: ds.Dumbbell(q[0], q[1], q[2], q[3], q[4], **_orient(q[5:])),
        [0.8, 1.4, 0.45, 0.01, 0.003],
    ),
    "spindle": (lambda q: ds.Spindle(q[0], q[1], q[2], q[3], **_orient(q[4:])), [0.9, 1.6, 0.01, 0.003]),
    "superellipsoid": (
        lambda q: ds.Superellipsoid(q[0:3], q[3:5], q[5], q[6], **_orient(q[7:])),
        [0.9, 1.0, 1.2, 0.7, 1.3, 0.01, 0.003],
    ),
    "core_shell": (
        lambda q: ds.CoreShell(
            ds.Sphere(q[0], q[2], q[3]),
            ds.Ellipsoid(q[1] * jnp.array([1.0, 1.1, 1.2]), q[4], q[5]),
            **_orient(q[6:]),
        ),
        [0.7, 1.2, 0.03, 0.004, 0.01, 0.002],
    ),
    "composite": (
        lambda q: ds.Composite(
            [
                ds.Sphere(q[0], q[2], q[3], centre=jnp.array([0.4, 0.0, 0.0])),
                ds.Cube(q[1], q[4], q[5], centre=jnp.array([-0.5, 0.1, 0.0])),
            ],
            **_orient(q[6:]),
        ),
        [0.9, 1.2, 0.02, 0.004, 0.01, 0.002],
    ),
}


@pytest.mark.parametrize("name", list(GRAD_MODELS))
def test_pattern_gradients_match_finite_differences(name):
    build, p0 = GRAD_MODELS[name]
    q0 = jnp.asarray(np.r_[p0, TAIL], jnp.float64)
    w = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (9, 9)))

    def loss(q):
        return jnp.sum(w * _sim(build(q), GEXP, grid=GGRID))

    vg = jax.jit(jax.value_and_grad(loss))  # one compilation for values and gradient
    g = np.asarray(vg(q0)[1])
    assert np.all(np.isfinite(g))
    fd = np.empty_like(g)
    for i in range(len(q0)):
        h = 1e-5 * max(1.0, abs(float(q0[i])))
        e = jnp.zeros_like(q0).at[i].set(h)
        fd[i] = (float(vg(q0 + e)[0]) - float(vg(q0 - e)[0])) / (2 * h)
    scale = np.abs(g) + 1e-3 * np.max(np.abs(g))
    bad = np.abs(g - fd) > 1e-4 * scale + 1e-7 * np.max(np.abs(g))
    assert not np.any(bad), (np.nonzero(bad), g[bad], fd[bad])


# --- batching -------------------------------------------------------------------------------------------


def test_vmap_over_stacked_spherical_harmonics_equals_single_calls():
    rng = np.random.default_rng(5)
    shapes = []
    for k in range(8):
        c = np.r_[1.3 * math.sqrt(4 * math.pi) * (1 + 0.05 * k), 0.15 * rng.normal(size=8)]
        shapes.append(ds.SphericalHarmonics(c, 0.01, 0.002))
    batch = ds.stack(shapes)
    grid = ds.default_grid(batch, GEXP)
    f = jax.jit(jax.vmap(lambda s: _sim(s, GEXP, grid=grid)))
    Ib = np.asarray(f(batch))
    g1 = eqx.filter_jit(lambda s: _sim(s, GEXP, grid=grid))
    for k, s in enumerate(shapes):
        np.testing.assert_allclose(Ib[k], np.asarray(g1(s)), rtol=1e-10, atol=1e-14 * np.max(Ib[k]))


@pytest.mark.parametrize(
    "make",
    [
        lambda k: ds.Cube(2.0 + 0.1 * k, 0.01, rotation=ds.rotation_from_scatman(10.0 * k, 5.0, 0.0)),
        lambda k: ds.CoreShell.spheres(0.8 + 0.05 * k, 1.5, 0.02, 0.0, 0.01, 0.001),
    ],
    ids=["cube", "core_shell"],
)
def test_vmap_other_models(make):
    shapes = [make(k) for k in range(3)]
    batch = ds.stack(shapes)
    grid = ds.default_grid(batch, GEXP)
    Ib = np.asarray(jax.jit(jax.vmap(lambda s: _sim(s, GEXP, grid=grid)))(batch))
    for k, s in enumerate(shapes):
        np.testing.assert_allclose(Ib[k], np.asarray(_sim(s, GEXP, grid=grid)), rtol=1e-9)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ds.Cube(-1.0), "edge"),
        (lambda: ds.Octahedron(0.0), "edge"),
        (lambda: ds.Icosahedron(np.nan), "edge"),
        (lambda: ds.Cuboctahedron(-2.0), "edge"),
        (lambda: ds.TruncatedOctahedron(-2.0), "edge"),
        (lambda: ds.TruncatedOctahedron(2.0, 0.7), "truncation"),
        (lambda: ds.Decahedron(-1.0), "edge"),
        (lambda: ds.Decahedron(1.0, ino=1.0), "ino"),
        (lambda: ds.Decahedron(1.0, marks=0.8), "marks"),
        (lambda: ds.Capsule(-1.0, 1.0), "radius"),
        (lambda: ds.Capsule(1.0, -1.0), "length"),
        (lambda: ds.Dumbbell(1.0, -2.0, 0.5), "separation"),
        (lambda: ds.Dumbbell(1.0, 2.0, 1.5), "neck"),
        (lambda: ds.Dumbbell(-1.0, 2.0, 0.5), "radius"),
        (lambda: ds.Spindle(2.0, 1.0), "half_length"),
        (lambda: ds.Spindle(-2.0, 3.0), "radius"),
        (lambda: ds.Superellipsoid((1.0, -1.0, 1.0)), "semi_axes"),
        (lambda: ds.Superellipsoid((1.0, 1.0, 1.0), (0.0, 1.0)), "exponents"),
        (lambda: ds.Superellipsoid((1.0, 1.0, 1.0), (1.0, 2.5)), "exponents"),
        (lambda: ds.SphericalHarmonics([-1.0, 0.0, 0.0, 0.0]), "c_00"),
        (lambda: ds.SphericalHarmonics([1.0, 0.0, 0.0]), "coefficients"),
        (lambda: ds.SphericalHarmonics([1.0, np.nan, 0.0, 0.0]), "coefficients"),
        (lambda: ds.RadialMap(np.array([[1.0, 1.0, np.nan], [1.0, 1.0, 1.0]])), "radii"),
        (lambda: ds.RadialMap(-np.ones((3, 4))), "radii"),
        (lambda: ds.RadialMap(np.ones(5)), "radii"),
        (lambda: ds.ConvexPolyhedron(2 * np.concatenate([np.eye(3), -np.eye(3)]), np.ones(6)), "unit"),
        (lambda: ds.ConvexPolyhedron(np.concatenate([np.eye(3), -np.eye(3)])[:5], np.ones(5)), "bounded"),
        (lambda: ds.ConvexPolyhedron(_BOX_N, -_BOX_D), "distances"),
        (lambda: ds.ConvexPolyhedron(np.eye(3), np.ones(3)), "normals"),
        (lambda: ds.CoreShell.spheres(2.0, 1.5), "core"),
        (lambda: ds.Composite([]), "parts"),
        (lambda: ds.Composite([ds.VolumeMap(np.zeros((2, 2, 2)), 1.0)]), "parts"),
        (lambda: ds.Sphere(1.0, rotation=ds.rotation_from_quaternion([1.0, 0.1, 0.0, 0.0])), "quaternion"),
        (lambda: ds.VolumeMap.from_mask(np.full((3, 3, 3), np.nan), 1.0, 0.01), "mask"),
        (lambda: ds.VolumeMap.from_mask(np.full((3, 3, 3), 2.0), 1.0, 0.01), "mask"),
        (lambda: ds.VolumeMap(np.ones((3, 3, 3), bool), 1.0), "from_mask"),
    ],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "triplets",
    [
        [],
        [(0, 0)],
        [(1, 2, 0.5)],
        [(-1, 0, 1.0)],
        [(0.5, 0, 1.0)],
        [(0, 0, "x")],
        [(0, 0, np.nan)],
        "abc",
        [3],
    ],
)
def test_malformed_triplets(triplets):
    with pytest.raises(ValueError, match="triplets"):
        ds.SphericalHarmonics.from_triplets(triplets)


def test_traced_bad_values_raise_at_run_time():
    f = jax.jit(lambda e: ds.Cube(e).volume())
    with pytest.raises(Exception, match="edge must be positive"):
        f(jnp.asarray(-1.0)).block_until_ready()
    g = jax.jit(lambda t: ds.TruncatedOctahedron(2.0, t).volume())
    with pytest.raises(Exception, match="truncation"):
        g(jnp.asarray(0.9)).block_until_ready()


# --- VolumeMap: masks and resampling ---------------------------------------------------------------------


def _sphere_mask(n, pitch, radius):
    x = (np.arange(n) - (n - 1) / 2) * pitch
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    return X**2 + Y**2 + Z**2 <= radius**2


def test_volume_map_from_mask_boolean_and_occupancy():
    m = _sphere_mask(20, 0.25, 2.0)
    vm = ds.VolumeMap.from_mask(m, 0.25, 0.01, 0.002)
    np.testing.assert_allclose(np.asarray(vm.dn)[m], -0.01 + 0.002j)
    assert np.all(np.asarray(vm.dn)[~m] == 0)
    assert float(vm.volume()) == pytest.approx(m.sum() * 0.25**3)
    occ = ds.VolumeMap.from_mask(m * 0.5, 0.25, 0.01, 0.002)
    np.testing.assert_allclose(np.asarray(occ.dn), 0.5 * np.asarray(vm.dn))
    # delta, beta differentiable through from_mask
    g = jax.grad(lambda d: jnp.sum(_sim(ds.VolumeMap.from_mask(m, 0.25, d, 0.002), GEXP)))(0.01)
    assert np.isfinite(float(g)) and float(g) != 0


def test_volume_map_resampling_conserves_integral():
    rng = np.random.default_rng(2)
    dn = rng.normal(size=(10, 12, 9)) + 1j * rng.normal(size=(10, 12, 9))
    vm = ds.VolumeMap(dn, (0.3, 0.25, 0.35))
    for pitch in (0.1, 0.17, 0.6, 1.1):
        dst = ds.VoxelGrid.around(float(vm.bounding_radius()), pitch, margin=1)
        out = np.asarray(vm.render(dst))
        assert np.sum(out) * dst.voxel_volume == pytest.approx(np.sum(dn) * vm.grid.voxel_volume, rel=1e-12)
    assert np.asarray(vm.render(vm.grid)) is not None
    np.testing.assert_array_equal(np.asarray(vm.render(vm.grid)), dn)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_volume_map_on_finer_or_coarser_grid_same_low_q_pattern(factor):
    """A voxelised sphere at pitch a, simulated on its own grid and on grids of pitch a/2 and 2a: the low-q
    pattern (theta <= 12 deg, where 2a still samples finely) agrees within 2 % (rel-L2)."""
    a = 0.2
    m = _sphere_mask(40, a, 3.0)
    vm = ds.VolumeMap.from_mask(m, a, 1e-3, 1e-4)
    exp = ds.Experiment(1.0, ds.QGrid(24, 12.0))
    ref = np.asarray(_sim(vm, exp))
    other = np.asarray(_sim(vm, exp, pitch=a * factor))
    valid = np.asarray(exp.valid)
    assert rel_l2(other[valid], ref[valid]) < 0.02


# --- preview ----------------------------------------------------------------------------------------------


def test_plot_shape_writes_png(tmp_path):
    import matplotlib.image

    shape = ds.Decahedron(3.0, ino=0.2, marks=0.3, delta=0.01, rotation=TILT)
    path = ds.plot_shape(shape, tmp_path / "deca.png", n=40).axes and tmp_path / "deca.png"
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 600
    assert ds.plot.plot_shape is ds.plot_shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.plot_shape(
            ds.CoreShell.spheres(1.0, 2.0, 0.02, 0.0, 0.01, 0.0), tmp_path / "cs.pdf", quantity="abs", n=24
        )
    assert (tmp_path / "cs.pdf").stat().st_size > 1000


# --- the worked example of docs/shapes.md ("How to add a shape") ---------------------------------------------


def test_how_to_add_a_shape_example_runs():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "shapes.md").read_text()
    section = text[text.index("## How to add a shape") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns = {}
    exec(compile(code, "docs/shapes.md", "exec"), ns)
    Torus = ns["Torus"]
    t = Torus(1.2, 0.5, 0.01, 0.001, rotation=ds.rotation_from_scatman(30.0, 0.0, 0.0))
    grid = ds.VoxelGrid.around(t.extent_hint, 0.1, margin=2)
    fill = _occ(t, grid.points(jnp.float64), soft_width(grid.pitch))
    assert float(jnp.sum(fill)) * grid.voxel_volume == pytest.approx(float(t.volume()), rel=0.01)
    g = jax.grad(lambda r: jnp.sum(_sim(Torus(1.2, r, 0.01, 0.001), GEXP, grid=GGRID)))(0.5)
    assert np.isfinite(float(g)) and float(g) > 0


def test_volume_map_rotation_and_centre():
    rng = np.random.default_rng(4)
    dn = rng.normal(size=(9, 9, 6)) + 1j * rng.normal(size=(9, 9, 6))
    # 90 deg about z on the map's own grid: exactly the rotated array (r_lab = R r_map)
    vm = ds.VolumeMap(dn, 0.3, rotation=ds.rotation_z(np.pi / 2))
    out = np.asarray(vm.render(vm.map_grid))
    np.testing.assert_allclose(out, np.rot90(dn, 1, axes=(0, 1)), atol=1e-12)
    # a generic placement conserves the integral of dn (to second order) on its default grid
    m = _sphere_mask(24, 0.25, 2.0) & (np.arange(24)[:, None, None] < 16)  # not rotation invariant
    R = ds.rotation_from_scatman(25.0, 40.0, 70.0)
    placed = ds.VolumeMap.from_mask(m, 0.25, 1e-3, 1e-4, rotation=R, centre=(0.2, -0.1, 0.3))
    g = ds.default_grid(placed, EXP)
    assert g == placed.grid and g.pitch == (0.25, 0.25, 0.25) and g.shape[0] > 24
    total = np.sum(np.asarray(placed.render(g))) * g.voxel_volume
    assert total == pytest.approx(m.sum() * 0.25**3 * (-1e-3 + 1e-4j), rel=0.01)
    # and its pattern matches the mask voxelised directly in the rotated position at low q
    x = (np.arange(g.shape[0]) - (g.shape[0] - 1) / 2) * 0.25
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    body = (np.stack([X, Y, Z], -1) - [0.2, -0.1, 0.3]) @ np.asarray(R)
    direct = (np.sum(body**2, -1) <= 4.0) & (body[..., 0] / 0.25 + 11.5 < 16)
    exp = ds.Experiment(1.0, ds.QGrid(16, 10.0))
    a = np.asarray(_sim(placed, exp))
    b = np.asarray(_sim(ds.VolumeMap.from_mask(direct, 0.25, 1e-3, 1e-4), exp))
    # the two voxelisations hold slightly different voxel counts (surface noise): compare shapes
    assert rel_l2(a / a.max(), b / b.max()) < 0.02


def test_harmonics_clamp_softplus_derivatives_match_jax():
    """The clamp's softplus (custom JVP behind an optimisation barrier, for speed) has jax.nn.softplus's first
    and second derivatives, in the clamped region too (negative raw radius) and under vmap."""
    from diffscat.shapes._harmonics import _softplus

    x = jnp.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 40.0], jnp.float64)
    for f in (jax.grad, lambda g: jax.grad(jax.grad(g))):
        got = jax.vmap(f(lambda t: _softplus(t) * jnp.cos(t)))(x)
        want = jax.vmap(f(lambda t: jax.nn.softplus(t) * jnp.cos(t)))(x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-14)
    h = jax.hessian(lambda v: jnp.sum(_softplus(v) ** 2))(x)
    h0 = jax.hessian(lambda v: jnp.sum(jax.nn.softplus(v) ** 2))(x)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("edge", [1.0, 2.0, 6.318, 11.3])
def test_decahedron_volume_float32_matches_the_johnson_solid(edge):
    """J13's volume (5 + sqrt 5) / 12 a^3 in the default float32: the Ino planes at ino = 0 pass through the
    equatorial edges, where three coplanar normals once gave a garbage vertex (volume -4 % to +23 % off)."""
    want = (5 + math.sqrt(5)) / 12 * edge**3
    for notched in (True, False):
        s = ds.Decahedron(jnp.asarray(edge, jnp.float32), notched=notched)
        assert s.dtype == jnp.float32
        assert float(s.volume()) == pytest.approx(want, rel=1e-5)
    # the notch-free rendering of the same body: the same partial-volume fill away from the five vertices
    g = ds.VoxelGrid.around(1.0, 0.1)
    a = np.asarray(ds.Decahedron(1.0).grid_fill(g))
    b = np.asarray(ds.Decahedron(1.0, notched=False).grid_fill(g))
    assert abs(a.sum() - b.sum()) / b.sum() < 1e-3
    with pytest.raises(ValueError, match="marks"):
        ds.Decahedron(1.0, marks=0.2, notched=False)
