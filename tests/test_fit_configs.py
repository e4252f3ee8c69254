"""The shipped fit configs run against the files the shipped simulate configs make: `diffscat simulate` (small
detector override) then `diffscat fit` (few steps), exit 0, the documented outputs, and progress on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import pytest

from diffscat.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _simulate_then_fit(tmp_path, capsys, name, sim_overrides, fit_overrides):
    cxi = tmp_path / f"{name}.cxi"
    sim = [str(CONFIGS / f"simulate-{name}.toml"), "-o", str(cxi)]
    assert main(["simulate", *sim, *[a for kv in sim_overrides for a in ("--set", kv)]]) == 0
    err = capsys.readouterr().err
    assert "simulating" in err and f"writing {cxi}" in err  # a single simulation says what it is doing
    assert cxi.exists() and cxi.with_suffix(".png").exists()
    out = tmp_path / "fit"
    fit = [str(CONFIGS / f"fit-{name}.toml"), "--data", str(cxi), "-o", str(out)]
    assert main(["fit", *fit, *[a for kv in fit_overrides for a in ("--set", kv)]]) == 0
    cap = capsys.readouterr()
    assert "fit step 1/" in cap.err and "loss/pixel" in cap.err  # progress lines of the optimiser
    assert "wrote" in cap.out
    for f in ("fit.json", "fit.h5", "fit_report.png", "fit_shape.png"):
        assert (out / f).stat().st_size > 1000, f
    with open(out / "fit.json") as f:
        return json.load(f), cap.out


@pytest.mark.slow  # compile-bound: about 25 s of CPU (simulate, fit step, Fisher information)
def test_fit_sphere_config_recovers_the_simulated_radius(tmp_path, capsys):
    summary, stdout = _simulate_then_fit(
        tmp_path,
        capsys,
        "sphere",
        ["experiment.detector.n=32", "simulation.pitch=0.5"],
        ["fit.max_steps=3", "fit.pitch=0.5"],
    )
    assert summary["model_type"] == "Sphere"
    assert abs(summary["values"]["radius"] - 7.0) < 0.2  # configs/simulate-sphere.toml: radius = 7.0 nm
    assert "radius = " in stdout
    plt.close("all")


@pytest.mark.slow
def test_fit_droplet_config_runs(tmp_path, capsys):
    summary, stdout = _simulate_then_fit(
        tmp_path,
        capsys,
        "droplet",
        [
            "experiment.detector.shape=[48, 48]",
            "experiment.detector.center=[23.5, 23.5]",
            "experiment.detector.pixel_size=200.0e3",
            "detector_model.mask.hole_radius=2.0",
            "detector_model.mcp.hole_radius=2.0",
        ],
        ["fit.max_steps=3", "fit.n_starts=2"],
    )
    assert summary["model_type"] == "Ellipsoid"
    assert "semi_axes" in summary["values"] and "orientation" in stdout
    # the principal axes with their sigmas, shortest first, in fit.json and on stdout
    axes = summary["principal_axes"]
    assert [a["semi_axis"] for a in axes] == pytest.approx(sorted(summary["values"]["semi_axes"]), rel=1e-6)
    assert all(a["direction_sigma_deg"] > 0 and len(a["direction"]) == 3 for a in axes)
    assert "axis 1 (shortest first)" in stdout and "axis 3 (shortest first)" in stdout
    with h5py.File(tmp_path / "droplet.cxi") as f:  # the file the fit read has the detector hole masked
        assert (f["entry_1/instrument_1/detector_1/mask"][()] != 0).any()
    plt.close("all")


def test_fit_progress_lines(capsys):
    import numpy as np

    from fitting._fit import _print_progress, _progress_every

    assert (_progress_every(False), _progress_every(True), _progress_every(5)) == (0, 10, 5)
    with pytest.raises(ValueError, match="progress must be"):
        _progress_every(-1)
    _print_progress(1, 200, np.array([2.5, np.nan, 1.25]), 0.0, 3.0, False)
    _print_progress(20, 200, np.array([1.0]), 0.0, None, True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("fit step 1/200: loss/pixel 1.25, ") and "compilation 3.0 s" in err[0]
    assert err[1].startswith("fit step 20/200: loss/pixel 1, ") and err[1].endswith("converged")
