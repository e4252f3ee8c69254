"""The detector interface (diffscat/detectors/_base.py): static angular bounds, separable layout, beam centre and
with_beam_center, binning, plot axes, fittable leaves, the type registry, and round trips of every registered
type through the config dict and CXI files. Expected values come from the geometry (docs/conventions.md)."""

import math

import numpy as np
import pytest

import diffscat as ds
from diffscat.detectors import DETECTOR_TYPES, detector_type, register_detector
from diffscat.io import parse_config, read_cxi, write_cxi

TILTED = dict(distance=120.0, pixel_size=(2.0, 1.5), shape=(20, 26), center=(8.4, 13.7), tilt=(0.12, -0.2))


def _flat(tilt=TILTED["tilt"]):
    t = TILTED
    return ds.FlatDetector(t["distance"], t["pixel_size"], t["shape"], t["center"], tilt)


def _max_valid_theta(det) -> float:
    pix = det.pixels()
    return float(np.max(np.where(np.asarray(pix.valid), np.asarray(pix.theta), 0.0)))


# ----------------------------------------------------------------------------------------------- bounds


def test_theta_bound_grids_corner_factor():
    # QGrid: corners at sin = sqrt2 sin(30 deg) = 1/sqrt2, i.e. 45 deg; beyond 45 deg the bound is 90 deg.
    assert ds.QGrid(16, 30.0).theta_bound(math.radians(30.0)) == pytest.approx(math.pi / 4, rel=1e-12)
    assert ds.QGrid(16, 50.0).theta_bound(math.radians(50.0)) == pytest.approx(math.pi / 2)
    # AngleGrid: corners at sqrt2 theta_max, times the margin, capped at 90 deg.
    ag = ds.AngleGrid(16, 30.0)
    assert ag.theta_bound(math.radians(30.0)) == pytest.approx(math.sqrt(2) * math.radians(30.0), rel=1e-12)
    assert ag.theta_bound(math.radians(30.0), 1.05) == pytest.approx(
        1.05 * math.sqrt(2) * math.radians(30.0), rel=1e-12
    )
    assert ds.AngleGrid(16, 70.0).theta_bound(math.radians(70.0)) == pytest.approx(math.pi / 2)


@pytest.mark.parametrize(
    "det",
    [ds.QGrid(16, 30.0), ds.AngleGrid(16, 30.0), _flat(), ds.Directions(np.linspace(0, 1.2, 7), np.zeros(7))],
    ids=["qgrid", "anglegrid", "flat", "directions"],
)
def test_theta_bound_covers_every_valid_pixel(det):
    exp = ds.Experiment(1.0, det)
    bound = det.theta_bound(exp.theta_max)
    assert bound <= math.pi / 2
    assert _max_valid_theta(det) <= bound * (1 + 1e-6)


def test_default_theta_bound_is_theta_max_times_margin():
    det = _flat()
    assert det.theta_bound(0.5) == 0.5 and det.theta_bound(0.5, 1.05) == pytest.approx(0.525)
    assert det.theta_bound(1.5, 1.1) == pytest.approx(math.pi / 2)
    assert det.nominal_theta_max() is None and ds.QGrid(8, 20.0).nominal_theta_max() == math.radians(20.0)


def test_separable_layout():
    q = ds.QGrid(8, 20.0)
    sx, sy = q.separable_axes()
    assert q.separable_layout() == "symmetric"
    np.testing.assert_allclose(np.asarray(sx), -np.asarray(sx)[::-1], atol=1e-7)  # what "symmetric" means
    np.testing.assert_array_equal(np.asarray(sx), np.asarray(sy))
    for det in (ds.AngleGrid(8, 20.0), _flat()):
        assert det.separable_axes() is None and det.separable_layout() == "separable"


# ----------------------------------------------------------------------------------------------- beam centre


def test_beam_center():
    assert ds.QGrid(9, 20.0).beam_center() == (4.0, 4.0)
    assert ds.AngleGrid(10, 20.0).beam_center() == (4.5, 4.5)
    np.testing.assert_allclose(np.asarray(_flat().beam_center()), TILTED["center"], rtol=1e-6)
    assert ds.Directions(np.ones(3) * 0.1, np.zeros(3)).beam_center() is None
    # The grid's beam centre is where theta = 0 (odd n: a pixel centre).
    th = np.asarray(ds.Experiment(1.0, ds.QGrid(9, 20.0)).theta)
    assert th[4, 4] == 0.0 and np.unravel_index(np.argmin(th), th.shape) == (4, 4)


