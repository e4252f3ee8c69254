"""CXI / HDF5 files: layout readable with plain h5py, SI units, geometry consistency, round trips, lazy
stacks, multi-entry and plain files, tolerant reading, truth (de)serialisation, and clear errors."""

import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds
from diffscat import detectors as dt
from diffscat.io import NaNPixelWarning, read_cxi, shape_from_dict, shape_to_dict, write_cxi

HC = 6.62607015e-34 * 299792458.0


def _flat_exp(tilt=None):
    return ds.Experiment(1.3, ds.FlatDetector(120.0, (2.0, 1.5), (20, 26), center=(8.4, 13.7), tilt=tilt))


def _directions_from_file(path, entry="entry_1"):
    """(theta, phi) of every pixel from the file's CXI geometry alone (plain h5py + NumPy)."""
    with h5py.File(path, "r") as f:
        g = f[f"{entry}/instrument_1/detector_1"]
        corner = g["corner_position"][()]
        b = g["basis_vectors"][()]
        ny, nx = f[f"{entry}/data_1/data"].shape[-2:]
    iy, ix = np.mgrid[0:ny, 0:nx]
    P = corner + (iy[..., None] + 0.5) * b[0] + (ix[..., None] + 0.5) * b[1]
    r = np.linalg.norm(P, axis=-1)
    return np.arccos(P[..., 2] / r), np.arctan2(P[..., 1], P[..., 0])


def test_file_layout_plain_h5py_and_si_units(tmp_path):
    exp = _flat_exp()
    img = np.random.default_rng(0).uniform(1, 2, exp.shape)
    mask = dt.circular_mask(exp.shape, (8.4, 13.7), 3.0)
    p = write_cxi(tmp_path / "a.cxi", img, exp, length_unit="nm", quantity="photons", mask=mask)
    with h5py.File(p, "r") as f:
        assert int(f["cxi_version"][()]) == 160
        det = f["entry_1/instrument_1/detector_1"]
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], det["data"][()])
        np.testing.assert_allclose(det["data"][()], img)
        assert det["data"].attrs["quantity"] == "photons"
        assert det["mask"].dtype == np.uint32
        np.testing.assert_array_equal(det["mask"][()] == 0, mask)
        assert det["distance"][()] == pytest.approx(120e-9, rel=1e-15)
        assert det["x_pixel_size"][()] == pytest.approx(1.5e-9, rel=1e-15)
        assert det["y_pixel_size"][()] == pytest.approx(2.0e-9, rel=1e-15)
        # corner of the FIRST pixel (not its centre): half a pixel before pixel (0, 0)'s centre.
        np.testing.assert_allclose(
            det["corner_position"][()],
            np.array([-(13.7 + 0.5) * 1.5, -(8.4 + 0.5) * 2.0, 120.0]) * 1e-9,
            rtol=1e-14,
        )
        np.testing.assert_allclose(det["basis_vectors"][()], [[0, 2e-9, 0], [1.5e-9, 0, 0]], rtol=1e-14)
        src = f["entry_1/instrument_1/source_1"]
        assert src["energy"][()] == pytest.approx(HC / 1.3e-9, rel=1e-14)
        assert src["wavelength"][()] == pytest.approx(1.3e-9, rel=1e-14)


@pytest.mark.parametrize("tilt", [None, (0.12, -0.2)])
def test_pixel_directions_consistent_with_corner_position(tmp_path, tilt):
    exp = _flat_exp(tilt)
    p = write_cxi(tmp_path / "g.cxi", np.ones(exp.shape), exp, length_unit="nm")
    th, ph = _directions_from_file(p)
    d = read_cxi(p, length_unit="nm")
    for e in (exp, d.experiment):
        np.testing.assert_allclose(np.asarray(e.theta), th, atol=1e-12)
        np.testing.assert_allclose(np.asarray(e.phi), ph, atol=1e-12)
    det = d.experiment.detector
    np.testing.assert_allclose(np.asarray(det.center), (8.4, 13.7), atol=1e-12)
    assert (det.tilt is None) == (tilt is None)
    # Another user unit: lengths scale, angles and the beam centre do not.
    d2 = read_cxi(p, length_unit="um")
    assert float(d2.experiment.detector.distance) == pytest.approx(0.12, rel=1e-12)
    assert float(d2.experiment.wavelength) == pytest.approx(1.3e-3, rel=1e-12)
    np.testing.assert_allclose(np.asarray(d2.experiment.theta), th, atol=1e-12)


