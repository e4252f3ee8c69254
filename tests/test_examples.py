"""The demo and the fitting examples run end to end on tiny sizes and write their figures."""

import importlib.util
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_tiny(tmp_path):
    before = set(plt.get_fignums())
    path = _load("demo").main(["--n", "16", "--starts", "2", "--out", str(tmp_path)])
    assert os.path.getsize(path) > 10_000
    for f in ("demo_fit.json", "demo_fit.h5"):
        assert (tmp_path / f).exists()
    assert set(plt.get_fignums()) <= before  # the demo closes every figure it opened


@pytest.mark.slow
def test_fit_sphere_mie_small(tmp_path):
    res = _load("fit_sphere_mie").main(["--small", "--out", str(tmp_path)])
    assert abs(float(res.model.radius) - 2.5) / 2.5 < 0.02
    assert (tmp_path / "fit_sphere_mie.png").exists()


@pytest.mark.slow
def test_fit_ellipsoid_small(tmp_path):
    res = _load("fit_ellipsoid").main(["--small", "--out", str(tmp_path)])
    assert np.all(np.isfinite(np.asarray(res.model.semi_axes)))
    assert (tmp_path / "fit_ellipsoid.png").exists()


@pytest.mark.slow
def test_fit_harmonics_small(tmp_path):
    res = _load("fit_harmonics").main(["--small", "--out", str(tmp_path)])
    assert len(res.stages) >= 3
    assert (tmp_path / "fit_harmonics.png").exists()