def test_with_beam_center_keeps_every_other_field():
    det = _flat()
    moved = det.with_beam_center((3.0, 5.5))
    np.testing.assert_allclose(np.asarray(moved.center), (3.0, 5.5))
    np.testing.assert_array_equal(np.asarray(moved.tilt), np.asarray(det.tilt))
    np.testing.assert_array_equal(np.asarray(moved.distance), np.asarray(det.distance))
    np.testing.assert_array_equal(np.asarray(moved.pixel_size), np.asarray(det.pixel_size))
    assert moved.shape == det.shape and np.asarray(det.center)[0] == pytest.approx(8.4)  # original untouched
    # The direct beam (theta = 0) now hits the plane at the new centre: pixel (3, 5) vs (3, 6) straddle it.
    assert _flat(None).with_beam_center((3.0, 5.0)).pixels().theta[3, 5] == 0.0
    with pytest.raises(ValueError, match="center"):
        det.with_beam_center((1.0, 2.0, 3.0))
    for fixed in (ds.QGrid(8, 20.0), ds.AngleGrid(8, 20.0), ds.Directions(np.ones(3) * 0.1, np.zeros(3))):
        with pytest.raises(ValueError, match="no adjustable beam centre"):
            fixed.with_beam_center((1.0, 1.0))


def test_fit_cli_beam_center_keeps_tilt():
    """Regression: the fit CLI's [fit] beam_center rebuilt the FlatDetector without its tilt."""
    from fitting._cli_fit import _with_beam_center

    exp = ds.Experiment(1.3, _flat())
    data = np.ones(exp.shape)
    out = _with_beam_center(exp, [7.0, 12.5], data, np.ones(exp.shape, bool))
    np.testing.assert_array_equal(np.asarray(out.detector.tilt), np.asarray(exp.detector.tilt))
    np.testing.assert_allclose(np.asarray(out.detector.tilt), TILTED["tilt"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.detector.center), (7.0, 12.5))
    assert float(out.wavelength) == pytest.approx(1.3)
    with pytest.raises(ValueError, match=r"beam_center needs .*QGrid"):
        _with_beam_center(
            ds.Experiment(1.0, ds.QGrid(8, 20.0)), "auto", np.ones((8, 8)), np.ones((8, 8), bool)
        )


def test_fittable_fields_name_real_leaves():
    det = _flat()
    f = det.fittable_fields()
    assert set(f) == {"distance", "pixel_size", "beam_center"}
    for path in f.values():
        assert getattr(det, path[0]) is not None
    assert ds.QGrid(8, 20.0).fittable_fields() == {} and ds.AngleGrid(8, 20.0).fittable_fields() == {}


# ----------------------------------------------------------------------------------------------- binning, plots


def test_binned():
    assert ds.QGrid(16, 25.0).binned(2) == ds.QGrid(8, 25.0)
    assert ds.AngleGrid(16, 25.0).binned(4) == ds.AngleGrid(4, 25.0)
    b = _flat().binned(2)
    assert b.shape == (10, 13)
    np.testing.assert_allclose(np.asarray(b.pixel_size), (4.0, 3.0))
    np.testing.assert_allclose(
        np.asarray(b.center), ((8.4 + 0.5) / 2 - 0.5, (13.7 + 0.5) / 2 - 0.5), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(b.tilt), np.asarray(_flat().tilt))
    with pytest.raises(ValueError, match="binning is not supported for Directions"):
        ds.Directions(np.ones(4) * 0.1, np.zeros(4)).binned(2)


def test_plot_axes():
    lam = 2.0
    ext, xl, yl, unit = ds.QGrid(8, 30.0).plot_axes(lam, "nm")
    k = 2 * math.pi / lam * 0.5
    np.testing.assert_allclose(ext, [-k, k, -k, k], rtol=1e-12)
    assert (xl, yl, unit) == ("q_x", "q_y", "1/nm")
    assert ds.QGrid(8, 30.0).plot_axes(lam)[3] == "inverse length"
    det = ds.FlatDetector(100.0, (2.0, 1.0), (4, 6), center=(1.5, 2.5))
    ext, xl, yl, unit = det.plot_axes(lam, "um")
    np.testing.assert_allclose(
        ext, [-3.0, 3.0, -4.0, 4.0], rtol=1e-6
    )  # pixel edges: 6 x 1, 4 x 2 around centre
    assert (xl, yl, unit) == ("X", "Y", "detector plane, um")
    assert det.plot_axes(lam)[3] == "detector plane, length"
    ext, xl, yl, unit = ds.AngleGrid(8, 20.0).plot_axes(lam, "nm")
    da = 40.0 / 8
    np.testing.assert_allclose(ext, [-20 + da / 2, 20 - da / 2] * 2, rtol=1e-5)
    assert (xl, yl, unit) == ("theta_x", "theta_y", "deg")
    assert ds.Directions(np.ones(3) * 0.1, np.zeros(3)).plot_axes(lam) == (None, "column", "row", "pixels")


