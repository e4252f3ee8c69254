"""TOML configs (validation, overrides, builders) and the `diffscat simulate` / `info` command lines."""

import glob
import os

import h5py
import numpy as np
import pytest

import diffscat as ds
from diffscat.cli import build_parser, main
from diffscat.io import ConfigError, apply_overrides, load_config, parse_config, read_cxi, shape_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "configs", "simulate-*.toml"))
    + glob.glob(os.path.join(ROOT, "configs", "dataset-*.toml"))
)


def base():
    return {
        "experiment": {
            "wavelength": 1.0,
            "length_unit": "nm",
            "detector": {"type": "qgrid", "n": 16, "theta_max_deg": 30.0},
        },
        "shape": {"type": "Sphere", "radius": 2.0, "delta": 0.0, "beta": 0.001},
    }


def test_example_configs_validate_and_build():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"simulate-sphere.toml", "simulate-droplet.toml", "dataset-ellipsoids.toml"} <= names
    for p in CONFIGS:
        cfg = load_config(p)
        exp = ds.io.build_experiment(cfg)
        shape = ds.io.build_shape(cfg["shape"], ds.io.config_photon_energy_eV(cfg))
        assert isinstance(exp, ds.Experiment) and isinstance(shape, ds.AbstractShape)
        if "detector_model" in cfg:
            model, seed = ds.io.build_detector_model(cfg, exp)
            assert float(model.fluence) > 0 and seed >= 0


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["experiment"].pop("wavelength"), "missing key experiment.wavelength"),
        (lambda c: c["shape"].pop("radius"), r"missing key shape\.radius"),
        (
            lambda c: c["experiment"].update(wavelength="1 nm"),
            r"experiment\.wavelength = '1 nm' has the wrong type",
        ),
        (lambda c: c["shape"].update(radius="big"), r"shape\.radius = 'big' has the wrong type"),
        (
            lambda c: c["experiment"]["detector"].update(type="spherical"),
            r"detector\.type = 'spherical' is unknown",
        ),
        (
            lambda c: c["experiment"].update(
                detector={"type": "flat", "distance": -5.0, "pixel_size": 1.0, "shape": [8, 8]}
            ),
            r"experiment\.detector\.distance = -5\.0 must be positive",
        ),
        (lambda c: c["experiment"]["detector"].update(n=1), r"experiment\.detector\.n = 1 must be >= 2"),
        (lambda c: c["shape"].update(colour="red"), r"unknown key\(s\) in \[shape \(Sphere\)\]: colour"),
        (lambda c: c.update(extra={}), r"unknown key\(s\) in \[top level\]: extra"),
        (lambda c: c["shape"].update(type="Blob"), r"shape\.type = 'Blob'"),
        (lambda c: c["experiment"].update(length_unit="inch"), r"experiment\.length_unit = 'inch'"),
        (lambda c: c.update(detector_model={"polarisation": "x"}), r"missing key detector_model\.fluence"),
        (lambda c: c.update(detector_model={"fluence": 1.0, "nois": "poisson"}), r"unknown key.*nois"),
        (lambda c: c.update(dataset={"count": 0}), r"dataset\.count = 0 must be >= 1"),
        (
            lambda c: c.update(dataset={"count": 3, "vary": {"radius": {"dist": "gauss"}}}),
            r"vary\.radius\.dist",
        ),
        (
            lambda c: c.update(dataset={"count": 3, "vary": {"radius": {"dist": "uniform", "low": 1}}}),
            r"radius\.high",
        ),
        (
            lambda c: c.update(dataset={"count": 3, "vary": {"size": {"dist": "fixed", "value": 1}}}),
            "axis_ratios",
        ),
    ],
)
def test_malformed_config_errors_name_the_key(edit, match):
    cfg = base()
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        parse_config(cfg)