def test_write_read_simulate_round_trip_identical(tmp_path):
    exp = _flat_exp()
    shape = ds.Ellipsoid(
        (3.0, 2.0, 2.5), 0.002, 0.001, rotation=ds.rotation_from_euler(jnp.array([0.3, 0.5, 0.1]))
    )
    I = np.asarray(ds.simulate(shape, exp))
    p = write_cxi(tmp_path / "r.cxi", I, exp, length_unit="nm", truth=shape, dtype=np.float64)
    d = read_cxi(p, length_unit="nm")
    assert d.quantity == "dsigma_domega" and d.n_images == 1
    np.testing.assert_allclose(d.data, I, rtol=1e-14)  # m^2/sr in the file, nm^2/sr back
    with h5py.File(p) as f:
        assert f["entry_1/data_1/data"][()].max() == pytest.approx(I.max() * 1e-18, rel=1e-14)
    again = ds.simulate(shape_from_dict(d.truth), d.experiment)
    np.testing.assert_array_equal(np.asarray(again), I)


def test_qgrid_experiment_round_trip(tmp_path):
    exp = ds.Experiment(2.0, ds.QGrid(16, 25.0))
    p = write_cxi(tmp_path / "q.cxi", np.zeros(exp.shape), exp, length_unit="A")
    e = read_cxi(p, length_unit="A").experiment
    assert isinstance(e.detector, ds.QGrid) and e.detector.n == 16 and e.detector.theta_max_deg == 25.0
    assert float(e.wavelength) == pytest.approx(2.0, rel=1e-14)


def test_stack_lazy_chunks_and_truth(tmp_path):
    exp = _flat_exp()
    shapes = [ds.Sphere(r, 0.0, 0.001) for r in (2.0, 2.5, 3.0, 3.5, 4.0)]
    imgs = np.random.default_rng(1).uniform(0, 1, (5, *exp.shape)).astype(np.float32)
    p = write_cxi(
        tmp_path / "s.cxi",
        imgs,
        exp,
        length_unit="nm",
        quantity="photons",
        truth=ds.stack(shapes),
        per_image={"fluence": np.arange(5.0)},
    )
    d = read_cxi(p, length_unit="nm")
    assert isinstance(d.data, ds.io.LazyStack) and len(d.data) == 5 and d.n_images == 5
    np.testing.assert_array_equal(d.data[3], imgs[3])
    got = np.concatenate([c for _, c in d.data.chunks(2)])
    np.testing.assert_array_equal(got, imgs)
    for i, s in enumerate(shapes):
        assert float(shape_from_dict(d.truth, i).radius) == float(s.radius)
    np.testing.assert_array_equal(d.extras["fluence"], np.arange(5.0))
    assert "version_diffscat" in d.extras and "version_jax" in d.extras


def test_multi_entry_and_plain_hdf5(tmp_path):
    p = tmp_path / "multi.cxi"
    rng = np.random.default_rng(2)
    with h5py.File(p, "w") as f:  # like CXIDB id-94: one image per entry, CXI default basis, eV energy
        for k in (1, 2, 3):
            g = f.create_group(f"entry_{k}/instrument_1/detector_1")
            g["data"] = rng.uniform(0, 1, (6, 8)) + k
            g["distance"] = 0.5
            g["x_pixel_size"] = g["y_pixel_size"] = 1e-3
            f[f"entry_{k}/instrument_1/source_1/energy"] = 1.6e-17  # J (100 eV)
        f["some/where/img"] = rng.uniform(0, 1, (4, 5))
    assert ds.io.list_entries(p) == ["entry_1", "entry_2", "entry_3"]
    with pytest.warns(UserWarning, match="corner_position"):
        d = read_cxi(p, length_unit="mm", entry=2)
    assert d.data.min() >= 2 and d.data.max() <= 3
    assert float(d.experiment.detector.distance) == pytest.approx(500.0)
    assert float(d.experiment.wavelength) == pytest.approx(HC / 1.6e-17 * 1e3, rel=1e-12)
    plain = read_cxi(p, length_unit="nm", data_path="/some/where/img")
    assert plain.data.shape == (4, 5)