# ----------------------------------------------------------------------------------------------- registry


def test_registry():
    assert DETECTOR_TYPES == {"qgrid": ds.QGrid, "anglegrid": ds.AngleGrid, "flat": ds.FlatDetector}
    assert detector_type("flat") is ds.FlatDetector
    with pytest.raises(ValueError, match="unknown detector type 'spherical'"):
        detector_type("spherical")
    with pytest.raises(ValueError, match="already registered"):

        class Other(ds.QGrid):
            pass

        register_detector(Other)
    with pytest.raises(ValueError, match="type_name"):
        register_detector(ds.Directions)


# ----------------------------------------------------------------------------------------------- round trips

DETS = {
    "qgrid": lambda: ds.QGrid(12, 28.0),
    "anglegrid": lambda: ds.AngleGrid(10, 33.0),
    "flat": lambda: _flat(None),
    "flat_tilted": _flat,
}


def _same_detector(a, b, rtol):
    assert type(a) is type(b) and a.shape == b.shape
    for name in ("n", "theta_max_deg"):
        if hasattr(a, name):
            assert getattr(a, name) == getattr(b, name)
    for name in ("distance", "pixel_size", "center", "tilt"):
        if hasattr(a, name):
            va, vb = getattr(a, name), getattr(b, name)
            assert (va is None) == (vb is None)
            if va is not None:
                np.testing.assert_allclose(np.asarray(vb), np.asarray(va), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("name", list(DETS))
def test_config_round_trip(name):
    det = DETS[name]()
    d = det.to_config()
    assert d["type"] == det.type_name and set(d) <= {"type", *det.config_keys}
    cfg = parse_config(
        {
            "experiment": {"wavelength": 1.0, "length_unit": "nm", "detector": d},
            "shape": {"type": "Sphere", "radius": 5.0},
        }
    )
    exp = ds.io.build_experiment(cfg)
    _same_detector(det, exp.detector, rtol=1e-6)
    _same_detector(det, type(det).from_config(d), rtol=1e-6)


@pytest.mark.parametrize("name", list(DETS))
def test_cxi_round_trip(tmp_path, name):
    exp = ds.Experiment(1.3, DETS[name]())
    img = np.random.default_rng(1).uniform(1, 2, exp.shape)
    write_cxi(tmp_path / "a.cxi", img, exp, length_unit="nm")
    back = read_cxi(tmp_path / "a.cxi", length_unit="nm").experiment
    _same_detector(exp.detector, back.detector, rtol=1e-12)
    assert float(back.wavelength) == float(exp.wavelength)
    np.testing.assert_allclose(np.asarray(back.theta), np.asarray(exp.theta), rtol=1e-6, atol=1e-7)
    # Another length unit: the same geometry, scaled.
    um = read_cxi(tmp_path / "a.cxi", length_unit="um").experiment
    assert float(um.wavelength) == pytest.approx(1.3e-3, rel=1e-6)
    np.testing.assert_allclose(np.asarray(um.theta), np.asarray(exp.theta), rtol=1e-5, atol=1e-6)


def test_cxi_unregistered_detector_has_no_geometry(tmp_path):
    th, ph = np.meshgrid(np.linspace(0.01, 0.5, 5), np.linspace(0, 1, 4))
    exp = ds.Experiment(1.0, ds.Directions(th, ph))
    with pytest.warns(UserWarning, match="Directions geometry is not stored"):
        write_cxi(tmp_path / "d.cxi", np.ones(exp.shape), exp, length_unit="nm")
    assert read_cxi(tmp_path / "d.cxi", length_unit="nm").experiment is None
    with pytest.raises(ValueError, match="no config representation"):
        exp.detector.to_config()