def test_shape_constructor_error_is_reported_with_section():
    cfg = base()
    cfg["shape"]["radius"] = -2.0
    parse_config(cfg)  # types are right; the value is checked by the shape itself
    with pytest.raises(ConfigError, match=r"\[shape\].*radius must be positive"):
        ds.io.build_shape(cfg["shape"])


def test_nested_shape_tables_build_core_shell_and_composite():
    cfg = base()
    cfg["shape"] = {
        "type": "CoreShell",
        "core": {"type": "Sphere", "radius": 1.0, "delta": 0.003, "beta": 0.001},
        "shell": {"type": "Sphere", "radius": 2.0, "delta": 0.001, "beta": 0.0005},
        "centre": [0.5, 0.0, 0.0],
    }
    cs = ds.io.build_shape(parse_config(cfg)["shape"])
    ref = ds.CoreShell.spheres(1.0, 2.0, 0.003, 0.001, 0.001, 0.0005, centre=(0.5, 0.0, 0.0))
    exp = ds.io.build_experiment(cfg)
    np.testing.assert_allclose(ds.simulate(cs, exp), ds.simulate(ref, exp), rtol=1e-6)
    cfg["shape"] = {
        "type": "Composite",
        "euler_deg": [0.0, 30.0, 0.0],
        "parts": [
            {"type": "Sphere", "radius": 1.0, "delta": 0.001, "centre": [0.0, 0.0, -1.0]},
            {
                "type": "Cube",
                "edge": 1.5,
                "delta": 0.002,
                "euler_deg": [10.0, 0.0, 0.0],
                "centre": [0.0, 0.0, 1.0],
            },
        ],
    }
    comp = ds.io.build_shape(parse_config(cfg)["shape"])
    assert isinstance(comp, ds.Composite) and [type(p).__name__ for p in comp.parts] == ["Sphere", "Cube"]
    R = np.asarray(ds.rotation_from_euler(np.radians([10.0, 0.0, 0.0]), "ZYZ"))
    np.testing.assert_allclose(comp.parts[1].rotation, R, atol=1e-6)
    np.testing.assert_allclose(comp.rotation, ds.rotation_from_euler(np.radians([0.0, 30.0, 0.0])), atol=1e-6)


@pytest.mark.parametrize(
    "shape, match",
    [
        (
            {"type": "CoreShell", "core": 1.0, "shell": {"type": "Sphere", "radius": 2.0}},
            r"shape\.core must be a shape table",
        ),
        (
            {"type": "CoreShell", "core": {"type": "Sphere"}, "shell": {"type": "Sphere", "radius": 2.0}},
            r"missing key shape\.core\.radius",
        ),
        ({"type": "Composite", "parts": []}, r"shape\.parts must be a non-empty array"),
        (
            {"type": "Composite", "parts": [{"type": "Sphere", "radius": 1.0, "colour": 3}]},
            r"unknown key.*shape\.parts\[0\]",
        ),
        (
            {"type": "Composite", "parts": [{"type": "Blob", "radius": 1.0}]},
            r"shape\.parts\[0\]\.type = 'Blob'",
        ),
    ],
)
def test_nested_shape_errors_name_the_key(shape, match):
    cfg = base()
    cfg["shape"] = shape
    with pytest.raises(ConfigError, match=match):
        parse_config(cfg)


def test_overrides_parse_toml_values():
    cfg = apply_overrides(
        base(),
        [
            "shape.radius=7.5",
            "experiment.detector.n=32",
            "shape.type=Ellipsoid",
            "output.png=false",
            "shape.semi_axes=[1, 2, 3]",
            "new.table.key='x y'",
        ],
    )
    assert cfg["shape"]["radius"] == 7.5 and cfg["experiment"]["detector"]["n"] == 32
    assert cfg["shape"]["type"] == "Ellipsoid" and cfg["output"]["png"] is False
    assert cfg["shape"]["semi_axes"] == [1, 2, 3] and cfg["new"]["table"]["key"] == "x y"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(base(), ["shape.radius"])


