"""`fitting.keep_delta_sign`: the start's sign of a fitted delta is kept where the data cannot tell the sign
(the conjugate-object twin), and left to the data where it can."""

import copy
import dataclasses

import numpy as np
import pytest

import diffscat as ds
import fitting

EXP = ds.Experiment(1.0, ds.QGrid(n=24, theta_max_deg=30.0))
GRID = ds.VoxelGrid.around(4.0, 0.35)
FREE = ("radius", "delta")


def _data(delta, beta=0.002, radius=3.0, photons=1e6):
    mu = np.asarray(fitting.expected_signal(ds.Sphere(radius, delta, beta), EXP, GRID))
    return np.random.default_rng(0).poisson(mu / mu.sum() * photons).astype(float)


def _fit(data, delta, beta=0.002):
    return fitting.fit(data, EXP, ds.Sphere(3.05, delta, beta), free=FREE, grid=GRID, max_steps=60)


@pytest.fixture(scope="module")
def weak():
    """Data made at delta = -0.01 (k R delta = 0.19 rad) and a fit of it from delta = -0.01."""
    data = _data(-0.01)
    return data, _fit(data, -0.01)


def test_sign_kept_where_the_data_cannot_tell(weak):
    # a sphere of delta +0.0084 (radius 1 % larger) fits data made at delta = -0.01 as well as the truth does
    # (measured: NLL 294.0 vs 294.1), so the sign the user started from is kept
    data, res = weak
    assert float(res.model.delta) < 0
    out = fitting.keep_delta_sign(res, 0.01, data, EXP, grid=GRID, max_steps=60)
    assert out is not res and out.delta_sign == "kept"
    assert float(out.model.delta) > 0
    assert out.loss <= res.loss + fitting.DELTA_SIGN_TOL
    # the other sign's fit is the first alternative, its loss relative to the kept one
    alt = out.alternatives[0]
    assert float(alt.model.delta) < 0
    assert alt.delta_loss == pytest.approx(res.loss - out.loss, abs=1e-3)
    assert out.time_s >= res.time_s and out.stages[-1] is out


def test_sign_left_to_the_data_where_it_decides():
    # k R delta = 0.94 rad: the refraction decides the sign (a fit from the wrong sign stalls tens of NLL higher)
    data = _data(-0.05)
    res = _fit(data, -0.05)
    out = fitting.keep_delta_sign(res, 0.05, data, EXP, grid=GRID, max_steps=60)
    assert out is res and out.delta_sign == "data"
    assert float(out.model.delta) < 0
    assert out.stages[-1].loss > res.loss + fitting.DELTA_SIGN_TOL or float(out.stages[-1].model.delta) < 0


def test_nothing_to_check(weak):
    data, res = weak
    # the fit kept the start's sign, or delta was fixed, or the start has no sign: unchanged, no refit
    assert fitting.keep_delta_sign(res, -0.02, data, EXP, grid=GRID) is res
    assert fitting.keep_delta_sign(res, 0.0, data, EXP, grid=GRID) is res
    fixed = dataclasses.replace(res, free=("radius",))  # a fit with delta fixed
    assert fitting.keep_delta_sign(fixed, 0.01, data, EXP, grid=GRID) is fixed
    assert res.delta_sign is None
    with pytest.raises(ValueError, match="tol"):
        fitting.keep_delta_sign(res, 0.01, data, EXP, tol=-1.0)
    with pytest.raises(ValueError, match="delta_sign_tol"):
        fitting.fit_auto(data, EXP, ("Sphere",), delta=0.01, fit_optics=("delta",), delta_sign_tol=-1.0)


def test_batch_column_and_config_key(tmp_path, weak):
    """batch-fit with delta fitted: a `delta_sign` column (codes 0 / 1 / 2, -1 no fit); the config key
    `model.delta_sign_tol` reaches the fitter (0: the data decides), and a negative one is refused."""
    from diffscat.io import ConfigError
    from fitting._cli_batch import load_batch_config, make_fitter

    cfg = tmp_path / "c.toml"
    base = (
        "[data]\nlength_unit='nm'\n[model]\ntype='Sphere'\nradius_min=1.0\nradius_max=9.0\ndelta=0.01\n"
        "fit_optics=['delta']\n"
    )
    cfg.write_text(base)
    fitter, _ = make_fitter(load_batch_config(str(cfg)), EXP)
    assert "delta_sign" in fitter.names and "delta_sign" in fitter.int_columns
    assert fitter.auto_kwargs["delta_sign_tol"] == fitting.DELTA_SIGN_TOL
    assert fitter._empty_row()["delta_sign"] == -1
    res = copy.copy(weak[1])
    for state, code in ((None, 0), ("kept", 1), ("data", 2)):
        res.delta_sign = state
        assert fitter.row(res)["delta_sign"] == code
    cfg.write_text(base + "delta_sign_tol = 0.0\n")
    fitter, _ = make_fitter(load_batch_config(str(cfg)), EXP)
    assert fitter.auto_kwargs["delta_sign_tol"] == 0.0
    cfg.write_text(base + "delta_sign_tol = -1.0\n")
    with pytest.raises(ConfigError, match="delta_sign_tol"):
        load_batch_config(str(cfg))
    # delta fixed: no column
    cfg.write_text("[data]\nlength_unit='nm'\n[model]\ntype='auto'\ncandidates=['Sphere']\ndelta=0.01\n")
    fitter, _ = make_fitter(load_batch_config(str(cfg)), EXP)
    assert "delta_sign" not in fitter.names