def test_tolerant_reading_ev_energy_condor_mask_and_default_basis(tmp_path):
    p = tmp_path / "foreign.cxi"
    ny, nx = 6, 8
    img = np.zeros((ny, nx))
    img[1, 2] = 7.0  # a marker pixel
    with h5py.File(p, "w") as f:
        g = f.create_group("entry_1/instrument_1/detector_1")
        g["data"] = img
        # CXI default basis: rows step -y, columns step -x; first-pixel corner accordingly.
        g["basis_vectors"] = [[0, -1e-4, 0], [-1e-4, 0, 0]]
        g["corner_position"] = [3.9e-4, 2.9e-4, 0.05]
        f["entry_1/instrument_1/source_1/energy"] = 500.0  # eV, as some files store it
        m = np.zeros((ny, nx), np.uint32)
        m[0, 0] = dt.CXI_DEAD
        f["entry_1/data_1/mask"] = m  # condor's mask location
    th_f, ph_f = _directions_from_file_default(p)
    with pytest.warns(UserWarning, match="eV"):
        d = read_cxi(p, length_unit="m")
    assert float(d.experiment.wavelength) == pytest.approx(HC / (500 * 1.602176634e-19), rel=1e-12)
    # Data were flipped to the +x / +y orientation: the marker keeps its physical direction.
    ((iy, ix),) = np.argwhere(d.data == 7.0)
    assert np.asarray(d.experiment.theta)[iy, ix] == pytest.approx(th_f[1, 2], abs=1e-12)
    assert np.asarray(d.experiment.phi)[iy, ix] == pytest.approx(ph_f[1, 2], abs=1e-12)
    ((my, mx),) = np.argwhere(~d.mask)
    assert np.asarray(d.experiment.theta)[my, mx] == pytest.approx(th_f[0, 0], abs=1e-12)


def test_old_top_level_groups(tmp_path):
    p = tmp_path / "old.h5"
    with h5py.File(p, "w") as f:
        f["detector/data"] = np.arange(12.0).reshape(3, 4)
        f["detector/distance"] = 0.1
        f["detector/x_pixel_size"] = f["detector/y_pixel_size"] = 2e-4
        # No basis_vectors: the CXI default (rows step -y, columns -x) applies; the beam hits file pixel
        # (row 1.0, col 1.5), which is (1.0, 1.5) again after flipping both axes to +y / +x.
        f["detector/corner_position"] = [4e-4, 3e-4, 0.1]
        f["source/energy"] = 1e-16
        f["detector/mask"] = np.array([[0, 0, 0, 0], [0, 0x10, 0, 0], [0, 0, 0, 0]], np.uint32)
    d = read_cxi(p, length_unit="mm")
    np.testing.assert_array_equal(d.data, np.arange(12.0).reshape(3, 4)[::-1, ::-1])
    np.testing.assert_allclose(np.asarray(d.experiment.detector.center), (1.0, 1.5), atol=1e-12)
    assert float(d.experiment.detector.distance) == pytest.approx(100.0)
    assert d.mask.sum() == 11 and not d.mask[1, 2]


def _directions_from_file_default(path):
    with h5py.File(path, "r") as f:
        g = f["entry_1/instrument_1/detector_1"]
        corner, b = g["corner_position"][()], g["basis_vectors"][()]
        ny, nx = g["data"].shape
    iy, ix = np.mgrid[0:ny, 0:nx]
    P = corner + (iy[..., None] + 0.5) * b[0] + (ix[..., None] + 0.5) * b[1]
    return np.arccos(P[..., 2] / np.linalg.norm(P, axis=-1)), np.arctan2(P[..., 1], P[..., 0])


