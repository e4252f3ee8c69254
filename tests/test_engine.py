"""Forward model (issue: MSFT engine) against independent references."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import born_ellipsoid, eq9_numpy, mie_dcs, radial_profile, rel_l2

import diffscat as ds


def _random_volume(seed=0, shape=(6, 5, 7)):
    rng = np.random.default_rng(seed)
    delta = rng.uniform(0.02, 0.08, shape)
    beta = rng.uniform(0.0, 0.05, shape)
    occ = rng.random(shape) > 0.3
    return np.where(occ, -delta + 1j * beta, 0)


PITCH = (0.3, 0.25, 0.35)


def _directions(n=40, tmax=math.radians(62), seed=1):
    rng = np.random.default_rng(seed)
    theta = np.concatenate([[0.0, tmax], rng.uniform(0, tmax, n - 2)])
    phi = rng.uniform(-np.pi, np.pi, n)
    return theta, phi


@pytest.mark.parametrize("method", ["msft", "born"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_volume_map_equals_discrete_eq9_any_directions(method, dtype):
    dn = _random_volume()
    theta, phi = _directions()
    ref = np.abs(eq9_numpy(dn, PITCH, 1.0, theta, phi, method)) ** 2
    cdt = np.complex128 if dtype == np.float64 else np.complex64
    vol = ds.VolumeMap(dn=jnp.asarray(dn, cdt), pitch=PITCH)
    exp = ds.Experiment(jnp.asarray(1.0, dtype), ds.Directions(theta.astype(dtype), phi.astype(dtype)))
    I = np.asarray(ds.simulate(vol, exp, method=method))
    assert I.dtype == dtype
    assert np.max(np.abs(I - ref)) / np.max(ref) <= 1e-3
    if dtype == np.float64:
        assert np.max(np.abs(I - ref)) / np.max(ref) <= 1e-10


@pytest.mark.parametrize("method", ["msft", "born"])
def test_separable_qgrid_equals_discrete_eq9_at_60deg(method):
    dn = _random_volume(3)
    exp = ds.Experiment(1.0, ds.QGrid(n=9, theta_max_deg=60.0))
    th, ph = np.asarray(exp.theta), np.asarray(exp.phi)
    ref = np.abs(eq9_numpy(dn, PITCH, 1.0, th, ph, method)) ** 2
    ref = np.where(np.asarray(exp.valid), ref, 0)
    vol = ds.VolumeMap(dn=dn, pitch=PITCH)
    for transform in ("separable", "direct"):
        I = np.asarray(ds.simulate(vol, exp, method=method, transform=transform))
        assert np.max(np.abs(I - ref)) / np.max(ref) <= 1e-10


def test_msft_differs_from_born_for_strong_scatterer():
    dn = _random_volume()
    theta, phi = _directions()
    exp = ds.Experiment(1.0, ds.Directions(theta, phi))
    vol = ds.VolumeMap(dn=dn, pitch=PITCH)
    a = np.asarray(ds.simulate(vol, exp))
    b = np.asarray(ds.simulate(vol, exp, method="born"))
    assert rel_l2(a, b) > 1e-2  # propagation matters in this test volume


def test_field_intensity_consistent():
    exp = ds.Experiment(1.0, ds.QGrid(16, 30.0))
    s = ds.Sphere(2.0, 0.01, 0.002)
    psi = ds.simulate(s, exp, field=True)
    assert jnp.iscomplexobj(psi)
    np.testing.assert_allclose(np.abs(psi) ** 2, ds.simulate(s, exp), rtol=1e-12)


# --- analytic Born references --------------------------------------------------------------------------


def _tilt():
    return np.asarray(ds.rotation_from_euler(jnp.array([0.4, 0.9, -0.3])))


@pytest.mark.parametrize("detector", [ds.AngleGrid(48, 40.0), ds.QGrid(48, 35.0)])
def test_born_sphere_and_tilted_ellipsoid_absolute(detector):
    lam = 1.0
    exp = ds.Experiment(lam, detector)
    th, ph = np.asarray(exp.theta), np.asarray(exp.phi)
    valid = np.asarray(exp.valid)
    dn = complex(-1e-6, 1e-7)
    cases = [
        (ds.Sphere(2.5, 1e-6, 1e-7), (2.5, 2.5, 2.5), np.eye(3)),
        (ds.Ellipsoid((1.5, 2.2, 3.4), 1e-6, 1e-7, rotation=_tilt()), (1.5, 2.2, 3.4), _tilt()),
    ]
    for shape, axes, R in cases:
        I = np.asarray(ds.simulate(shape, exp))[valid]
        ref = born_ellipsoid(axes, R, dn, lam, th, ph)[valid]
        err = rel_l2(I, ref)
        assert err <= 0.01, err
        if not np.allclose(R, np.eye(3)):
            mirror = born_ellipsoid(axes, R, dn, lam, th, ph, mirror=True)[valid]
            assert rel_l2(I, mirror) > 10 * err
            assert rel_l2(I, mirror) > 0.05


# --- Mie ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delta, beta, tol", [(0.0, 0.001, 0.01), (-0.02, 0.01, 0.02)], ids=["weak", "delta-0.02"]
)
def test_sphere_vs_mie_profile(delta, beta, tol):
    lam, R = 1.0, 7.0
    exp = ds.Experiment(lam, ds.QGrid(128, 30.0))
    th = np.asarray(exp.theta)
    I = np.asarray(ds.simulate(ds.Sphere(R, delta, beta), exp))
    bins = np.radians(np.linspace(10, 30, 81))
    ref_img = mie_dcs(R, delta, beta, lam, th)
    _, p = radial_profile(I, th, bins)
    _, r = radial_profile(ref_img, th, bins)
    w = np.diff(bins)
    err = rel_l2(p / np.sum(p * w), r / np.sum(r * w))
    assert err <= tol, err
    assert abs(np.sum(p) / np.sum(r) - 1) < 0.05


# --- gradients, jit, vmap -------------------------------------------------------------------------------

SMALL = ds.Experiment(1.0, ds.QGrid(9, 30.0))  # odd n: includes q = 0 exactly
GRID = ds.VoxelGrid((16, 16, 16), 0.25)


def _loss(shape, exp=SMALL, grid=GRID, method="msft"):
    I = ds.simulate(shape, exp, grid=grid, method=method)
    w = jnp.linspace(0.5, 1.5, I.size).reshape(I.shape)
    return jnp.sum(w * jnp.log1p(I))


def _fd_check(f, x0, eps=1e-5, rtol=2e-4):
    g = jax.grad(f)(x0)
    x0 = np.asarray(x0, float)
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = eps
        fd = (f(jnp.asarray(x0 + e)) - f(jnp.asarray(x0 - e))) / (2 * eps)
        assert np.isfinite(np.asarray(g)[i])
        np.testing.assert_allclose(np.asarray(g)[i], fd, rtol=rtol, atol=1e-8 * (1 + abs(fd)))


@pytest.mark.parametrize("method", ["msft", "born"])
def test_gradients_match_finite_differences(method):
    _fd_check(lambda r: _loss(ds.Sphere(r, 0.02, 0.01), method=method), jnp.asarray(1.3))
    _fd_check(lambda d: _loss(ds.Sphere(1.3, d, 0.01), method=method), jnp.asarray(0.02))
    _fd_check(lambda b: _loss(ds.Sphere(1.3, 0.02, b), method=method), jnp.asarray(0.01))
    _fd_check(
        lambda a: _loss(ds.Ellipsoid(a, 0.02, 0.01, rotation=_tilt()), method=method),
        jnp.array([1.0, 1.3, 1.6]),
    )
    _fd_check(
        lambda t: _loss(
            ds.Ellipsoid(
                (1.0, 1.3, 1.6), 0.02, 0.01, rotation=ds.rotation_from_euler(jnp.stack([0.4, t, -0.3]))
            ),
            method=method,
        ),
        jnp.asarray(0.9),
    )


def test_gradients_finite_at_q0_and_grazing():
    theta = jnp.array([0.0, 1e-8, 0.3, math.pi / 2 - 1e-6])
    exp = ds.Experiment(1.0, ds.Directions(theta, jnp.zeros(4)))
    for grid_exp in (exp, SMALL, ds.Experiment(1.0, ds.AngleGrid(9, 89.0))):
        g = jax.grad(lambda r: jnp.sum(ds.simulate(ds.Sphere(r, 0.01, 0.01), grid_exp, grid=GRID)))(
            jnp.asarray(1.2)
        )
        assert np.isfinite(g)

    # gradients through the detector geometry
    def f(D, c):
        det = ds.FlatDetector(D, 0.5, (7, 7), center=c)
        return jnp.sum(ds.simulate(ds.Sphere(1.2, 0.01, 0.0), ds.Experiment(1.0, det), grid=GRID))

    gD, gc = jax.grad(f, argnums=(0, 1))(jnp.asarray(5.0), jnp.array([3.0, 3.0]))
    assert np.isfinite(gD) and np.all(np.isfinite(gc))


def test_jit_vmap_grad_agree():
    radii = [1.1, 1.2, 1.3, 1.4]
    shapes = [ds.Sphere(r, 0.01, 0.002) for r in radii]
    singles = np.stack([np.asarray(ds.simulate(s, SMALL, grid=GRID)) for s in shapes])
    batch = ds.stack(shapes)
    vm = jax.vmap(lambda s: ds.simulate(s, SMALL, grid=GRID))(batch)
    np.testing.assert_allclose(vm, singles, rtol=1e-10)
    # default grid under vmap: the stacked hint fixes one grid
    vm2 = jax.vmap(lambda s: ds.simulate(s, SMALL))(batch)
    assert vm2.shape == (4, 9, 9)
    jf = eqx.filter_jit(ds.simulate)
    np.testing.assert_allclose(jf(shapes[0], SMALL, grid=GRID), singles[0], rtol=1e-10)
    g_single = jax.grad(lambda r: _loss(ds.Sphere(r, 0.01, 0.002)))(jnp.asarray(1.2))
    g_batch = jax.vmap(jax.grad(lambda r: _loss(ds.Sphere(r, 0.01, 0.002))))(jnp.asarray(radii))
    np.testing.assert_allclose(g_batch[1], g_single, rtol=1e-10)


def test_filter_jit_compiles_once_per_geometry():
    exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
    f = eqx.debug.assert_max_traces(ds.simulate, max_traces=1)
    jf = eqx.filter_jit(f)
    a = jf(ds.Sphere(2.02, 0.01, 0.001), exp)
    b = jf(ds.Sphere(2.1, 0.02, 0.003), exp)  # same grid-size rung, new values: no retrace
    assert a.shape == b.shape == (8, 8)
    assert not np.allclose(a, b)


def test_float32_default():
    with jax.experimental.disable_x64() if hasattr(jax.experimental, "disable_x64") else _x64(False):
        exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
        I = ds.simulate(ds.Sphere(2.0, 0.01, 0.001), exp)
        assert I.dtype == jnp.float32


class _x64:
    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self.old = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", self.on)

    def __exit__(self, *a):
        jax.config.update("jax_enable_x64", self.old)


def test_coarse_pitch_warns_with_advice():
    exp = ds.Experiment(1.0, ds.QGrid(16, 30.0))
    with pytest.warns(ds.ValidityWarning, match="Set pitch <="):
        ds.simulate(ds.Sphere(2.0, 0.01, 0.0), exp, pitch=1.2)


def test_strong_scatterer_warns():
    exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
    with pytest.warns(ds.ValidityWarning, match="not quantitative"):
        ds.simulate(ds.Sphere(1.0, 0.2, 0.0), exp)


def test_on_axis_detector_alone_simulates_forward_scattering():
    """A detector with every pixel at theta = 0 (forward direction) cannot alias: no division by sin(0).
    Forward Born amplitude of a weak sphere: |Psi| = k0^2 / (2 pi) |dn| V."""
    exp = ds.Experiment(1.0, ds.Directions([0.0], [0.0]))
    s = ds.Sphere(2.0, 0.0, 1e-4)
    I = np.asarray(ds.simulate(s, exp, method="born", pitch=0.1))  # default pitch is lambda/2 here
    k0 = 2 * np.pi
    V = 4 / 3 * np.pi * 2.0**3
    # rtol: the rendered volume of a curved surface at pitch R/20 is right to ~5e-4 (intensity ~1e-3)
    np.testing.assert_allclose(I, (k0**2 / (2 * np.pi) * 1e-4 * V) ** 2, rtol=3e-3)
