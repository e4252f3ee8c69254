"""Small fits against data the fitted model did not make (Mie series, finer-voxel simulations)."""

import json

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from references import mie_dcs

import diffscat as ds
import fitting
from fitting._init import estimate_radius

LAM = 1.0
R_TRUE = 3.0


def _mie_counts(exp, radius, delta, beta, photons, seed):
    """Expected counts from the exact (unpolarised) Mie series, Poisson noise: independent of diffscat's MSFT."""
    th = np.asarray(exp.theta)
    dcs = mie_dcs(radius, delta, beta, LAM, th, polarisation="unpolarised")
    mean = dcs * np.asarray(exp.solid_angle)
    mean = mean / mean.sum() * photons
    return np.random.default_rng(seed).poisson(mean).astype(float)


@pytest.fixture(scope="module")
def mie_fit():
    exp = ds.Experiment(LAM, ds.QGrid(n=32, theta_max_deg=30.0))
    data = _mie_counts(exp, R_TRUE, -0.01, 0.001, 1e6, 0)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    start = ds.Sphere(1.15 * R_TRUE, delta=-0.01, beta=0.001)
    res = fitting.fit(data, exp, start, mask=mask, polarisation="unpolarised")
    return exp, data, mask, res


def test_sphere_from_mie_radius_within_one_percent(mie_fit):
    exp, data, mask, res = mie_fit
    r = float(res.model.radius)
    assert isinstance(res.model, ds.Sphere)
    assert abs(r - R_TRUE) / R_TRUE < 0.01, r
    assert res.converged and res.n_steps >= 2
    assert res.free == ("radius",)
    assert 0 < float(res.sigmas["radius"]) < 0.01 * R_TRUE
    # the loss went down and the deviance per pixel is of order one half (a good Poisson fit)
    assert res.loss_history[0] > res.loss
    assert 0.2 < res.loss / res.n_used < 2.0
    assert res.n_used == int(mask.sum())


def test_initial_estimates_from_pattern(mie_fit):
    exp, data, mask, _ = mie_fit
    r = estimate_radius(data, exp, mask)
    assert abs(r - R_TRUE) / R_TRUE < 0.03