def test_help_lists_everything(capsys):
    ap = build_parser()
    text = ap.format_help()
    for cmd in ("simulate", "info", "fit", "batch-fit"):
        assert cmd in text
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    for opt in ("--set", "--output", "--no-png", "--chunk", "[experiment]", "[dataset]"):
        assert opt in out
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "--length-unit" in capsys.readouterr().out


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


SINGLE = """
[experiment]
wavelength = 1.0
length_unit = "nm"
[experiment.detector]
type = "flat"
distance = 60.0
pixel_size = 1.5
shape = [16, 20]
center = [7.2, 9.6]
[shape]
type = "Sphere"
radius = 2.0
beta = 0.002
"""


def test_cli_simulate_single_writes_cxi_and_png(tmp_path, capsys):
    cfg = _write(tmp_path, SINGLE)
    out = tmp_path / "o" / "s.cxi"
    assert main(["simulate", cfg, "-o", str(out), "--set", "shape.radius=2.5"]) == 0
    assert "wrote 1 pattern" in capsys.readouterr().out
    assert out.exists() and (tmp_path / "o" / "s.png").exists()
    with h5py.File(out) as f:  # plain h5py at the documented paths
        assert f["entry_1/data_1/data"].shape == (16, 20)
        assert f["entry_1/sample_1/truth/shape"].attrs["type"] == "Sphere"
    d = read_cxi(out, length_unit="nm")
    shape = shape_from_dict(d.truth)
    assert float(shape.radius) == 2.5
    ref = np.asarray(ds.simulate(ds.Sphere(2.5, 0.0, 0.002), d.experiment))
    np.testing.assert_allclose(d.data, ref, rtol=1e-6, atol=1e-6 * ref.max())  # float32 in the file
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "1 image(s) of 16 x 20" in text and "Sphere" in text and "beam centre (row, col) (7.2, 9.6)" in text
    )


def test_cli_simulate_with_detector_model_and_errors(tmp_path, capsys):
    text = (
        SINGLE
        + """
[detector_model]
fluence = 1.0e9
polarisation = "x"
noise = "poisson"
binning = 2
seed = 3
[detector_model.mask]
beamstop_radius = 2.0
"""
    )
    cfg = _write(tmp_path, text)
    out = tmp_path / "p.cxi"
    assert main(["simulate", cfg, "-o", str(out), "--no-png"]) == 0
    d = read_cxi(out, length_unit="nm")
    assert d.quantity == "photons" and d.data.shape == (8, 10)
    assert np.all(d.data == np.round(d.data)) and d.data.sum() > 0
    assert not d.mask.all() and np.all(d.data[~d.mask] == 0)
    # The binned detector in the file is the 2x2-binned geometry.
    det = d.experiment.detector
    np.testing.assert_allclose(np.asarray(det.pixel_size), 3.0)
    np.testing.assert_allclose(np.asarray(det.center), ((7.2 + 0.5) / 2 - 0.5, (9.6 + 0.5) / 2 - 0.5))
    # Errors are one line on stderr, exit status 2.
    assert main(["simulate", cfg, "--set", "experiment.detector.distance=-1"]) == 2
    assert "experiment.detector.distance = -1 must be positive" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.cxi")]) == 2


DATASET = """
[experiment]
wavelength = 1.0
length_unit = "nm"
[experiment.detector]
type = "qgrid"
n = 32
theta_max_deg = 30.0
[shape]
type = "Ellipsoid"
semi_axes = [2.0, 2.0, 2.0]
delta = 0.01
beta = 0.001
[detector_model]
fluence = 100.0
noise = "none"
polarisation = "unpolarised"
[dataset]
count = 20
seed = 5
chunk = 8
[dataset.vary.size]
dist = "uniform"
low = 1.5
high = 3.0
[dataset.vary.axis_ratios]
dist = "uniform"
low = [0.6, 0.6]
high = [1.0, 1.0]
[dataset.vary.rotation]
dist = "uniform_so3"
[dataset.vary.fluence]
dist = "loguniform"
low = 10.0
high = 1000.0
"""


