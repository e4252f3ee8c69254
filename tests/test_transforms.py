"""Fast far-field routes (issue 7) against the brute-force discrete eq. 9 in NumPy (references.eq9_numpy)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import eq9_numpy

import diffscat as ds
from diffscat.engines import (
    chebyshev_planes,
    chebyshev_t,
    compressed_far_field,
    interpolated_far_field,
    slice_sources,
    uniform_grid_spec,
)

PITCH = (0.3, 0.25, 0.35)
# float32 tolerance of the issue (1e-4 relative to the peak); float64 shows the routes are exact
TOL = {np.float32: 1e-4, np.float64: 1e-9}


def _volume(seed=0, shape=(9, 8, 11)):
    rng = np.random.default_rng(seed)
    occ = rng.random(shape) > 0.3
    dn = -rng.uniform(0.01, 0.05, shape) + 1j * rng.uniform(0.0, 0.03, shape)
    return np.where(occ, dn, 0)


def _check(I, ref, dtype):
    err = np.max(np.abs(np.asarray(I) - ref)) / np.max(ref)
    assert err <= TOL[dtype], err


def _experiment(det, dtype):
    return ds.Experiment(jnp.asarray(1.0, dtype), det)


DETECTORS = {
    "qgrid-even": lambda: ds.QGrid(24, 35.0),
    "qgrid-odd": lambda: ds.QGrid(17, 50.0),  # odd n includes q = 0; corners beyond 45 deg
    "anglegrid": lambda: ds.AngleGrid(20, 30.0),
    "flat-off-centre": lambda: ds.FlatDetector(40.0, 1.5, (18, 23), center=(5.3, 13.0)),
    "directions-wide": lambda: ds.Directions(
        np.linspace(0.0, math.radians(70), 15), np.linspace(-3.0, 3.0, 15)
    ),  # beyond 64 deg: compressed direct sum
}


@pytest.mark.parametrize(
    "name, method",
    [(n, "msft") for n in DETECTORS] + [("qgrid-odd", "born"), ("flat-off-centre", "born")],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_route_equals_eq9(name, method, dtype):
    dn = _volume()
    exp = _experiment(DETECTORS[name](), dtype)
    cdt = np.complex64 if dtype == np.float32 else np.complex128
    vol = ds.VolumeMap(dn=jnp.asarray(dn, cdt), pitch=PITCH)
    th, ph = np.asarray(exp.theta, float), np.asarray(exp.phi, float)
    ref = np.abs(eq9_numpy(dn, PITCH, 1.0, th, ph, method)) ** 2
    ref = np.where(np.asarray(exp.valid), ref, 0.0)
    I = ds.simulate(vol, exp, method=method, transform="fast")
    assert I.dtype == dtype
    _check(I, ref, dtype)


@pytest.mark.parametrize("layout", ["separable", "direct"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compressed_layouts_on_asymmetric_axes(layout, dtype):
    """The general separable and direct plane sums, on q axes that are not symmetric about 0."""
    dn = _volume(1)
    grid = ds.VoxelGrid(dn.shape, PITCH)
    k0 = 2 * np.pi
    qx = np.linspace(-0.4, 2.5, 13) * 1.0
    qy = np.linspace(-1.9, 0.7, 10)
    QX, QY = np.meshgrid(qx, qy, indexing="xy")
    st = np.sqrt(QX**2 + QY**2) / k0
    theta, phi = np.arcsin(st), np.arctan2(QY, QX)
    qz = k0 * (1 - np.cos(theta))
    ref = eq9_numpy(dn, PITCH, 1.0, theta, phi)
    cdt = np.complex64 if dtype == np.float32 else np.complex128
    U = slice_sources(jnp.asarray(dn, cdt), grid, jnp.asarray(k0, dtype), "msft")
    rng = (0.0, float(qz.max()) * 1.01)
    if layout == "separable":
        psi = compressed_far_field(
            U, grid, *(jnp.asarray(a, dtype) for a in (qx, qy, qz)), rng, layout=layout
        )
    else:
        args = (jnp.asarray(a.ravel(), dtype) for a in (QX, QY, qz))
        psi = compressed_far_field(U, grid, *args, rng, layout=layout).reshape(qz.shape)
    _check(np.abs(np.asarray(psi)) ** 2, np.abs(ref) ** 2, dtype)


def test_chebyshev_planes_meet_their_bound():
    z = (np.arange(40) - 19.5) * 0.3
    for h, tol in [(0.5, 1e-7), (1.0, 1e-12), (1.5, 1e-14)]:
        C = chebyshev_planes(z, h, tol)
        assert C.shape[0] == 40 and C.shape[1] < 40
        t = np.linspace(-h, h, 101)
        exact = np.exp(1j * t[:, None] * z[None, :])
        T = np.cos(np.arange(C.shape[1])[None, :] * np.arccos(t[:, None] / h))  # T_k(t/h), independent
        assert np.max(np.abs(exact - T @ C.T)) <= max(tol, 1e-13), (h, tol)
        np.testing.assert_allclose(np.asarray(chebyshev_t(jnp.asarray(t / h), C.shape[1])), T, atol=1e-12)
    # compression that would not reduce the slice count is declined
    assert chebyshev_planes(z, 50.0, 1e-14) is None


def test_interpolation_error_decreases_with_taps():
    """Interpolated route against the exact per-pixel sum: error falls with taps and oversampling."""
    dn = _volume(2, (10, 10, 10))
    grid = ds.VoxelGrid(dn.shape, 0.25)
    k0 = 2 * np.pi
    rng = np.random.default_rng(0)
    theta = rng.uniform(0, math.radians(30), 60)
    phi = rng.uniform(-np.pi, np.pi, 60)
    ref = eq9_numpy(dn, (0.25,) * 3, 1.0, theta, phi)
    U = slice_sources(jnp.asarray(dn), grid, jnp.asarray(k0), "msft")
    sx, sy = jnp.asarray(np.sin(theta) * np.cos(phi)), jnp.asarray(np.sin(theta) * np.sin(phi))
    errs = []
    for ov, taps in [(2.0, 6), (4.0, 8), (4.0, 12)]:  # 3 compilations, ~10 s under load
        spec = uniform_grid_spec(grid, k0, math.sin(math.radians(31)), ov, taps)
        psi = interpolated_far_field(U, grid, jnp.asarray(k0), sx, sy, spec, (0.0, k0), taps=taps)
        errs.append(np.max(np.abs(np.asarray(psi) - ref)) / np.max(np.abs(ref)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[1] < 1e-6 and errs[2] < 1e-9, errs


# --- gradients through the fast routes ---------------------------------------------------------------------

GRID = ds.VoxelGrid((14, 14, 14), 0.25)


def _fd(f, x0, eps=1e-5):
    return (f(x0 + eps) - f(x0 - eps)) / (2 * eps)


def test_gradient_radius_fast_qgrid_and_flat():
    for det in (ds.QGrid(10, 30.0), ds.FlatDetector(30.0, 2.0, (9, 8), center=(3.6, 4.2))):
        exp = ds.Experiment(1.0, det)

        @jax.jit
        def loss(r, exp=exp):
            I = ds.simulate(ds.Sphere(r, 0.02, 0.01), exp, grid=GRID, transform="fast")
            return jnp.sum(jnp.log1p(I))

        g = jax.jit(jax.grad(loss))(jnp.asarray(1.3))
        fd = _fd(loss, jnp.asarray(1.3))
        assert np.isfinite(g)
        np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_gradient_detector_geometry_through_interpolation():
    """Distance and centre are traced leaves of a concretely built experiment: the interpolated route runs
    (static hint kept) and its gradients match finite differences and the exact direct route."""
    exp0 = ds.Experiment(1.0, ds.FlatDetector(30.0, 2.0, (7, 6), center=(3.1, 2.2)))
    shape = ds.Sphere(1.3, 0.02, 0.01, centre=jnp.array([0.1, -0.2, 0.05]))
    grid = ds.VoxelGrid((12, 12, 12), 0.25)

    def make(transform):
        @jax.jit
        def loss(p):
            exp = eqx.tree_at(lambda e: (e.detector.distance, e.detector.center), exp0, (p[0], p[1:]))
            I = ds.simulate(shape, exp, grid=grid, transform=transform)
            return jnp.sum(jnp.log1p(I) * jnp.linspace(0.5, 1.5, I.size).reshape(I.shape))

        return loss

    fast, direct = make("fast"), make("direct")
    p0 = jnp.array([30.0, 3.1, 2.2])
    g = jax.jit(jax.grad(fast))(p0)
    np.testing.assert_allclose(g, jax.jit(jax.grad(direct))(p0), rtol=1e-6, atol=1e-12)
    for i in range(3):
        e = jnp.zeros(3).at[i].set(1e-5)
        fd = (fast(p0 + e) - fast(p0 - e)) / 2e-5
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-10)


def test_float32_gradient_matches_float64():
    exp32 = ds.Experiment(jnp.asarray(1.0, jnp.float32), ds.QGrid(12, 30.0))
    exp64 = ds.Experiment(1.0, ds.QGrid(12, 30.0))

    def loss(r, exp):
        return jnp.sum(jnp.sqrt(ds.simulate(ds.Sphere(r, 0.02, 0.01), exp, grid=GRID, transform="fast")))

    g32 = jax.jit(jax.grad(loss))(jnp.asarray(1.3, jnp.float32), exp32)
    g64 = jax.jit(jax.grad(loss))(jnp.asarray(1.3), exp64)
    assert g32.dtype == jnp.float32
    np.testing.assert_allclose(g32, g64, rtol=1e-4)


# --- errors -------------------------------------------------------------------------------------------------


def test_fast_needs_concrete_experiment():
    def f(lam):
        exp = ds.Experiment(lam, ds.FlatDetector(30.0, 2.0, (6, 6)))
        return ds.simulate(ds.Sphere(1.0, 0.01, 0.0), exp, grid=GRID, transform="fast")

    with pytest.raises(ValueError, match="transform='fast' needs"):
        jax.jit(f)(1.0)


def test_geometry_outside_static_range_raises():
    exp0 = ds.Experiment(1.0, ds.FlatDetector(30.0, 2.0, (9, 8)))
    exp = eqx.tree_at(lambda e: e.detector.distance, exp0, jnp.asarray(15.0))  # angles double
    with pytest.raises(Exception, match="static range"):
        ds.simulate(ds.Sphere(1.0, 0.01, 0.0), exp, grid=GRID).block_until_ready()
    # the exact routes still work
    I = ds.simulate(ds.Sphere(1.0, 0.01, 0.0), exp, grid=GRID, transform="direct")
    assert np.all(np.isfinite(np.asarray(I)))


def test_bad_layout_and_range():
    U = jnp.zeros((4, 4, 4), jnp.complex128)
    grid = ds.VoxelGrid((4, 4, 4), 0.25)
    q = jnp.zeros(3)
    with pytest.raises(ValueError, match="layout"):
        compressed_far_field(U, grid, q, q, q, (0.0, 1.0), layout="fft")
    with pytest.raises(ValueError, match="qz_range"):
        compressed_far_field(U, grid, q, q, q, (1.0, 0.0), layout="direct")