def test_result_files_and_report(mie_fit, tmp_path):
    _, data, mask, res = mie_fit
    js = res.save_json(tmp_path / "fit.json")
    h5 = res.save_hdf5(tmp_path / "fit.h5")
    with open(js) as f:
        d = json.load(f)
    assert d["model_type"] == "Sphere"
    assert np.isclose(d["values"]["radius"], float(res.model.radius))
    assert np.isclose(d["sigmas"]["radius"], float(res.sigmas["radius"]))
    with h5py.File(h5) as f:
        assert np.isclose(f["fit/model/radius"][()], float(res.model.radius))
        assert np.array_equal(f["fit/images/data"][()], np.where(mask, data, 0.0))
        assert np.array_equal(f["fit/images/mask"][()].astype(bool), mask)
        assert len(f["fit/loss_history"]) == len(res.loss_history)
    r = res.residuals()
    assert np.all(np.isnan(r[~mask])) and 0.5 < np.nanstd(r) < 1.5
    from fitting._report import plot_report

    fig = plot_report(res, tmp_path / "report.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_parametrisation_round_trip_and_orientation():
    R0 = ds.rotation_from_euler(jnp.array([0.3, 1.2, -0.4]), "ZYZ")
    ell = ds.Ellipsoid((3.0, 2.0, 1.5), delta=0.01, beta=0.002, rotation=R0, centre=(0.1, 0.0, -0.2))
    exp = ds.Experiment(LAM, ds.QGrid(n=8, theta_max_deg=20.0))
    assert set(fitting.default_free(ell)) == {"semi_axes", "orientation"}
    p = fitting.Parametrisation.create(ell, exp, free=("semi_axes", "orientation", "beta", "delta", "centre"))
    u0 = p.initial_u()
    shape, _, _ = p.build(u0)
    for a, b in zip(
        (shape.semi_axes, shape.rotation, shape.beta, shape.delta, shape.centre),
        (ell.semi_axes, ell.rotation, ell.beta, ell.delta, ell.centre),
        strict=True,
    ):
        assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    # orientation: u = 10 about body axis x is q = (1, 1, 0, 0): a 90 deg rotation, still a rotation matrix
    u = dict(u0, orientation=jnp.array([10.0, 0.0, 0.0]))
    Rn = np.asarray(p.build(u)[0].rotation)
    dR = np.asarray(R0).T @ Rn
    assert np.allclose(dR, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    # positive sizes stay positive for any u
    u = dict(u0, semi_axes=jnp.array([-50.0, 0.0, 50.0]))
    assert np.all(np.asarray(p.build(u)[0].semi_axes) > 0)


def test_fit_input_errors():
    exp = ds.Experiment(LAM, ds.QGrid(n=16, theta_max_deg=30.0))
    data = np.ones((16, 16))
    s = ds.Sphere(3.0)
    with pytest.raises(ValueError, match="image shape"):
        fitting.fit(np.ones((16, 15)), exp, s)
    with pytest.raises(ValueError, match="mask shape"):
        fitting.fit(data, exp, s, mask=np.ones((15, 16), bool))
    with pytest.raises(TypeError, match="boolean"):
        fitting.fit(data, exp, s, mask=np.ones((16, 16)))
    with pytest.raises(ValueError, match="excludes every pixel"):
        fitting.fit(data, exp, s, mask=np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="negative"):
        fitting.fit(-data, exp, s)
    bad = data.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitting.fit(bad, exp, s)
    with pytest.raises(ValueError, match=r"unknown parameter name.*'raduis'.*valid names.*'radius'"):
        fitting.fit(data, exp, s, free=("raduis",))
    with pytest.raises(ValueError, match="beam_center"):  # only flat detectors have a beam centre leaf
        fitting.fit(data, exp, s, free=("beam_center",))
    with pytest.raises(ValueError, match="loss"):
        fitting.fit(data, exp, s, loss="l2")
    with pytest.raises(ValueError, match="optimizer"):
        fitting.fit(data, exp, s, optimizer="sgd")
    with pytest.raises(TypeError, match="one class"):
        fitting.fit(data, exp, [s, ds.Ellipsoid((3.0, 3.0, 3.0))])
    with pytest.raises(TypeError, match="diffscat shape"):
        fitting.fit(data, exp, "sphere")


def test_second_fit_reuses_compilation(mie_fit):
    # same settings and grid: the jit-compiled step and finalisation are reused (no recompilation)
    exp, data, mask, res = mie_fit
    again = fitting.fit(
        data, exp, ds.Sphere(0.9 * R_TRUE, -0.01, 0.001), mask, polarisation="unpolarised", grid=res.grid
    )
    assert again.compile_s < 0.2 * max(res.compile_s, 0.05), (again.compile_s, res.compile_s)
    assert abs(float(again.model.radius) - float(res.model.radius)) < 0.2 * float(res.sigmas["radius"])


def test_cli_fit_from_cxi(mie_fit, tmp_path):
    from diffscat.cli import main
    from diffscat.io import write_cxi

    exp, data, mask, res = mie_fit
    cxi = write_cxi(tmp_path / "pattern.cxi", data, exp, length_unit="nm", quantity="photons")
    cfg = tmp_path / "fit.toml"
    cfg.write_text(
        '[model]\ntype = "Sphere"\nradius = 3.0\ndelta = -0.01\nbeta = 0.001\nfree = ["radius"]\n\n'
        '[fit]\nloss = "poisson"\npolarisation = "unpolarised"\nbeamstop_deg = 2.5\n'
    )
    out = tmp_path / "out"
    rc = main(["fit", str(cfg), "--data", str(cxi), "-o", str(out), "--set", "model.radius=3.45"])
    assert rc == 0
    with open(out / "fit.json") as f:
        d = json.load(f)
    assert np.isclose(d["values"]["radius"], float(res.model.radius), rtol=1e-6)
    assert (out / "fit.h5").exists() and (out / "fit_report.png").exists()
    # bad config keys are reported, not crashed on
    cfg.write_text('[model]\ntype = "Sphere"\nradius = 3.0\n[fit]\nlos = "poisson"\n')
    assert main(["fit", str(cfg), "--data", str(cxi), "-o", str(out)]) == 2


@pytest.mark.parametrize("rows", [1, 2])
def test_start_rows_one_group_at_a_time_give_the_batched_fit(monkeypatch, rows):
    """On one CPU device the starts' rows are optimised `CPU_START_BATCH` at a time (`_optimise_rows`): the
    same best start, values, losses, step count and history as the whole batch at once (3 starts: the padded
    4th row is not live and, alone in its group, is not run)."""
    from fitting import _fit

    exp = ds.Experiment(LAM, ds.QGrid(n=16, theta_max_deg=25.0))
    truth = ds.Sphere(2.2, delta=-0.01, beta=0.001)
    mean = np.asarray(fitting.expected_signal(truth, exp, ds.VoxelGrid.around(2.8, 0.25)))
    data = np.random.default_rng(3).poisson(mean / mean.sum() * 1e5).astype(float)
    starts = [ds.Sphere(r, delta=-0.01, beta=0.001) for r in (0.8, 2.3, 3.6)]  # three basins
    kw = dict(max_steps=25, polarisation="none", grid=ds.VoxelGrid.around(3.6, 0.25))
    monkeypatch.setattr(_fit, "CPU_START_BATCH", None)
    ref = fitting.fit(data, exp, starts, **kw)
    monkeypatch.setattr(_fit, "CPU_START_BATCH", rows)
    monkeypatch.setattr(_fit, "_compacting", lambda: True)
    got = fitting.fit(data, exp, starts, **kw)
    np.testing.assert_allclose(got.start_losses, ref.start_losses, rtol=1e-5)
    np.testing.assert_allclose(got.values["radius"], ref.values["radius"], rtol=1e-5)
    assert got.n_steps == ref.n_steps and got.loss_history.shape == ref.loss_history.shape
    np.testing.assert_allclose(got.loss_history, ref.loss_history, rtol=1e-5)
