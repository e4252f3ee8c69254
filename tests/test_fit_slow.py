"""Acceptance fits at larger sizes (marked slow; run with `pytest -m slow tests/test_fit_slow.py`).

Data never come from the fitted model's own setting: the exact Mie series, or diffscat simulations on a
finer voxel grid, with Poisson noise and a beamstop.
"""

import numpy as np
import pytest
from references import mie_dcs

import diffscat as ds
import fitting

pytestmark = pytest.mark.slow
LAM = 1.0


def _noisy(mean, photons, seed):
    return np.random.default_rng(seed).poisson(mean / mean.sum() * photons).astype(float)


def _fine_signal(shape, exp, pitch=LAM / 7):
    grid = ds.VoxelGrid.around(float(shape.bounding_radius()) + 0.5, pitch)
    return np.asarray(fitting.expected_signal(shape, exp, grid), float)


@pytest.mark.parametrize("delta", [0.0, -0.01, -0.02])
def test_mie_sphere_radius_one_percent(delta):
    R = 5.0
    exp = ds.Experiment(LAM, ds.QGrid(n=64, theta_max_deg=30.0))
    th = np.asarray(exp.theta)
    mean = mie_dcs(R, delta, 0.001, LAM, th, polarisation="unpolarised") * np.asarray(exp.solid_angle)
    data = _noisy(mean, 1e6, 11)
    mask = th > np.radians(2.5)
    res = fitting.fit(data, exp, ds.Sphere(1.15 * R, delta, 0.001), mask, polarisation="unpolarised")
    r = float(res.model.radius)
    print(
        f"delta {delta}: radius {r:.4f} +- {float(res.sigmas['radius']):.4f} (true {R}), {res.n_steps} steps"
    )
    assert abs(r - R) / R < 0.01


def test_beam_centre_offset_recovered():
    ny = nx = 40
    R = 3.0
    true_c = ((ny - 1) / 2 + 1.5, (nx - 1) / 2 - 0.5)
    truth = ds.Sphere(R, delta=-0.01, beta=0.001)
    exp_true = ds.Experiment(LAM, ds.FlatDetector(100.0, 2.4, (ny, nx), true_c))
    data = _noisy(_fine_signal(truth, exp_true), 1e6, 1)
    nominal = ds.Experiment(LAM, ds.FlatDetector(100.0, 2.4, (ny, nx)))
    mask = np.asarray(nominal.theta) > np.radians(2.5)
    c0 = fitting.estimate_center(data, mask)
    res = fitting.fit(data, nominal, ds.Sphere(0.95 * R, -0.01, 0.001), mask, free=("radius", "beam_center"))
    c = np.asarray(res.experiment.detector.center)
    print(f"centre estimate {c0}, fitted {c} +- {res.sigmas['beam_center']}, true {true_c}")
    assert np.allclose(c0, true_c, atol=0.5)
    assert np.all(np.abs(c - np.asarray(true_c)) < 0.2)


def _axis_angles(R_fit, ax_fit, R_true, ax_true):
    out = []
    for i, j in zip(np.argsort(ax_fit), np.argsort(ax_true), strict=True):
        out.append(np.degrees(np.arccos(min(1.0, abs(float(R_fit[:, i] @ R_true[:, j]))))))
    return np.array(out)


def test_triaxial_ellipsoid_random_orientation():
    exp = ds.Experiment(LAM, ds.QGrid(n=48, theta_max_deg=30.0))
    R_true = fitting.random_rotations(1, 3)[0]
    ax_true = np.array([4.0, 5.0, 6.0])
    truth = ds.Ellipsoid(ax_true, delta=-0.01, beta=0.001, rotation=R_true)
    data = _noisy(_fine_signal(truth, exp), 2e6, 5)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    res = fitting.fit_ellipsoid_auto(data, exp, mask, delta=-0.01, beta=0.001, n_starts=8)
    ax = np.asarray(res.model.semi_axes)
    ang = _axis_angles(np.asarray(res.model.rotation), ax, R_true, ax_true)
    rel = np.abs(np.sort(ax) - ax_true) / ax_true
    print(
        f"axes {np.sort(ax)} (true {ax_true}), axis angles {ang} deg, sigmas {res.sigmas}, {res.time_s:.1f} s"
    )
    print(f"{len(res.alternatives)} alternatives; start losses {np.sort(res.start_losses)[:4]}")
    assert np.all(rel < 0.02)
    assert np.all(ang < 2.0)


def _iou(a, b, pts):
    A = np.asarray(a.occupancy(pts)) > 0.5
    B = np.asarray(b.occupancy(pts)) > 0.5
    return (A & B).sum() / (A | B).sum()


def test_spherical_harmonics_ladder_iou():
    exp = ds.Experiment(LAM, ds.QGrid(n=48, theta_max_deg=30.0))
    rng = np.random.default_rng(3)
    R = 4.0
    c = np.zeros(16)
    c[0] = R * np.sqrt(4 * np.pi)
    c[1:] = rng.normal(size=15) * 0.1 * c[0] / np.sqrt(15)  # rms radius deformation 10 %, lmax 3
    truth = ds.SphericalHarmonics(c, -0.01, 0.001, rotation=fitting.random_rotations(1, 5)[0])
    data = _noisy(_fine_signal(truth, exp, LAM / 6), 1e6, 4)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    res = fitting.fit_spherical_harmonics(data, exp, 3, mask, delta=-0.01, beta=0.001)
    g = ds.VoxelGrid.around(1.3 * float(truth.bounding_radius()), 0.1)
    pts = g.points()
    iou = max(_iou(truth, res.model, pts), _iou(truth, res.model, -pts))  # up to the point-inversion twin
    print(f"IoU {iou:.3f}; stage times {[round(s.time_s, 1) for s in res.stages]}")
    assert iou >= 0.9


def test_sigma_calibrated_over_noise_draws():
    R = 3.0
    exp = ds.Experiment(LAM, ds.QGrid(n=32, theta_max_deg=30.0))
    truth = ds.Sphere(R, -0.01, 0.001)
    mean = _fine_signal(truth, exp)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    radii, sig = [], []
    grid = None
    for k in range(20):
        data = _noisy(mean, 2e5, 100 + k)
        res = fitting.fit(data, exp, ds.Sphere(1.02 * R, -0.01, 0.001), mask, grid=grid)
        grid = res.grid
        radii.append(float(res.model.radius))
        sig.append(float(res.sigmas["radius"]))
    scatter, sigma = np.std(radii, ddof=1), np.mean(sig)
    print(f"scatter {scatter:.5f}, mean sigma {sigma:.5f}, ratio {scatter / sigma:.3f}")
    assert 1 / 1.5 < scatter / sigma < 1.5


def test_multistart_keeps_best_and_merges_duplicates():
    exp = ds.Experiment(LAM, ds.QGrid(n=24, theta_max_deg=30.0))
    truth = ds.Sphere(2.5, -0.01, 0.001)
    data = _noisy(_fine_signal(truth, exp, LAM / 6), 1e6, 0)
    starts = [ds.Sphere(r, -0.01, 0.001) for r in (2.4, 2.6, 1.6)]
    res = fitting.fit(data, exp, starts)
    assert res.n_starts == 3 and res.start_losses.shape == (3,)
    assert abs(float(res.model.radius) - 2.5) / 2.5 < 0.01
    assert np.isclose(res.loss, res.start_losses.min())
    # the two starts near the truth reach one solution (not an "alternative"); the far one is much worse
    assert res.alternatives == []
    assert np.sort(res.start_losses)[-1] - res.loss > 100