def test_malformed_files_give_clear_errors(tmp_path):
    p = tmp_path / "bad.cxi"
    with h5py.File(p, "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.ones((2, 3, 4, 5))
        f["entry_2/instrument_1/other"] = 1
        f["entry_3/instrument_1/detector_1/data"] = np.ones((4, 5))
        f["entry_3/instrument_1/detector_1/mask"] = np.zeros((4, 6), np.uint32)
    with pytest.raises(ValueError, match="rank"):
        read_cxi(p, length_unit="nm", entry=1)
    with pytest.raises(ValueError, match="missing dataset"):
        read_cxi(p, length_unit="nm", entry=2)
    with pytest.raises(ValueError, match="mask.*shape"):
        read_cxi(p, length_unit="nm", entry=3)
    with pytest.raises(ValueError, match="no group /entry_9"):
        read_cxi(p, length_unit="nm", entry=9)
    with pytest.raises(ValueError, match="length_unit"):
        read_cxi(p, length_unit="furlong")
    with pytest.raises(FileNotFoundError):
        read_cxi(tmp_path / "nope.cxi", length_unit="nm")


def test_nan_pixels_masked_with_warning(tmp_path):
    img = np.ones((5, 6))
    img[2, 3] = np.nan
    img[0, 1] = np.inf
    p = write_cxi(tmp_path / "n.cxi", img, None, length_unit="nm", quantity="photons")
    with pytest.warns(NaNPixelWarning, match="2 NaN"):
        d = read_cxi(p, length_unit="nm")
    assert np.all(np.isfinite(d.data)) and d.data[2, 3] == 0
    assert d.mask.sum() == 28 and not d.mask[2, 3] and not d.mask[0, 1]
    stack = np.ones((3, 5, 6))
    stack[1, 4, 4] = np.nan
    p2 = write_cxi(tmp_path / "n2.cxi", stack, None, length_unit="nm", quantity="photons")
    d2 = read_cxi(p2, length_unit="nm")
    with pytest.warns(NaNPixelWarning):
        frame = d2.data[1]
    assert np.all(np.isfinite(frame))
    assert not d2.data.masks_for(1)[4, 4] and d2.data.masks_for(0).all()


def test_writes_are_atomic_and_protect_inputs(tmp_path):
    p = tmp_path / "keep.cxi"
    write_cxi(p, np.ones((4, 4)), None, length_unit="nm", quantity="photons")
    before = p.read_bytes()
    with pytest.raises(ValueError, match="input"):
        write_cxi(p, np.zeros((4, 4)), None, length_unit="nm", protect=[p])
    with pytest.raises(ValueError, match="images must be"):
        with ds.io.CXIWriter(p, (4, 4), None, length_unit="nm") as w:
            w.append(np.zeros((2, 4, 4)))
            w.append(np.zeros((2, 5, 4)))  # fails mid-write: the old file survives untouched
    assert p.read_bytes() == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []
    with pytest.raises(FileExistsError):
        write_cxi(p, np.zeros((4, 4)), None, length_unit="nm", overwrite=False)


def test_shape_dict_round_trip_every_shape_class():
    R = ds.rotation_from_euler(jnp.array([0.2, 1.0, -0.4]))
    examples = [
        ds.Sphere(3.0, 0.01, 0.002, centre=jnp.array([0.5, 0.0, -1.0])),
        ds.Ellipsoid((3.0, 2.0, 1.5), 0.02, 0.0, rotation=R),
        ds.VolumeMap(np.random.default_rng(3).normal(size=(4, 5, 6)) * 1e-3 + 0j, (0.5, 0.5, 0.25)),
    ]
    covered = {type(s).__name__ for s in examples}
    for s in examples:
        d = shape_to_dict(s)
        assert d["type"] == type(s).__name__
        back = shape_from_dict(d)
        assert type(back) is type(s)

        la, lb = jax.tree.leaves(s), jax.tree.leaves(back)
        assert len(la) == len(lb)
        for a, b in zip(la, lb, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert back.extent_hint == s.extent_hint
    # Any other concrete shape class (added by other modules) must at least be resolvable by name.
    for name in dir(ds.shapes):
        c = getattr(ds.shapes, name)
        if isinstance(c, type) and issubclass(c, ds.AbstractShape) and not name.startswith("Abstract"):
            assert ds.io.shape_class(name.lower()) is c
    assert {"Sphere", "Ellipsoid", "VolumeMap"} <= covered
    with pytest.raises(ValueError, match="unknown shape type"):
        ds.io.shape_class("Dodecahedron9")


def test_nested_shape_truth_streams_and_round_trips(tmp_path):
    if not hasattr(ds.shapes, "CoreShell"):
        pytest.skip("no nested shape class in this version")
    shapes = [ds.shapes.CoreShell(ds.Sphere(r, 0.01), ds.Sphere(r + 1.0, 0.02)) for r in (1.0, 1.5, 2.0)]
    with ds.io.CXIWriter(tmp_path / "n.cxi", (4, 4), None, length_unit="nm") as w:
        w.append(np.zeros((2, 4, 4)), ds.stack(shapes[:2]))
        w.append(np.zeros((1, 4, 4)), ds.stack(shapes[2:]))
    d = read_cxi(tmp_path / "n.cxi", length_unit="nm")
    for i, s in enumerate(shapes):
        back = shape_from_dict(d.truth, i)
        assert jax.tree.structure(back) == jax.tree.structure(s)
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(back), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