def test_dataset_mode_round_trip(tmp_path):
    cfg = _write(tmp_path, DATASET)
    out = tmp_path / "ds.cxi"
    assert main(["simulate", cfg, "-o", str(out), "--quiet"]) == 0
    d = read_cxi(out, length_unit="nm")
    assert d.n_images == 20 and d.truth["type"] == "Ellipsoid"
    R = d.truth["fields"]["rotation"]
    assert R.shape == (20, 3, 3)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), (20, 3, 3)), atol=1e-12)
    fl = d.extras["fluence"]
    assert fl.shape == (20,) and fl.min() >= 10 and fl.max() <= 1000 and len(set(fl)) == 20
    a = d.truth["fields"]["semi_axes"]
    size = np.cbrt(a.prod(1))
    assert size.min() >= 1.5 - 1e-9 and size.max() <= 3.0 + 1e-9
    np.testing.assert_array_equal(d.extras["index"], np.arange(20))
    # Every image is the expected photons of its stored truth on the stored voxel grid.
    grid = ds.VoxelGrid(tuple(d.extras["grid_shape"]), tuple(d.extras["grid_pitch"]))
    exp = d.experiment
    for i in (0, 7, 19):
        s = shape_from_dict(d.truth, i)
        I = ds.simulate(s, exp, grid=grid)
        ref = np.asarray(ds.detectors.expected_photons(I, exp, fl[i], "unpolarised"))
        np.testing.assert_allclose(d.data[i], ref, rtol=1e-5, atol=1e-6 * ref.max())
    # Lazily read in chunks: the same images.
    got = np.concatenate([c for _, c in d.data.chunks(7)])
    np.testing.assert_array_equal(got, d.data[:])


def test_dataset_poisson_reproducible_from_seed(tmp_path):
    cfg = _write(
        tmp_path,
        DATASET.replace('noise = "none"', 'noise = "poisson"\nseed = 11')
        .replace("count = 20", "count = 3")
        .replace("n = 32", "n = 12")
        .replace("high = 3.0", "high = 2.0"),
    )
    outs = []
    for k in range(2):
        out = tmp_path / f"p{k}.cxi"
        assert main(["simulate", cfg, "-o", str(out), "--quiet", "--no-png"]) == 0
        outs.append(read_cxi(out, length_unit="nm").data[:])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.all(outs[0] == np.round(outs[0]))


@pytest.mark.slow
def test_dataset_1000_patterns_128(tmp_path):
    import time

    cfg = _write(
        tmp_path,
        DATASET.replace("count = 20", "count = 1000")
        .replace("n = 32", "n = 128")
        .replace("chunk = 8", "chunk = 32"),
    )
    out = tmp_path / "big.cxi"
    t = time.perf_counter()
    assert main(["simulate", cfg, "-o", str(out), "--no-png"]) == 0
    dt = time.perf_counter() - t
    d = read_cxi(out, length_unit="nm")
    assert d.n_images == 1000 and d.data.shape == (1000, 128, 128)
    assert d.truth["fields"]["semi_axes"].shape == (1000, 3)
    print(f"1000 patterns of 128^2: {dt:.1f} s")
    assert dt < 600
    grid = ds.VoxelGrid(tuple(d.extras["grid_shape"]), tuple(d.extras["grid_pitch"]))
    for i in (0, 999):
        I = ds.simulate(shape_from_dict(d.truth, i), d.experiment, grid=grid)
        ref = np.asarray(
            ds.detectors.expected_photons(I, d.experiment, d.extras["fluence"][i], "unpolarised")
        )
        np.testing.assert_allclose(d.data[i], ref, rtol=1e-5, atol=1e-6 * ref.max())
