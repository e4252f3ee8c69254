"""Robustness: every bad input is answered in one line before any work; no silent success, no NaN, no
memory blow-up, no raw traceback from the command line.

Table-driven: each row is (id, call, expected exception type, regex the one-line message must match, naming
the argument / key / path). Tiny detectors, no fit runs more than a few steps.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import warnings

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds
import fitting
from diffscat._cli_info import summarise
from diffscat._files import TMP_PREFIX, atomic_output, check_output, clean_stale_temporaries
from diffscat._preflight import ENV_VAR, MemoryBudgetError, check_memory, memory_budget, parse_bytes
from diffscat.cli import main
from diffscat.io import ConfigError, parse_config, read_cxi, write_cxi
from fitting._cli_batch import load_batch_config
from fitting._cli_fit import run_config

EXP = ds.Experiment(1.0, ds.QGrid(8, 30.0))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPHERE_TOML = os.path.join(ROOT, "configs", "simulate-sphere.toml")
DATA = np.random.default_rng(0).poisson(20.0, (8, 8)).astype(float)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------- API

SH = ds.SphericalHarmonics


def _fit(data=DATA, model=None, **kw):
    kw.setdefault("max_steps", 1)
    kw.setdefault("uncertainties", False)
    return fitting.fit(data, EXP, ds.Sphere(2.0, 0.0, 0.001) if model is None else model, **kw)


API = [
    # simulate
    ("simulate-shape-type", lambda: ds.simulate("sphere", EXP), TypeError, "shape must be a diffscat shape"),
    ("simulate-exp-type", lambda: ds.simulate(ds.Sphere(2.0), 1.0), TypeError, "experiment must be"),
    (
        "simulate-transform",
        lambda: ds.simulate(ds.Sphere(2.0), EXP, transform="fft"),
        ValueError,
        "transform",
    ),
    ("simulate-method", lambda: ds.simulate(ds.Sphere(2.0), EXP, method="mie"), ValueError, "method"),
    ("simulate-grid-type", lambda: ds.simulate(ds.Sphere(2.0), EXP, grid=(8, 8, 8)), TypeError, "grid"),
    ("simulate-pitch", lambda: ds.simulate(ds.Sphere(2.0), EXP, pitch=-0.1), ValueError, "pitch"),
    (
        "simulate-5000-lambda",
        lambda: ds.simulate(ds.Sphere(5000.0), EXP),
        MemoryBudgetError,
        r"memory budget.*pitch",
    ),
    (
        "simulate-budget-tiny",
        lambda: ds.simulate(ds.Sphere(2.0), EXP, memory_budget="1KiB"),
        MemoryBudgetError,
        "1 KiB",
    ),
    (
        "simulate-budget-text",
        lambda: ds.simulate(ds.Sphere(2.0), EXP, memory_budget="lots"),
        ValueError,
        "memory_budget",
    ),
    (
        "simulate-budget-neg",
        lambda: ds.simulate(ds.Sphere(2.0), EXP, memory_budget=-5),
        ValueError,
        "memory_budget",
    ),
    (
        "simulate-separable-flat",
        lambda: ds.simulate(
            ds.Sphere(2.0), ds.Experiment(1.0, ds.FlatDetector(50.0, 2.0, (8, 8))), transform="separable"
        ),
        ValueError,
        "separable",
    ),
    # shapes
    ("sphere-zero", lambda: ds.Sphere(0.0), ValueError, "radius"),
    ("sphere-nan", lambda: ds.Sphere(np.nan), ValueError, "radius"),
    ("sphere-vector", lambda: ds.Sphere([1.0, 2.0]), ValueError, "radius"),
    ("sphere-rotation", lambda: ds.Sphere(1.0, rotation=np.eye(2)), ValueError, "rotation"),
    ("sphere-centre", lambda: ds.Sphere(1.0, centre=(0.0, 0.0)), ValueError, "centre"),
    ("sphere-delta-nan", lambda: ds.Sphere(1.0, delta=np.nan), ValueError, "delta"),
    ("ellipsoid-two-axes", lambda: ds.Ellipsoid((1.0, 2.0)), ValueError, "semi_axes"),
    ("ellipsoid-neg-axis", lambda: ds.Ellipsoid((1.0, -1.0, 2.0)), ValueError, "semi_axes"),
    ("capsule-neg-length", lambda: ds.Capsule(1.0, -2.0), ValueError, "length"),
    ("sh-not-square", lambda: SH([1.0, 2.0]), ValueError, "coefficients"),
    ("sh-c00-negative", lambda: SH([-1.0]), ValueError, r"coefficients\[0\]"),
    ("sh-nan", lambda: SH([1.0, np.nan, 0.0, 0.0]), ValueError, "coefficients"),
    ("sh-triplets-empty", lambda: SH.from_triplets([]), ValueError, "triplets"),
    ("sh-triplets-m", lambda: SH.from_triplets([(1, 2, 1.0)]), ValueError, r"triplets\[0\]"),
    ("sh-triplets-value", lambda: SH.from_triplets([(0, 0, "big")]), ValueError, r"triplets\[0\].*value"),
    ("volume-2d", lambda: ds.VolumeMap(np.zeros((4, 4)), 1.0), ValueError, "dn"),
    ("volume-pitch", lambda: ds.VolumeMap(np.zeros((4, 4, 4)), 0.0), ValueError, "pitch"),
    ("voxelgrid-shape", lambda: ds.VoxelGrid((4, 4), 1.0), ValueError, "shape"),
    ("voxelgrid-pitch", lambda: ds.VoxelGrid((4, 4, 4), np.inf), ValueError, "pitch"),
    # detectors and the experiment
    ("qgrid-n", lambda: ds.QGrid(1, 30.0), ValueError, "n must be"),
    ("qgrid-theta", lambda: ds.QGrid(8, 95.0), ValueError, "theta_max_deg"),
    ("anglegrid-theta", lambda: ds.AngleGrid(8, 0.0), ValueError, "theta_max_deg"),
    ("flat-distance", lambda: ds.FlatDetector(0.0, 1.0, (8, 8)), ValueError, "distance"),
    ("flat-pixel", lambda: ds.FlatDetector(3.0, -1.0, (8, 8)), ValueError, "pixel_size"),
    ("directions-mismatch", lambda: ds.Directions(np.zeros(3), np.zeros(4)), ValueError, "theta and phi"),
    ("experiment-wavelength", lambda: ds.Experiment(0.0, ds.QGrid(8, 30.0)), ValueError, "wavelength"),
    ("experiment-wavelength-nan", lambda: ds.Experiment(np.nan, ds.QGrid(8, 30.0)), ValueError, "wavelength"),
    # fit
    ("fit-all-zero", lambda: _fit(np.zeros((8, 8))), ValueError, "0 in every used pixel"),
    ("fit-all-masked", lambda: _fit(mask=np.zeros((8, 8), bool)), ValueError, "mask excludes every pixel"),
    ("fit-data-shape", lambda: _fit(np.ones((4, 4))), ValueError, "data shape"),
    ("fit-nan", lambda: _fit(np.full((8, 8), np.nan)), ValueError, "NaN"),
    ("fit-negative", lambda: _fit(-DATA - 1), ValueError, "negative"),
    ("fit-complex", lambda: _fit(DATA + 1j), TypeError, "real"),
    ("fit-mask-int", lambda: _fit(mask=np.ones((8, 8), int)), TypeError, "mask must be boolean"),
    ("fit-mask-shape", lambda: _fit(mask=np.ones((4, 4), bool)), ValueError, "mask shape"),
    ("fit-loss", lambda: _fit(loss="gauss"), ValueError, "loss"),
    ("fit-optimizer", lambda: _fit(optimizer="sgd"), ValueError, "optimizer"),
    ("fit-max-steps", lambda: _fit(max_steps=0), ValueError, "max_steps"),
    ("fit-polarisation", lambda: _fit(polarisation="z"), ValueError, "polarisation"),
    ("fit-model-empty", lambda: _fit(model=[]), ValueError, "model"),
    ("fit-model-type", lambda: _fit(model="sphere"), TypeError, "model must be a diffscat shape"),
    (
        "fit-model-mixed",
        lambda: _fit(model=[ds.Sphere(2.0), ds.Ellipsoid((1.0, 2.0, 3.0))]),
        TypeError,
        "one class",
    ),
    ("fit-experiment", lambda: fitting.fit(DATA, None, ds.Sphere(2.0)), TypeError, "experiment"),
    ("fit-free", lambda: _fit(free=["colour"]), ValueError, "colour"),
    ("fit-grid-type", lambda: _fit(grid="fine"), TypeError, "grid"),
    ("fit-budget", lambda: _fit(memory_budget="1KiB"), MemoryBudgetError, r"fit of 1 start.*memory budget"),
    # losses
    ("loss-name", lambda: fitting.as_loss("gauss"), ValueError, "gauss"),
    ("loss-floor", lambda: fitting.LogIntensity(floor=-1.0), ValueError, "floor"),
    ("loss-shapes", lambda: fitting.Poisson()(jnp.ones((4, 4)), jnp.ones((8, 8))), ValueError, "model shape"),
    (
        "loss-mask-dtype",
        lambda: fitting.Poisson()(jnp.ones((4, 4)), jnp.ones((4, 4)), jnp.ones((4, 4))),
        TypeError,
        "mask",
    ),
    # materials
    ("material-unknown", lambda: ds.material("unobtainium", 100.0), ValueError, "unobtainium"),
    ("material-formula-density", lambda: ds.material("Fe2O3", 500.0), ValueError, "density"),
    ("material-density", lambda: ds.material("He", 100.0, density=-1.0), ValueError, "density"),
    ("material-energy", lambda: ds.material("He", -5.0), ValueError, "energy"),
    # memory budget parsing
    ("budget-env-unit", lambda: parse_bytes("8 parsecs"), ValueError, ENV_VAR),
    ("budget-percent", lambda: parse_bytes("150%"), ValueError, "percentage"),
    ("budget-bool", lambda: parse_bytes(True), ValueError, ENV_VAR),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [pytest.param(*r[1:], id=r[0]) for r in API])
def test_api_errors(call, exc, pattern):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a DataWarning before the error
        with pytest.raises(exc, match=pattern) as info:
            call()
    _one_line(info)


# ------------------------------------------------------------------------------------------- configs

BASE = {
    "experiment": {
        "wavelength": 1.0,
        "length_unit": "nm",
        "detector": {"type": "qgrid", "n": 8, "theta_max_deg": 30.0},
    },
    "shape": {"type": "Sphere", "radius": 3.0, "delta": 0.0, "beta": 0.001},
}


def _cfg(path: str, value, base=BASE):
    import copy

    c = copy.deepcopy(base)
    *head, last = path.split(".")
    d = c
    for p in head:
        d = d.setdefault(p, {})
    if value is _DROP:
        d.pop(last)
    else:
        d[last] = value
    return c


_DROP = object()

SIM_CONFIGS = [
    ("no-experiment", _cfg("experiment", _DROP), r"\[experiment\]"),
    ("no-shape", _cfg("shape", _DROP), r"\[shape\]"),
    ("top-unknown", _cfg("extras", {"a": 1}), "extras"),
    ("wavelength-neg", _cfg("experiment.wavelength", -1.0), "experiment.wavelength"),
    ("wavelength-text", _cfg("experiment.wavelength", "one"), "experiment.wavelength"),
    ("both-energy", _cfg("experiment.photon_energy_eV", 90.0), "not both"),
    ("unit", _cfg("experiment.length_unit", "parsec"), "length_unit"),
    ("detector-type", _cfg("experiment.detector.type", "ccd"), "experiment.detector.type"),
    ("detector-n", _cfg("experiment.detector.n", 1), "experiment.detector.n"),
    ("detector-key", _cfg("experiment.detector.distance", 3.0), "distance"),
    ("shape-type", _cfg("shape.type", "Blob"), "Blob"),
    ("shape-radius-type", _cfg("shape.radius", "big"), "shape.radius"),
    ("shape-key", _cfg("shape.colour", "red"), "colour"),
    ("method", _cfg("simulation", {"method": "mie"}), "simulation.method"),
    ("pitch", _cfg("simulation", {"pitch": 0.0}), "simulation.pitch"),
    ("output-dtype", _cfg("output", {"dtype": "int8"}), "output.dtype"),
    ("dataset-count", _cfg("dataset", {"count": 0}), "dataset.count"),
]


@pytest.mark.parametrize(("cfg", "pattern"), [pytest.param(*r[1:], id=r[0]) for r in SIM_CONFIGS])
def test_simulate_config_errors(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_config(cfg)
    _one_line(info)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny valid CXI pattern and a set of broken files."""
    d = tmp_path_factory.mktemp("bad")
    good = str(d / "good.cxi")
    write_cxi(good, DATA, EXP, length_unit="nm", quantity="photons")
    with open(good, "rb") as fh:
        raw = fh.read()
    out = {"dir": str(d), "good": good}
    out["truncated"] = str(d / "truncated.cxi")
    with open(out["truncated"], "wb") as f:
        f.write(raw[: len(raw) // 3])
    out["random"] = str(d / "random.cxi")
    with open(out["random"], "wb") as f:
        f.write(np.random.default_rng(1).bytes(4096))
    out["empty"] = str(d / "empty.cxi")
    with h5py.File(out["empty"], "w") as f:
        f["foo"] = np.zeros(3)
    out["strings"] = str(d / "strings.cxi")
    with h5py.File(out["strings"], "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.array([[b"a", b"b"], [b"c", b"d"]])
    out["rank1"] = str(d / "rank1.cxi")
    with h5py.File(out["rank1"], "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.zeros(5)
    out["badmask"] = str(d / "badmask.cxi")
    with h5py.File(out["badmask"], "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.zeros((4, 4))
        f["entry_1/instrument_1/detector_1/mask"] = np.zeros((3, 3), np.uint32)
    out["secret"] = str(d / "secret.cxi")
    write_cxi(out["secret"], DATA * 7, EXP, length_unit="nm", quantity="photons")
    out["link"] = str(d / "link.cxi")
    with h5py.File(out["link"], "w") as f:
        f["entry_1"] = h5py.ExternalLink(out["secret"], "/entry_1")
    out["folder"] = str(d / "afolder.cxi")
    os.makedirs(out["folder"])
    fit_toml = d / "fit.toml"
    fit_toml.write_text(
        f'[data]\npath = "{good}"\nlength_unit = "nm"\n[model]\ntype = "Sphere"\nradius = 2.0\n'
        "beta = 0.001\n[fit]\nmax_steps = 1\n"
    )
    out["fit_toml"] = str(fit_toml)
    sim_toml = d / "sim.toml"
    sim_toml.write_text(
        '[experiment]\nwavelength = 1.0\nlength_unit = "nm"\n[experiment.detector]\ntype = "qgrid"\nn = 8\n'
        'theta_max_deg = 30.0\n[shape]\ntype = "Sphere"\nradius = 2.0\nbeta = 0.001\n[output]\npng = false\n'
    )
    out["sim_toml"] = str(sim_toml)
    return out


FILE_CASES = [
    ("missing", lambda f: read_cxi(f["dir"] + "/nope.cxi", length_unit="nm"), FileNotFoundError, "nope.cxi"),
    (
        "directory",
        lambda f: read_cxi(f["folder"], length_unit="nm"),
        IsADirectoryError,
        "afolder.cxi.*folder",
    ),
    (
        "truncated",
        lambda f: read_cxi(f["truncated"], length_unit="nm"),
        ValueError,
        r"truncated.cxi.*not a readable HDF5",
    ),
    (
        "random",
        lambda f: read_cxi(f["random"], length_unit="nm"),
        ValueError,
        r"random.cxi.*not a readable HDF5",
    ),
    ("no-entry", lambda f: read_cxi(f["empty"], length_unit="nm"), ValueError, r"empty.cxi.*entry_1"),
    (
        "missing-dataset",
        lambda f: read_cxi(f["empty"], length_unit="nm", data_path="/bar"),
        ValueError,
        r"missing dataset /bar",
    ),
    (
        "wrong-dtype",
        lambda f: read_cxi(f["strings"], length_unit="nm"),
        ValueError,
        r"strings.cxi.*real numbers",
    ),
    ("rank-1", lambda f: read_cxi(f["rank1"], length_unit="nm"), ValueError, r"rank1.cxi.*rank 2"),
    ("mask-shape", lambda f: read_cxi(f["badmask"], length_unit="nm"), ValueError, r"badmask.cxi.*mask"),
    ("entry-missing", lambda f: read_cxi(f["good"], length_unit="nm", entry=3), ValueError, r"entry_3"),
    ("unit", lambda f: read_cxi(f["good"], length_unit="parsec"), ValueError, "parsec"),
    (
        "external-link",
        lambda f: read_cxi(f["link"], length_unit="nm"),
        ValueError,
        r"link.cxi.*external link.*secret.cxi.*allow_external",
    ),
    ("external-info", lambda f: summarise(f["link"]), ValueError, "external link"),
    (
        "fit-config-section",
        lambda f: run_config({"model": {"type": "Sphere"}, "extra": {}}, f["dir"] + "/o"),
        ValueError,
        r"\[extra\]",
    ),
    (
        "fit-config-no-model",
        lambda f: run_config({"data": {"path": f["good"]}}, f["dir"] + "/o"),
        ValueError,
        r"\[model\]",
    ),
    (
        "fit-config-fit-key",
        lambda f: run_config({"model": {"type": "Sphere"}, "fit": {"speed": 1}}, f["dir"] + "/o"),
        ValueError,
        "speed",
    ),
    (
        "fit-config-loss",
        lambda f: run_config({"model": {"type": "Sphere"}, "fit": {"loss": "l2"}}, f["dir"] + "/o"),
        ValueError,
        r"fit\.loss = 'l2' must be one of 'poisson'",
    ),
    (
        "fit-config-type",
        lambda f: run_config({"model": {"radius": 2.0}}, f["dir"] + "/o"),
        ValueError,
        "missing key model.type",
    ),
    (
        "fit-config-no-data",
        lambda f: run_config({"model": {"type": "Sphere", "radius": 2.0}}, f["dir"] + "/o"),
        ValueError,
        "no data",
    ),
    (
        "fit-config-data-key",
        lambda f: run_config(
            {"data": {"path": f["good"], "frmae": 1}, "model": {"type": "Sphere", "radius": 2.0}},
            f["dir"] + "/o",
        ),
        ValueError,
        "frmae",
    ),
    (
        "fit-config-auto",
        lambda f: run_config(
            {"data": {"path": f["good"]}, "model": {"type": "Sphere", "radius": 2.0, "beta": "auto"}},
            f["dir"] + "/o",
        ),
        ValueError,
        "only radius",
    ),
    (
        "fit-config-model-value",
        lambda f: run_config(
            {"data": {"path": f["good"]}, "model": {"type": "Sphere", "radius": -2.0}}, f["dir"] + "/o"
        ),
        ValueError,
        "radius",
    ),
    (
        "fit-config-out-is-data",
        lambda f: run_config(
            {"data": {"path": f["good"]}, "model": {"type": "Sphere", "radius": 2.0}}, f["good"]
        ),
        ValueError,
        "good.cxi",
    ),
    (
        "fit-config-link",
        lambda f: run_config(
            {"data": {"path": f["link"]}, "model": {"type": "Sphere", "radius": 2.0}}, f["dir"] + "/o"
        ),
        ValueError,
        "external link",
    ),
    ("output-folder-is-file", lambda f: check_output(f["good"], folder=True), ValueError, "not a folder"),
    ("output-file-is-folder", lambda f: check_output(f["folder"]), ValueError, "is a folder"),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [pytest.param(*r[1:], id=r[0]) for r in FILE_CASES])
def test_file_errors(files, call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call(files)
    _one_line(info)


BATCH = '[data]\nlength_unit = "nm"\n[model]\ntype = "Sphere"\nradius_min = 2.0\nradius_max = 8.0\n'
BATCH_CASES = [
    ("section", BATCH + "[extra]\na = 1\n", r"\[extra\]"),
    ("unit", BATCH.replace('length_unit = "nm"\n', ""), "data.length_unit"),
    ("type", BATCH.replace('"Sphere"', '"Torus"'), "model.type"),
    ("range", BATCH.replace("radius_min = 2.0", "radius_min = 9.0"), "radius_min"),
    ("radius-neg", BATCH.replace("radius_max = 8.0", "radius_max = -8.0"), "model.radius_max"),
    ("n-steps", BATCH + "[fit]\nn_steps = 0\n", "fit.n_steps"),
    ("loss", BATCH + '[fit]\nloss = "l2"\n', "fit.loss"),
    ("chunk", BATCH + "[batch]\nchunk_size = 0\n", "chunk_size"),
    ("key", BATCH + "[batch]\nchunks = 4\n", "chunks"),
    ("toml", BATCH + "[fit\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "pattern"), [pytest.param(*r[1:], id=r[0]) for r in BATCH_CASES])
def test_batch_config_errors(tmp_path, text, pattern):
    p = tmp_path / "batch.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=pattern) as info:
        load_batch_config(str(p))
    _one_line(info)


# ----------------------------------------------------------------------------------------------- CLI


def _cli(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


CLI_CASES = [
    ("info-truncated", lambda f: ["info", f["truncated"]], r"truncated.cxi.*not a readable HDF5"),
    ("info-random", lambda f: ["info", f["random"]], r"random.cxi.*not a readable HDF5"),
    ("info-folder", lambda f: ["info", f["folder"]], r"afolder.cxi.*folder"),
    ("info-missing", lambda f: ["info", f["dir"] + "/nope.cxi"], "nope.cxi"),
    ("info-link", lambda f: ["info", f["link"]], r"external link.*--allow-external-links"),
    (
        "fit-truncated",
        lambda f: ["fit", f["fit_toml"], "--data", f["truncated"], "-o", f["dir"] + "/o1"],
        r"truncated.cxi",
    ),
    (
        "fit-random",
        lambda f: ["fit", f["fit_toml"], "--data", f["random"], "-o", f["dir"] + "/o1"],
        r"random.cxi",
    ),
    (
        "fit-out-is-input",
        lambda f: ["fit", f["fit_toml"], "--data", f["good"], "-o", f["good"]],
        r"-o .*good.cxi",
    ),
    ("fit-out-is-config", lambda f: ["fit", f["fit_toml"], "-o", f["fit_toml"]], r"fit.toml"),
    (
        "fit-config-folder",
        lambda f: ["fit", f["folder"], "-o", f["dir"] + "/o1"],
        r"config file .*afolder.cxi is a folder",
    ),
    (
        "fit-link",
        lambda f: ["fit", f["fit_toml"], "--data", f["link"], "-o", f["dir"] + "/o1"],
        r"external link",
    ),
    (
        "batch-truncated",
        lambda f: [
            "batch-fit",
            os.path.join(ROOT, "configs", "batch-sphere.toml"),
            "--data",
            f["truncated"],
            "-o",
            f["dir"] + "/r.h5",
        ],
        "truncated.cxi",
    ),
    (
        "batch-out-is-input",
        lambda f: [
            "batch-fit",
            os.path.join(ROOT, "configs", "batch-sphere.toml"),
            "--data",
            f["good"],
            "-o",
            f["good"],
        ],
        "input file",
    ),
    (
        "batch-missing-data",
        lambda f: [
            "batch-fit",
            os.path.join(ROOT, "configs", "batch-sphere.toml"),
            "--data",
            f["dir"] + "/nope.cxi",
            "-o",
            f["dir"] + "/r.h5",
        ],
        "nope.cxi",
    ),
    ("simulate-config-folder", lambda f: ["simulate", f["folder"]], "is a folder"),
    (
        "simulate-out-folder",
        lambda f: ["simulate", f["sim_toml"], "-o", f["folder"]],
        r"afolder.cxi.* is a folder",
    ),
    ("simulate-out-is-config", lambda f: ["simulate", f["sim_toml"], "-o", f["sim_toml"]], "refusing"),
    (
        "simulate-5000",
        lambda f: ["simulate", f["sim_toml"], "-o", f["dir"] + "/big.cxi", "--set", "shape.radius=5000"],
        r"memory budget.*pitch",
    ),
    (
        "simulate-radius-neg",
        lambda f: ["simulate", f["sim_toml"], "-o", f["dir"] + "/n.cxi", "--set", "shape.radius=-3"],
        "radius",
    ),
    ("simulate-bad-set", lambda f: ["simulate", f["sim_toml"], "--set", "shape.radius"], "KEY=VALUE"),
    ("simulate-chunk", lambda f: ["simulate", f["sim_toml"], "--chunk", "0"], "--chunk"),
    ("plan-out-is-config", lambda f: ["plan", f["sim_toml"], "-o", f["sim_toml"]], "refusing"),
]


@pytest.mark.parametrize(("argv", "pattern"), [pytest.param(*r[1:], id=r[0]) for r in CLI_CASES])
def test_cli_one_line_errors(files, capsys, argv, pattern):
    code, out, err = _cli(capsys, argv(files))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("diffscat ") and "error:" in lines[0]
    assert re.search(pattern, lines[0]), lines[0]


def test_cli_debug_shows_the_exception(files, capsys):
    with pytest.raises(ValueError, match="not a readable HDF5"):
        main(["--debug", "info", files["truncated"]])
    with pytest.raises(ValueError, match="not a readable HDF5"):
        main(["info", files["random"], "--debug"])


def _bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def test_cli_outputs_untouched_on_refusal(files, capsys):
    before = _bytes(files["good"])
    assert main(["fit", files["fit_toml"], "--data", files["good"], "-o", files["good"]]) == 2
    assert _bytes(files["good"]) == before


def test_cli_broken_pipe_is_quiet(files, capsys, monkeypatch):
    class Closed:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    code = main(["info", files["good"]])
    monkeypatch.undo()
    assert code == 141
    assert capsys.readouterr().err == ""


def test_info_head_pipe(files):
    """`diffscat info f.cxi | head -1`: no traceback on stderr."""
    cmd = f"{sys.executable} -m diffscat info --tree {files['good']} | head -1"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stdout.count("\n") == 1


@pytest.mark.skipif(IS_ROOT, reason="root may write anywhere")
def test_cli_unwritable_output_folder(files, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = _cli(capsys, ["simulate", files["sim_toml"], "-o", str(ro / "x.cxi")])
        assert code == 2 and "permission" in err.lower() and str(ro) in err
        code, _, err = _cli(capsys, ["fit", files["fit_toml"], "-o", str(ro / "fit")])
        assert code == 2 and "permission" in err.lower()
    finally:
        ro.chmod(0o700)


def test_unwritable_output_checked_before_work(files, capsys, monkeypatch, tmp_path):
    """As root every folder is writable: fake a read-only one through os.access."""
    ro = str(tmp_path / "ro")
    os.makedirs(ro)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if os.fspath(p).startswith(ro) else real(p, m))
    called = []
    monkeypatch.setattr(ds._cli_simulate, "simulate_config", lambda *a, **k: called.append(1))
    code, _, err = _cli(capsys, ["simulate", files["sim_toml"], "-o", ro + "/x.cxi"])
    assert code == 2 and "no permission to write" in err and ro in err and not called
    code, _, err = _cli(capsys, ["fit", files["fit_toml"], "-o", ro + "/fit"])
    assert code == 2 and "no permission to write" in err


def test_info_allows_external_links_when_asked(files, capsys):
    assert main(["info", "--allow-external-links", "--stats", files["link"]]) == 0
    d = read_cxi(files["link"], length_unit="nm", allow_external=True)
    np.testing.assert_allclose(d.data, DATA * 7)


# --------------------------------------------------------------------------------------- files written


def test_stale_temporaries_removed_and_live_kept(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = tmp_path / f"{TMP_PREFIX}{p.pid}-abcd.cxi"
    dead.write_bytes(b"half a file")
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-ef01.cxi"
    live.write_bytes(b"being written")
    foreign = tmp_path / ".tmp-someone-else.cxi"
    foreign.write_bytes(b"not ours")
    write_cxi(str(tmp_path / "out.cxi"), DATA, EXP, length_unit="nm", quantity="photons")
    assert not dead.exists() and live.exists() and foreign.exists()
    assert clean_stale_temporaries(str(tmp_path)) == []
    # a command cleans its output folder at its start (check_output), before any work
    dead.write_bytes(b"half a file")
    old = time.time() - 3600
    reused = tmp_path / f"{TMP_PREFIX}1-0000.cxi"  # pid 1 runs, but started after this (1970) file
    reused.write_bytes(b"x")
    os.utime(reused, (1e6, 1e6))
    os.utime(live, (old, old))  # an old temporary of this (running) process: kept
    check_output(str(tmp_path / "next.cxi"))
    assert not dead.exists() and not reused.exists() and live.exists()


def test_sigkill_leaves_a_temporary_that_the_next_start_removes(tmp_path):
    code = (
        f"import os, signal, sys; sys.path.insert(0, {ROOT!r})\n"
        "from diffscat._files import atomic_output\n"
        f"with atomic_output({str(tmp_path / 'out.cxi')!r}) as tmp:\n"
        "    open(tmp, 'wb').write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == -9
    left = [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]
    assert len(left) == 1
    with atomic_output(str(tmp_path / "other.json")) as tmp:
        _write(tmp, "{}")
    assert sorted(os.listdir(tmp_path)) == ["other.json"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = write_cxi(str(tmp_path / "a.cxi"), DATA, EXP, length_unit="nm", quantity="photons")
        with atomic_output(str(tmp_path / "b.json")) as tmp:
            _write(tmp, "{}")
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == mode
    assert os.stat(tmp_path / "b.json").st_mode & 0o777 == mode


def test_every_writer_uses_the_one_helper():
    """No module creates its own temporary files: `atomic_output` is the one home."""
    hits = []
    for pkg in ("diffscat", "fitting"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, pkg)):
            for n in names:
                if n.endswith(".py") and n != "_files.py":
                    text = _bytes(os.path.join(dirpath, n)).decode()
                    if "mkstemp" in text or "NamedTemporaryFile" in text:
                        hits.append(n)
    assert hits == []


# ------------------------------------------------------------------------------------------ fit sanity


def test_fit_warns_on_non_integer_counts():
    dsig = np.asarray(ds.simulate(ds.Sphere(2.0, 0.0, 0.001), EXP))  # dsigma/dOmega, not counts
    with pytest.warns(fitting.DataWarning, match=r"not integer photon counts.*loss='log'.*solid_angle=False"):
        _fit(dsig / dsig.max() * 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitting.check_data(DATA, counts=True)  # integer counts: no warning
        fitting.check_data(dsig, counts=False)  # the log loss takes intensities
    with pytest.warns(fitting.DataWarning):
        fitting.check_data(DATA + 0.5, counts=True)


def test_fit_not_converged_when_nothing_moved():
    # Adam with a gradient tolerance met at once: the old code reported converged=True at the start point.
    r = _fit(optimizer="adam", gtol=1e30, max_steps=3)
    assert r.n_steps == 1 and not r.converged
    np.testing.assert_allclose(r.values["radius"], 2.0)


def test_fit_preflight_runs_before_work(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1KiB")
    with pytest.raises(MemoryBudgetError, match=ENV_VAR):
        _fit()


# ------------------------------------------------------------------------------------------ preflight


def test_budget_sources(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "8GiB")
    assert memory_budget() == 8 * 2**30
    assert memory_budget("500MB") == 500e6
    monkeypatch.setenv(ENV_VAR, "off")
    assert memory_budget() is None
    check_memory((10**5,) * 3, 10**8)  # no budget: never refuses
    monkeypatch.delenv(ENV_VAR)
    b = memory_budget()
    assert b is None or 0 < b < 2**50
    assert parse_bytes("2e9") == 2e9 and parse_bytes("1 KiB") == 1024 and parse_bytes(3.5) == 3.5


def test_memory_refusal_is_fast_and_names_the_knobs():
    t0 = time.perf_counter()
    with pytest.raises(MemoryBudgetError) as info:
        ds.simulate(ds.Sphere(5000.0), EXP)
    msg = _one_line(info)
    assert time.perf_counter() - t0 < 5.0
    assert "pitch" in msg and "grid" in msg and ENV_VAR in msg
    assert re.search(r"\d{5} x \d{5} x \d{5}", msg)


def test_memory_budget_not_applied_under_jit():
    """Inside jit the shape is traced: no preflight (the caller's own check covers it), no tracer leak."""
    f = jax.jit(
        lambda r: ds.simulate(
            ds.Sphere(r, 0.0, 0.001), EXP, grid=ds.VoxelGrid((12, 12, 12), 0.5), memory_budget="1KiB"
        )
    )
    assert np.all(np.isfinite(np.asarray(f(2.0))))


# ---------------------------------------------------------------------------- spherical harmonics NaN

Y00 = 0.5 / np.sqrt(np.pi)


@pytest.mark.parametrize("method", ["msft", "born"])
def test_harmonics_negative_radius_is_finite(method):
    """c00 = 2 / Y00 (mean radius 2), c10 swept through the crossing where R(-z) = 2 - 0.4886 c10 < 0
    (c10 > 4.09): pattern and gradient finite everywhere (before: +inf gradient, then an all-NaN pattern)."""
    exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
    grid = ds.VoxelGrid((32, 32, 32), 0.25)

    def total(c10):
        c = jnp.zeros(4).at[0].set(2 / Y00).at[2].set(c10)
        return jnp.sum(ds.simulate(SH(c, 0.01, 0.001), exp, grid=grid, method=method))

    vg = jax.jit(jax.value_and_grad(total))
    for c10 in [3.5, 4.0, 4.09, 4.2, 5.0, 5.5, 6.0]:
        v, g = vg(jnp.asarray(c10))
        assert np.isfinite(v) and np.isfinite(g) and v > 0, (c10, v, g)


def test_harmonics_floor_really_applied():
    with pytest.warns(UserWarning, match="floor"):
        s = SH(np.array([2 / Y00, 0.0, 6.0, 0.0]))
    z = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    r = np.asarray(s.radius(z))
    floor = 0.01 * 2.0
    assert r[0] >= floor and np.isclose(r[0], floor, rtol=1e-3)  # raw radius 2 - 2.93 < 0
    np.testing.assert_allclose(r[1:], np.asarray(s.raw_radius(z))[1:], rtol=1e-9)  # exact far above


# ---------------------------------------------------------------------------------------- size scans


def _count_compiles(fn):
    msgs = []

    class H(logging.Handler):
        def emit(self, record):
            if "Compiling" in record.getMessage() or "compil" in record.getMessage().lower():
                msgs.append(record.getMessage())

    h = H()
    logger = logging.getLogger("jax")
    logger.addHandler(h)
    try:
        with jax.log_compiles(True):
            fn()
    finally:
        logger.removeHandler(h)
    return len(msgs)


def test_size_scan_with_fixed_grid_compiles_once():
    import equinox as eqx

    radii = [1.6, 2.0, 2.4, 2.8, 3.2]
    grid = ds.default_grid(ds.Sphere(max(radii)), EXP)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def pattern(r):
        return ds.simulate(ds.Sphere(r, 0.0, 0.001), EXP, grid=grid)

    outs = [pattern(jnp.asarray(r)) for r in radii]  # a second trace would raise
    assert all(np.all(np.isfinite(np.asarray(o))) for o in outs)
    # and a plain Python loop: after the first size, a fixed grid compiles nothing new ...
    ds.simulate(ds.Sphere(radii[0], 0.0, 0.001), EXP, grid=grid)
    fixed = _count_compiles(
        lambda: [ds.simulate(ds.Sphere(r, 0.0, 0.001), EXP, grid=grid) for r in radii[1:]]
    )
    assert fixed == 0
    # ... while the default grid follows the size and recompiles
    ds.simulate(ds.Sphere(radii[0], 0.0, 0.001), EXP)
    default = _count_compiles(lambda: [ds.simulate(ds.Sphere(r, 0.0, 0.001), EXP) for r in radii[1:]])
    assert default > 0
