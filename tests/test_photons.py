"""Photons per pixel, solid angles, polarisation, detector responses, masks and their gradients.

References are independent: scipy quadrature of the solid angle and of the analytic Born sphere, Mie
(miepython) for the polarisation, NumPy re-implementations of the documented response formulas.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import sphere_amplitude
from scipy import integrate

import diffscat as ds
from diffscat import detectors as dt


def born_sphere_dcs(radius, delta, beta, wavelength, theta):
    """Analytic first-Born dsigma/dOmega of a uniform sphere (docs/conventions.md), NumPy."""
    k0 = 2 * np.pi / wavelength
    dn = complex(-delta, beta)
    q = 2 * k0 * np.sin(np.asarray(theta) / 2)
    V = 4 / 3 * np.pi * radius**3
    return np.abs(k0**2 / (4 * np.pi) * ((1 + dn) ** 2 - 1) * V * sphere_amplitude(q * radius)) ** 2


# ---------------------------------------------------------------------------------------- solid angles


def test_solid_angle_qgrid_sums_to_analytic():
    # Area |sx|, |sy| <= s in direction-cosine space: Omega = int int dsx dsy / sqrt(1 - sx^2 - sy^2)
    # = 4 int_0^s arcsin(s / sqrt(1 - x^2)) dx (inner integral analytic).
    s = math.sin(math.radians(30.0))
    ref = (
        4 * integrate.quad(lambda x: math.asin(s / math.sqrt(1 - x * x)), 0, s, epsabs=1e-14, epsrel=1e-13)[0]
    )
    got = float(ds.Experiment(1.0, ds.QGrid(64, 30.0)).solid_angle.sum())
    assert abs(got / ref - 1) < 1e-4  # measured -3.5e-5 at n = 64 (midpoint rule, error ~ 1/n^2)


def test_solid_angle_anglegrid_sums_to_analytic():
    t = math.radians(30.0)
    ref = 4 * integrate.dblquad(lambda y, x: np.sinc(math.hypot(x, y) / np.pi), 0, t, 0, t, epsabs=1e-14)[0]
    got = float(ds.Experiment(1.0, ds.AngleGrid(32, 30.0)).solid_angle.sum())
    assert abs(got / ref - 1) < 1e-4  # measured 3.0e-5 at n = 32


def _rect_solid_angle(x0, x1, y0, y1, D):
    F = lambda x, y: math.atan(x * y / (D * math.sqrt(D * D + x * x + y * y)))
    return F(x1, y1) - F(x0, y1) - F(x1, y0) + F(x0, y0)


def test_solid_angle_flat_detector_sums_to_analytic():
    D, p, (ny, nx), (cy, cx) = 40.0, (0.7, 0.5), (20, 30), (8.3, 12.6)
    det = ds.FlatDetector(D, p, (ny, nx), center=(cy, cx))
    got = float(ds.Experiment(1.0, det).solid_angle.sum())
    ref = _rect_solid_angle(
        -(cx + 0.5) * p[1], (nx - 0.5 - cx) * p[1], -(cy + 0.5) * p[0], (ny - 0.5 - cy) * p[0], D
    )
    assert abs(got / ref - 1) < 1e-12


def test_solid_angle_tilted_flat_detector_matches_quadrature():
    D, p, shape, c, tilt = 30.0, 1.0, (12, 16), (5.2, 7.9), (0.2, -0.35)
    det = ds.FlatDetector(D, p, shape, center=c, tilt=tilt)
    R = np.asarray(det.tilt_matrix())
    n = R[:, 2]

    def integrand(Y, X):  # d Omega = (n . P) / |P|^3 dA
        P = np.array([0, 0, D]) + X * R[:, 0] + Y * R[:, 1]
        return abs(n @ P) / np.linalg.norm(P) ** 3

    X0, X1 = -(c[1] + 0.5) * p, (shape[1] - 0.5 - c[1]) * p
    Y0, Y1 = -(c[0] + 0.5) * p, (shape[0] - 0.5 - c[0]) * p
    ref = integrate.dblquad(integrand, X0, X1, Y0, Y1, epsabs=1e-13, epsrel=1e-11)[0]
    sa = np.asarray(det.pixels().solid_angle)
    assert abs(sa.sum() / ref - 1) < 1e-9
    # One pixel on its own too (the corner formula is exact per pixel).
    iy, ix = 3, 11
    Xp, Yp = (ix - c[1]) * p, (iy - c[0]) * p
    ref1 = integrate.dblquad(integrand, Xp - 0.5, Xp + 0.5, Yp - 0.5, Yp + 0.5, epsabs=1e-14, epsrel=1e-12)[0]
    assert abs(sa[iy, ix] / ref1 - 1) < 1e-9


def test_tilted_detector_directions_follow_the_plane():
    D, tilt = 50.0, (0.1, 0.3)
    det = ds.FlatDetector(D, 2.0, (9, 11), tilt=tilt)
    exp = ds.Experiment(1.0, det)
    # Independent construction of R = Ry(ty) Rx(tx) and of the pixel positions.
    tx, ty = tilt
    Rx = np.array([[1, 0, 0], [0, np.cos(tx), -np.sin(tx)], [0, np.sin(tx), np.cos(tx)]])
    Ry = np.array([[np.cos(ty), 0, np.sin(ty)], [0, 1, 0], [-np.sin(ty), 0, np.cos(ty)]])
    R = Ry @ Rx
    iy, ix = np.mgrid[0:9, 0:11]
    X, Y = (ix - 5.0) * 2.0, (iy - 4.0) * 2.0
    P = np.array([0, 0, D]) + X[..., None] * R[:, 0] + Y[..., None] * R[:, 1]
    th = np.arccos(P[..., 2] / np.linalg.norm(P, axis=-1))
    ph = np.arctan2(P[..., 1], P[..., 0])
    np.testing.assert_allclose(np.asarray(exp.theta), th, atol=1e-12)
    m = th > 1e-9
    np.testing.assert_allclose(np.asarray(exp.phi)[m], ph[m], atol=1e-12)


# ---------------------------------------------------------------------------------------- photons


def test_total_photons_equal_fluence_times_integrated_cross_section():
    lam, R, D, p, shape = 1.0, 1.2, 30.0, 0.5, (48, 64)
    det = ds.FlatDetector(D, p, shape, center=(20.0, 30.5))
    exp = ds.Experiment(lam, det)
    I = born_sphere_dcs(R, 0.0, 0.01, lam, np.asarray(exp.theta))
    fluence = 250.0
    N = float(dt.expected_photons(jnp.asarray(I), exp, fluence).sum())

    def integrand(Y, X):  # dsigma/dOmega dOmega on the plane: dOmega = D / r^3 dX dY
        r = math.sqrt(X * X + Y * Y + D * D)
        return born_sphere_dcs(R, 0.0, 0.01, lam, math.acos(D / r)) * D / r**3

    X0, X1 = -30.5 * p - p / 2, (63 - 30.5) * p + p / 2
    Y0, Y1 = -20.0 * p - p / 2, (47 - 20.0) * p + p / 2
    ref = fluence * integrate.dblquad(integrand, X0, X1, Y0, Y1, epsrel=1e-10)[0]
    assert abs(N / ref - 1) < 1e-3
    # Through the simulator (MSFT vs Born differ by ~ percent for this weak sphere).
    Isim = ds.simulate(ds.Sphere(R, 0.0, 0.01), exp, method="born")
    Nsim = float(dt.expected_photons(Isim, exp, fluence).sum())
    assert abs(Nsim / ref - 1) < 0.02


def test_pulse_energy_to_fluence():
    lam_nm = 13.5
    hv = float(dt.photon_energy(lam_nm, 1e-9))
    assert abs(hv / (6.62607015e-34 * 299792458.0 / 13.5e-9) - 1) < 1e-12
    assert abs(hv / 1.602176634e-19 - 91.84) < 0.01  # 13.5 nm = 91.8 eV
    f = float(dt.fluence_from_pulse(1e-5, hv, 1e6, transmission=0.5))  # 10 uJ on 1 um^2 (in nm^2)
    assert abs(f - 0.5 * 1e-5 / hv / 1e6) < 1e-9 * f


def test_poisson_mean_and_variance_match_expected_photons(getkey):
    exp = ds.Experiment(1.0, ds.QGrid(12, 30.0))
    I = born_sphere_dcs(1.5, 0.0, 0.01, 1.0, np.asarray(exp.theta))
    lam = dt.expected_photons(jnp.asarray(I), exp, 1.0)
    lam = lam * (20.0 / lam.max())  # 20 photons at the peak, down to ~0.05
    M = 2000
    draws = np.asarray(dt.Poisson()(jnp.broadcast_to(lam, (M, *lam.shape)), jax.random.key(7)))
    lam = np.asarray(lam)
    mean, var = draws.mean(0), draws.var(0, ddof=1)
    # Per pixel: the sample mean is within 5 standard errors sqrt(lam / M).
    assert np.all(np.abs(mean - lam) < 5 * np.sqrt(lam / M) + 1e-12)
    # Variance: Poisson var = lam; the pooled ratio is within 2 % (its std is ~ sqrt(2/M)/sqrt(npix) < 0.2 %).
    assert abs(np.sum(var) / np.sum(lam) - 1) < 0.02
    # Reproducible with a key; different keys differ; total counts near the expected total.
    k = getkey()
    np.testing.assert_array_equal(dt.Poisson()(lam, k), dt.Poisson()(lam, k))
    assert abs(draws.sum((1, 2)).mean() - lam.sum()) < 5 * math.sqrt(lam.sum() / M)
    with pytest.raises(ValueError, match="key"):
        dt.Poisson()(lam)


# ---------------------------------------------------------------------------------------- polarisation


def test_polarisation_factor_matches_mie_x_polarised_pattern():
    import miepython

    lam, R = 1.0, 0.06
    k0 = 2 * np.pi / lam
    exp = ds.Experiment(lam, ds.AngleGrid(16, 80.0))
    th, ph = np.asarray(exp.theta), np.asarray(exp.phi)
    valid = np.asarray(exp.valid)
    mu = np.cos(th[valid])
    S1, S2 = miepython.S1_S2(complex(1.0, 0.01), k0 * R, mu, norm="wiscombe")
    # Incident field along x: |S2|^2 in the x-z plane, |S1|^2 in the y-z plane.
    mie = np.abs(S2) ** 2 * np.cos(ph[valid]) ** 2 + np.abs(S1) ** 2 * np.sin(ph[valid]) ** 2
    I = np.asarray(ds.simulate(ds.Sphere(R, 0.0, 0.01), exp, pitch=R / 4))[valid]
    for kind, expect_ok in (("x", True), ("y", False), ("none", False)):
        pol = np.asarray(dt.polarisation_factor(exp, kind))[valid]
        a, b = I * pol, mie
        err = np.linalg.norm(a / a.sum() - b / b.sum()) / np.linalg.norm(b / b.sum())
        assert (err < 0.01) == expect_ok, (kind, err)


def test_polarisation_factors_formulas():
    exp = ds.Experiment(1.0, ds.AngleGrid(9, 50.0))
    th, ph = np.asarray(exp.theta), np.asarray(exp.phi)
    np.testing.assert_allclose(
        dt.polarisation_factor(exp, "y"), 1 - np.sin(th) ** 2 * np.sin(ph) ** 2, atol=1e-14
    )
    np.testing.assert_allclose(
        dt.polarisation_factor(exp, "unpolarised"), (1 + np.cos(th) ** 2) / 2, atol=1e-14
    )
    with pytest.raises(ValueError, match="polarisation"):
        dt.polarisation_factor(exp, "z")


# ---------------------------------------------------------------------------------------- responses


def test_response_pieces_match_numpy(getkey):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 50, (6, 8))
    np.testing.assert_allclose(dt.Binning(2)(x), x.reshape(3, 2, 4, 2).sum((1, 3)))
    np.testing.assert_allclose(dt.Saturation(20.0)(x), np.minimum(x, 20.0))
    np.testing.assert_allclose(dt.Saturation(20.0, "smooth")(x), 20 * np.tanh(x / 20))
    np.testing.assert_allclose(dt.Background(3.0)(x), x + 3)
    mcp = dt.MCPGain(gain=4.0, gamma=0.7, saturation=60.0, hole_radius=1.6, center=(2.5, 3.5))
    ref = 60 * np.tanh(4.0 * x**0.7 / 60)
    iy, ix = np.mgrid[0:6, 0:8]
    ref[(iy - 2.5) ** 2 + (ix - 3.5) ** 2 < 1.6**2] = 0
    np.testing.assert_allclose(mcp(x), ref, rtol=1e-12)
    assert np.sum(ref == 0) == 12  # offsets (+-0.5, +-0.5) and (+-1.5, +-0.5), (+-0.5, +-1.5)
    g = dt.GaussianReadout(2.0)(jnp.zeros((200, 200)), getkey())
    assert abs(float(g.std()) - 2.0) < 0.03 and abs(float(g.mean())) < 0.03
    ch = dt.Chain(dt.Background(1.0), dt.Poisson(), dt.GaussianReadout(0.5), dt.Saturation(30.0))
    k = getkey()
    np.testing.assert_array_equal(ch(x, k), ch(x, k))
    assert float(ch(x, k).max()) <= 30.0
    with pytest.raises(ValueError, match="divide"):
        dt.Binning(3)(x)
    with pytest.raises(ValueError, match="mode"):
        dt.Saturation(1.0, "soft")
    with pytest.raises(ValueError, match="level"):
        dt.Saturation(-1.0)


def test_masks():
    shape = (10, 12)
    iy, ix = np.mgrid[0:10, 0:12]
    np.testing.assert_array_equal(
        dt.circular_mask(shape, (4.5, 5.0), 2.5), (iy - 4.5) ** 2 + (ix - 5.0) ** 2 >= 2.5**2
    )
    r = dt.rectangular_mask(shape, (0, 3), (5, 7))
    assert r.sum() == 120 - 6 and not r[2, 6] and r[3, 6]
    g = dt.panel_gaps(shape, rows=[4], cols=[6], width=2)
    assert not g[5, 0] and not g[0, 7] and g[3, 5] and g.sum() == (10 - 2) * (12 - 2)
    b = dt.bad_pixels(shape, [(1, 2), (9, 11)])
    assert b.sum() == 118 and not b[9, 11]
    bits = np.zeros(shape, np.uint32)
    bits[0, 0] = dt.CXI_SATURATED
    bits[1, 1] = dt.CXI_MISSING | dt.CXI_DEAD
    use = dt.from_cxi_bitmask(bits)
    assert use.sum() == 118 and not use[0, 0] and not use[1, 1]
    assert dt.from_cxi_bitmask(bits, bad_bits=dt.CXI_MISSING).sum() == 119
    np.testing.assert_array_equal(dt.to_cxi_bitmask(use) == 0, use)
    both = dt.combine_masks(r, g, b)
    np.testing.assert_array_equal(both, r & g & b)
    with pytest.raises(ValueError, match="shapes differ"):
        dt.combine_masks(r, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="outside"):
        dt.bad_pixels(shape, [(10, 0)])


# ---------------------------------------------------------------------------------------- gradients


def test_gradients_beam_centre_distance_fluence_tilt_match_finite_differences():
    lam, shape = 1.0, (6, 7)
    sphere = ds.Sphere(2.0, 0.0, 0.01)
    exp0 = ds.Experiment(lam, ds.FlatDetector(20.0, 2.0, shape, center=(2.3, 3.1)))
    grid = ds.default_grid(sphere, exp0)
    w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, shape))
    mcp = dt.MCPGain(gain=2.0, gamma=0.8, saturation=500.0)

    @jax.jit
    def f(params):
        cy, cx, D, F, tx, ty = params
        det = ds.FlatDetector(D, 2.0, shape, center=jnp.stack([cy, cx]), tilt=jnp.stack([tx, ty]))
        exp = ds.Experiment(lam, det)
        I = ds.simulate(sphere, exp, grid=grid)
        N = dt.expected_photons(I, exp, F, polarisation="x")
        return jnp.sum(w * mcp(N))

    x0 = jnp.array([2.3, 3.1, 20.0, 3.0, 0.05, -0.04])
    g = np.asarray(jax.grad(f)(x0))
    assert np.all(np.isfinite(g)) and np.all(g != 0)
    for i, h in enumerate((1e-4,) * 6):
        e = np.zeros(6)
        e[i] = h
        fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
        assert abs(fd - g[i]) < 1e-5 * max(abs(fd), 1e-3 * abs(float(f(x0)))), (i, fd, g[i])
