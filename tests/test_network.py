"""The amortised-inversion network: input transform, twin-min loss, training, checkpoints, predict CLI."""

import json
import os
import pathlib

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds
import fitting
from diffscat.detectors import expected_photons
from fitting._network import CanonicalMap, InversionCNN, network_loss, rotation_from_6d, twin_rotations
from fitting._train import DataStream, _random_rotations, check_config, load_checkpoint, train

TINY = {
    "data": {"n_pixels": 32, "size_buckets": [1.5, 2.5], "center_shift_px": 1},
    "network": {"n": 32, "widths": [8, 16], "hidden": 32},
    "train": {"batch_size": 8, "learning_rate": 3e-3, "warmup": 3, "log_every": 5, "checkpoint_every": 5},
}


def _cfg(steps):
    return {**TINY, "train": {**TINY["train"], "steps": steps}}


def _sphere_counts(exp, radius=3.0, photons=1e7):
    """Expected counts of a homogeneous sphere (Born form factor at each pixel's |q|, an independent path)."""
    x = np.linalg.norm(np.asarray(exp.q), axis=-1) * radius
    x = np.where(x < 1e-6, 1e-6, x)
    inten = jnp.asarray((3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2)
    e = np.asarray(expected_photons(inten, exp, 1.0))
    return e / e[np.asarray(exp.valid)].sum() * photons


def _radial(img, mask, n):
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - c, xx - c).astype(int)
    used = mask > 0
    s = np.bincount(r[used], img[used], minlength=n)
    w = np.bincount(r[used], minlength=n)
    return np.where(w > 0, s / np.maximum(w, 1), np.nan)


def test_input_transform_is_geometry_independent():
    """The same sphere on a QGrid and on a flat detector of the same angular reach: similar canonical images
    (noiseless expected counts; different pixel sizes, so only the per-solid-angle normalisation makes them
    agree)."""
    qg = ds.Experiment(1.0, ds.QGrid(96, 30.0))
    n = 48
    d = 100.0
    half = d * np.tan(np.radians(30.0))
    flat = ds.Experiment(1.0, ds.FlatDetector(d, 2 * half / 70, (70, 70)))
    a = np.asarray(CanonicalMap.from_experiment(qg, n)(jnp.asarray(_sphere_counts(qg))))
    b = np.asarray(CanonicalMap.from_experiment(flat, n)(jnp.asarray(_sphere_counts(flat))))
    both = (a[1] > 0) & (b[1] > 0)
    assert both.sum() > 0.5 * n * n
    pa, pb = _radial(a[0], both, n), _radial(b[0], both, n)
    ok = np.isfinite(pa) & np.isfinite(pb)
    assert ok.sum() > n // 3
    assert np.max(np.abs(pa[ok] - pb[ok])) < 0.05
    # and a different size is clearly different (the check above can fail)
    c = np.asarray(CanonicalMap.from_experiment(flat, n)(jnp.asarray(_sphere_counts(flat, 4.0))))
    pc = _radial(c[0], both, n)
    assert np.max(np.abs(pc[ok] - pb[ok])) > 0.1


def test_canonical_mask_follows_detector_and_beamstop():
    exp = ds.Experiment(1.0, ds.QGrid(32, 20.0))  # smaller than the canonical 30 deg: outer bins masked
    cm = CanonicalMap.from_experiment(exp, 32)
    th = np.asarray(exp.theta)
    x = np.asarray(cm(jnp.ones(exp.shape), jnp.asarray(th > np.radians(5))))
    assert x[1, 0, 0] == 0 and x[1, 16, 16] == 0  # corner (beyond 20 deg) and beamstop
    assert x[1, 16, 22] == 1
    with pytest.raises(ValueError, match="counts"):
        cm(jnp.ones((5, 5)))


def test_rotation_from_6d_is_a_rotation():
    R = np.asarray(rotation_from_6d(jnp.array([1.0, 0.2, -0.3, 0.4, 1.0, 0.5])))
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
    assert abs(np.linalg.det(R) - 1) < 1e-5


def _target(R):
    return {
        "log_size": jnp.array(1.0),
        "label": jnp.array(1),
        "log_axes": jnp.array([-0.1, 0.2]),
        "rotation": jnp.asarray(R, jnp.float32),
        "has_orientation": jnp.array(1.0),
        "has_axes": jnp.array(1.0),
    }


def test_twin_min_loss_invariant_and_below_average():
    R = _random_rotations(np.random.default_rng(3), 1)[0]
    tw = np.asarray(twin_rotations(jnp.asarray(R, jnp.float32)))
    for T in tw:  # every twin is a proper rotation
        np.testing.assert_allclose(T @ T.T, np.eye(3), atol=1e-5)
        assert abs(np.linalg.det(T) - 1) < 1e-5
    # the 180-deg turn about the beam (inversion x z-mirror) is among them
    assert min(np.abs(T - np.diag([-1.0, -1.0, 1.0]) @ R).max() for T in tw) < 1e-6
    out = {
        "log_size": jnp.array(1.2),
        "logits": jnp.array([0.1, 0.5]),
        "log_axes": jnp.array([-0.2, 0.1]),
        "rot6d": jnp.asarray(np.concatenate([tw[5][:, 0], tw[5][:, 1]]) + 0.05),
    }
    l0, p0 = network_loss(out, _target(R))
    # the z-mirror twin M R D' as truth: same loss
    Mz = np.diag([1.0, 1.0, -1.0])
    l1, p1 = network_loss(out, _target(Mz @ R @ np.diag([1.0, 1.0, -1.0])))
    np.testing.assert_allclose(float(p0["orientation"]), float(p1["orientation"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-5)
    # prediction near twin 5: small min-loss, much larger mean-loss
    _, pm = network_loss(out, _target(R), reduce_twins="mean")
    assert float(p0["orientation"]) < 0.01 < float(pm["orientation"])
    # a non-twin (90 deg about z) is not absorbed
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    _, p2 = network_loss(out, _target(R @ Rz))
    assert float(p2["orientation"]) > 10 * float(p0["orientation"])


def _body_image(name: str, M: np.ndarray) -> np.ndarray:
    """The body of class `name` mapped by the 3x3 matrix M, as comparable data: the ellipsoid's quadratic form
    (semi-axes 1, 1.3, 1.7) or a polyhedron's face planes [M n_f, d_f] (rows, any order)."""
    if name == "Ellipsoid":
        return M @ np.diag([1.0, 1 / 1.3**2, 1 / 1.7**2]) @ M.T
    body = getattr(ds, name)(1.0)
    N, d = (np.asarray(v, float) for v in (body.convex_planes() if name == "Decahedron" else body.planes()))
    return np.concatenate([N @ M.T, d[:, None]], 1)


def _same_body(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape == (3, 3):
        return bool(np.abs(a - b).max() < 1e-5)
    return bool((np.min(np.abs(a[None] - b[:, None]).max(-1), axis=1) < 1e-5).all())  # same set of planes


@pytest.mark.parametrize(
    "name, n_sym, n_twins",
    [
        ("Ellipsoid", 8, 8),
        ("Cube", 48, 48),
        ("Cuboctahedron", 48, 48),
        ("Icosahedron", 120, 120),
        ("Decahedron", 20, 40),
    ],
)
def test_polyhedron_twins_are_the_same_body_or_its_lab_images(name, n_sym, n_twins):
    """Each twin L R g of a body at R is L applied to that body (L: identity, r -> -r, the z-mirror, both),
    checked on the face planes (the ellipsoid: its quadratic form), independently of how the group was found."""
    from fitting._network import body_symmetries, twin_factors

    G = body_symmetries(name)
    assert len(G) == n_sym and (np.linalg.det(G[: n_sym // 2]) > 0).all()
    R = _random_rotations(np.random.default_rng(7), 1)[0]
    tw = np.asarray(twin_rotations(jnp.asarray(R, jnp.float32), name), float)
    assert len(tw) == n_twins == len(twin_factors(name)[0])
    labs = [np.eye(3), -np.eye(3), np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    images = [_body_image(name, L @ R) for L in labs]
    for T in tw:
        np.testing.assert_allclose(T @ T.T, np.eye(3), atol=1e-5)
        assert abs(np.linalg.det(T) - 1) < 1e-5
        assert any(_same_body(_body_image(name, T), im) for im in images)
    assert min(np.abs(tw[i] - tw[j]).max() for i in range(len(tw)) for j in range(i)) > 1e-3  # distinct
    # a generic turn of the body is none of them
    Rx = np.array([[1.0, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    assert not any(_same_body(_body_image(name, R @ Rx), im) for im in images)


def test_loss_scores_each_class_against_its_own_twins():
    from fitting._network import twin_table

    classes = ("Sphere", "Ellipsoid", "Cube", "Icosahedron")
    table = twin_table(classes)
    R = _random_rotations(np.random.default_rng(4), 1)[0]
    Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    out = {
        "log_size": jnp.array(1.0),
        "logits": jnp.zeros(4),
        "log_axes": jnp.array([-0.1, 0.2]),
        "rot6d": jnp.asarray(np.concatenate([(R @ Rz90)[:, 0], (R @ Rz90)[:, 1]])),
    }

    def orient(label, reduce="min"):
        t = _target(R) | {"label": jnp.array(label)}
        return float(network_loss(out, t, twins=table, reduce_twins=reduce)[1]["orientation"])

    assert orient(2) < 1e-6  # a cube turned by 90 deg about its own axis is the same cube
    assert orient(1) > 0.1 and orient(3) > 0.01  # not an ellipsoid's nor an icosahedron's symmetry
    # the padded rows (the cube has 48 twins, the table 120) do not enter the mean
    cube_twins = np.asarray(twin_rotations(jnp.asarray(R, jnp.float32), "Cube"))
    mean = np.mean(np.sum((cube_twins - R @ Rz90) ** 2, axis=(1, 2)) / 8)
    assert orient(2, "mean") == pytest.approx(float(mean), rel=1e-4)
    # without a table: the ellipsoid's twins for every label (models before polyhedron orientations)
    t = _target(R) | {"label": jnp.array(2)}
    assert float(network_loss(out, t)[1]["orientation"]) == pytest.approx(orient(1), rel=1e-5)


def test_targets_score_polyhedron_orientations_unless_told_not():
    from fitting._train import targets_of

    truths = {
        "r_eq": np.full(3, 2.0),
        "label": np.array([0, 1, 2]),
        "rotation": np.tile(np.eye(3), (3, 1, 1)),
    }
    classes = ["Sphere", "Ellipsoid", "Cube"]
    cfg = check_config({**TINY, "classes": classes})
    assert targets_of(cfg, truths)["has_orientation"].tolist() == [0, 1, 1]
    cfg = check_config(
        {**TINY, "classes": classes, "train": {**TINY["train"], "orientation_classes": "ellipsoid"}}
    )
    assert targets_of(cfg, truths)["has_orientation"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="orientation_classes"):
        check_config({"train": {"orientation_classes": "cubes"}})
    with pytest.raises(ValueError, match="orient_orders"):
        check_config({"network": {"orient_orders": [0, 2]}})


def test_cnn_shapes_and_config_checks():
    m = InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), hidden=16, n_classes=3)
    o = m(jnp.zeros((2, 32, 32)))
    assert o["logits"].shape == (3,) and o["rot6d"].shape == (6,) and o["log_axes"].shape == (2,)
    assert float(o["log_axes"][0]) <= 0 <= float(o["log_axes"][1])  # a <= r_eq <= c
    with pytest.raises(ValueError, match="multiple"):
        InversionCNN(jax.random.PRNGKey(0), n=30, widths=(8, 16))
    with pytest.raises(ValueError, match="unknown config key"):
        check_config({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="classes"):
        check_config({"classes": ["Blob"]})
    with pytest.raises(ValueError, match="loss_weights.class"):
        check_config({"train": {"loss_weights": {"class": -1.0}}})
    with pytest.raises(ValueError, match="unknown config key 'train.loss_weights.colour'"):
        check_config({"train": {"loss_weights": {"colour": 1.0}}})
    assert check_config({"train": {"loss_weights": {"class": 2.0}}})["train"]["loss_weights"]["size"] == 1.0


def test_polar_resample_is_exact_for_linear_images():
    n, nr, nphi = 16, 8, 16
    yy, xx = np.mgrid[:n, :n].astype(float)
    c = n / 2 - 0.5
    img = jnp.asarray(np.stack([xx - c, yy - c]))  # bilinear interpolation reproduces linear functions
    out = np.asarray(fitting.polar_resample(img, nr, nphi))
    r = (np.arange(nr) + 0.5) / nr * n / np.sqrt(2)
    phi = np.arange(nphi) / nphi * 2 * np.pi
    inside = (np.abs(r[:, None] * np.cos(phi)) <= c) & (np.abs(r[:, None] * np.sin(phi)) <= c)
    np.testing.assert_allclose(out[0][inside], (r[:, None] * np.cos(phi))[inside], atol=1e-5)
    np.testing.assert_allclose(out[1][inside], (r[:, None] * np.sin(phi))[inside], atol=1e-5)
    assert r[-1] > c + 1 and np.all(out[:, -1, 0] == 0)  # the outermost radius along +x is off the image: 0


def test_polar_cnn_size_class_axes_are_invariant_to_in_plane_rotation():
    m = InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), hidden=16, n_classes=3, polar=(16, 32))
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32))
    o = m(x)
    for k in (1, 2):  # 90 and 180 deg: multiples of 360 / 32, so exactly a circular shift in azimuth
        r = m(jnp.rot90(x, k, axes=(1, 2)))
        for name in ("log_size", "logits", "log_axes"):
            np.testing.assert_allclose(np.asarray(r[name]), np.asarray(o[name]), atol=1e-5, err_msg=name)
    # the orientation head sees the azimuth-resolved features: a turned pattern gives another rotation
    assert float(jnp.max(jnp.abs(m(jnp.rot90(x, 1, axes=(1, 2)))["rot6d"] - o["rot6d"]))) > 1e-4
    # the Cartesian layout has no such symmetry (so the check above can fail)
    mc = InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), hidden=16, n_classes=3)
    assert float(jnp.max(jnp.abs(mc(jnp.rot90(x, 1, axes=(1, 2)))["logits"] - mc(x)["logits"]))) > 1e-4
    with pytest.raises(ValueError, match="polar"):
        InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), polar=(18, 32))
    with pytest.raises(ValueError, match="network.input"):
        check_config({"network": {"input": "spherical"}})
    with pytest.raises(ValueError, match="network.polar"):
        check_config({"network": {"polar": [50, 64]}})
    with pytest.raises(ValueError, match="centred_fraction"):
        check_config({"data": {"centred_fraction": 1.5}})
    from fitting._train import sample_noise

    cf = check_config({"data": {"centred_fraction": 0.5, "center_shift_px": 3}})
    sh = sample_noise(cf, 2000, np.random.default_rng(0))["shift"]
    centred = np.all(sh == 0, axis=1).mean()
    assert 0.45 < centred < 0.58 and np.abs(sh).max() == 3  # half centred (+ 1/49 of the rest), others offset
    sh0 = sample_noise(check_config({"data": {"center_shift_px": 3}}), 2000, np.random.default_rng(0))[
        "shift"
    ]
    assert np.all(sh0 == 0, axis=1).mean() < 0.05
    with pytest.raises(ValueError, match="network.harmonics"):
        check_config({"network": {"harmonics": 8}})
    with pytest.raises(ValueError, match="harmonics"):
        InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), polar=(16, 32), harmonics=(0, 2))
    # the orders are features: more orders, more inputs to the head; none = mean / max pooling only
    sizes = [
        InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), polar=(16, 32), harmonics=h).head.in_size
        for h in ((), (2,), (2, 4, 6, 8))
    ]
    assert sizes[0] < sizes[1] < sizes[2]
    assert check_config({})["network"]["input"] == "polar"


def test_sidecars_without_network_input_load_as_cartesian(tmp_path):
    """A model file from before the polar layout (sidecar without network.input) loads as the Cartesian CNN."""
    from fitting._network import sidecar_config

    cfg = check_config({**TINY, "network": {**TINY["network"], "input": "cartesian"}})
    m = InversionCNN(jax.random.PRNGKey(3), n=32, widths=(8, 16), hidden=32, n_classes=2)
    path = tmp_path / "old.eqx"
    eqx.tree_serialise_leaves(str(path), m)
    legacy = json.loads(json.dumps(cfg))
    del legacy["network"]["input"], legacy["network"]["polar"], legacy["network"]["harmonics"]
    del legacy["train"]["loss_weights"], legacy["train"]["orientation_classes"]
    del (
        legacy["network"]["orient_orders"],
        legacy["network"]["orient_hidden"],
        legacy["network"]["orient_bins"],
    )
    (tmp_path / "old.eqx.json").write_text(json.dumps({"config": legacy, "step": 1}))
    net = fitting.load_network(str(path))
    assert net.model.polar is None and net.meta["config"]["network"]["input"] == "cartesian"
    assert net.meta["config"]["train"]["loss_weights"]["class"] == 0.3  # what it was trained with
    assert net.meta["config"]["train"]["orientation_classes"] == "ellipsoid"
    assert net.meta["config"]["network"]["orient_orders"] == []
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32))
    np.testing.assert_array_equal(np.asarray(net.model(x)["logits"]), np.asarray(m(x)["logits"]))
    assert sidecar_config({"network": {"input": "polar"}})["network"]["input"] == "polar"
    assert fitting.load_network("default").model.polar is not None  # the shipped model: polar layout


def test_data_stream_compiles_every_generator_up_front():
    cfg = check_config(
        {
            **TINY,
            "classes": ["Sphere", "Ellipsoid", "Cube"],
            "data": {**TINY["data"], "size_buckets": [1.5, 2.0, 2.5]},
        }
    )
    s = DataStream(cfg, 5)  # 2 families x 2 buckets; 5 = 3 + 2: two sub-batch sizes
    assert s.compile(workers=2) > 0
    assert sorted(s._fns) == [("Cube", 0), ("Cube", 1), ("ellipsoid", 0), ("ellipsoid", 1)]
    compiled = {k: f._cache_size() for k, f in s._fns.items()}
    assert all(n == 2 for n in compiled.values())  # sizes 3 and 2
    for step in range(4):  # training's batches find every generator compiled
        x, tg = s.batch(step)
        assert x.shape[0] == 5
    assert {k: f._cache_size() for k, f in s._fns.items()} == compiled


def test_train_lowers_loss_checkpoint_roundtrip_resume_and_predict(tmp_path):
    out = str(tmp_path / "m.eqx")
    meta = train(_cfg(30), out, progress=None)
    curve = np.array(meta["loss_curve"])
    assert meta["step"] == 30 and curve.shape[0] == 6
    # columns: step, total, size, class, axes, orientation
    assert curve[-1, 2] < 0.5 * curve[0, 2]  # size term
    assert curve[-1, 1] < curve[0, 1]
    side = json.loads(pathlib.Path(out + ".json").read_text())
    assert side["step"] == 30 and side["seed"] == 0 and "jax" in side["versions"]

    # bit-exact round trip of model and optimiser state
    model, opt_state, _ = load_checkpoint(out)
    out2 = str(tmp_path / "copy.eqx")
    from fitting._train import save_checkpoint

    save_checkpoint(out2, model, opt_state, side)
    for suffix in ("", ".state"):
        assert pathlib.Path(out + suffix).read_bytes() == pathlib.Path(out2 + suffix).read_bytes()
    net = fitting.load_network(out)
    la, lb = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (model, net.model))
    assert len(la) == len(lb)
    for a, b in zip(la, lb, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    # resume continues the step count; a fresh run into an existing file is refused
    with pytest.raises(ValueError, match="resume"):
        train(_cfg(35), out, progress=None)
    meta = train(_cfg(35), out, resume=True, progress=None)
    assert meta["step"] == 35 and len(meta["loss_curve"]) == 7
    assert meta["samples_per_s"] > 0 and "stopped" not in meta
    # a time limit stops after the step that passes it, with a checkpoint that says so
    with pytest.raises(ValueError, match="time_limit"):
        train(_cfg(60), out, resume=True, time_limit=0.0)
    meta = train(_cfg(60), out, resume=True, progress=None, time_limit=1e-9)
    assert meta["step"] == 36 and "time limit" in meta["stopped"]
    assert json.loads(pathlib.Path(out + ".json").read_text())["step"] == 36

    # predict API and CLI (the resumed model)
    net = fitting.load_network(out)
    exp = ds.Experiment(2.0, ds.QGrid(32, 30.0))  # wavelength 2: sizes come back in the length unit
    counts = np.random.default_rng(0).poisson(_sphere_counts(exp, 4.0, 1e6)).astype(float)
    p = net.predict(counts, exp)
    assert p["class"] in ("Sphere", "Ellipsoid") and p["radius_eq"] > 0
    assert abs(p["radius_eq"] - 2.0 * p["size_wavelengths"]) < 1e-9
    assert isinstance(p["shape"], (ds.Sphere, ds.Ellipsoid))

    from diffscat.cli import main
    from diffscat.io import write_cxi

    cxi = str(tmp_path / "d.cxi")
    write_cxi(cxi, np.stack([counts, counts]), exp, length_unit="nm", quantity="photons")
    pred = str(tmp_path / "pred.h5")
    assert main(["predict", "--model", out, "--data", cxi, "-o", pred]) == 0
    with h5py.File(pred, "r") as f:
        assert f["radius_eq"].shape == (2,) and f["rotation"].shape == (2, 3, 3)
        np.testing.assert_allclose(f["radius_eq"][0], p["radius_eq"], rtol=1e-4)
        assert list(f["class_probs"].attrs["classes"]) == ["Sphere", "Ellipsoid"]
    assert not [x for x in os.listdir(tmp_path) if x.startswith(".tmp-")]


def test_radial_spectrum_peaks_at_the_fringe_frequency_and_turns_with_nothing():
    """The size feature: its peak moves in proportion to the sphere radius (Born spheres, an independent
    path), it does not change under an in-plane turn, nor (much) under a beam-centre offset of 2 pixels."""
    exp = ds.Experiment(1.0, ds.QGrid(64, 30.0))
    m = InversionCNN(
        jax.random.PRNGKey(0), n=64, widths=(8, 16), hidden=16, n_classes=2, polar=(48, 64), radial_spectrum=4
    )
    cmap = CanonicalMap.from_experiment(exp, 64)
    peaks = []
    for r in (3.0, 6.0):
        e = _sphere_counts(exp, r, 1e9)
        s = np.asarray(m._radial_spectrum(fitting.polar_resample(cmap(jnp.asarray(e)), 48, 64)))
        peaks.append(int(np.argmax(s)) + 1)  # bin 0 of the feature is frequency 1 (DC left out)
        shifted = np.roll(e, (2, -1), axis=(0, 1))
        mask = np.ones(e.shape, bool)
        mask[:2], mask[:, -1:] = False, False
        s2 = np.asarray(
            m._radial_spectrum(fitting.polar_resample(cmap(jnp.asarray(shifted), jnp.asarray(mask)), 48, 64))
        )
        assert abs(int(np.argmax(s2)) + 1 - peaks[-1]) <= 1
    assert 1.8 < peaks[1] / peaks[0] < 2.2, peaks
    x = jnp.asarray(np.asarray(cmap(jnp.asarray(_sphere_counts(exp, 4.0, 1e6)))))
    o, r = m(x), m(jnp.rot90(x, 1, axes=(1, 2)))
    np.testing.assert_allclose(np.asarray(r["log_size"]), np.asarray(o["log_size"]), atol=1e-5)
    off = InversionCNN(
        jax.random.PRNGKey(0), n=64, widths=(8, 16), hidden=16, n_classes=2, polar=(48, 64)
    ).head.in_size
    assert m.head.in_size == off + 4 * 48 // 2  # the spectrum's bins feed the size / class / axes head
    with pytest.raises(ValueError, match="polar"):
        InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), radial_spectrum=2)
    with pytest.raises(ValueError, match="radial_spectrum"):
        check_config({"network": {"radial_spectrum": -1}})


def test_pool_stream_is_the_fresh_stream_with_cached_simulations(tmp_path):
    """`data.pool`: each (family, bucket) simulated once; batches draw from it with fresh noise, and a pooled
    pattern equals the fresh generator's pattern of the same truth, noise and key. The cache round-trips."""
    from fitting._train import make_batch_fn, sample_noise

    cfg = check_config({**TINY, "data": {**TINY["data"], "pool": 5, "pool_cache": str(tmp_path / "pool")}})
    s = DataStream(cfg, 4)
    s.build_pool()
    files = sorted(os.listdir(tmp_path / "pool"))
    assert len(files) == 1 and files[0].startswith("pool-ellipsoid-0-")  # one family, one bucket
    pool = s._pool["ellipsoid", 0]
    assert pool["expected"].shape == (5, 32, 32)
    np.testing.assert_allclose(pool["expected"].sum((1, 2)), 1.0, rtol=1e-4)
    x, tg, extra = s.batch(0, with_truth=True)
    t, counts, mask = extra[0]
    assert x.shape == (4, 2, 32, 32) and set(np.round(t["r_eq"], 9)) <= set(np.round(pool["r_eq"], 9))
    # the pooled pattern = the fresh path on the same truth, noise and key
    rng, key, plan = s._plan(0)
    idx = rng.integers(0, 5, plan[0][2])
    nz = sample_noise(cfg, plan[0][2], rng)
    t32 = {k: np.asarray(v[idx], np.float32) for k, v in pool.items() if k not in ("expected", "label")}
    xf, cf, _ = make_batch_fn(cfg, "ellipsoid", 0)(t32, nz, jax.random.fold_in(key, 0))
    np.testing.assert_array_equal(np.asarray(cf), np.asarray(counts))
    np.testing.assert_allclose(np.asarray(xf), np.asarray(x), atol=1e-6)
    # another step: other draws and other noise
    x1, _ = s.batch(1)
    assert not np.allclose(np.asarray(x1), np.asarray(x))
    # a second stream loads the cache (the same patterns), a changed config does not reuse it
    s2 = DataStream(cfg, 4)
    s2.build_pool()
    np.testing.assert_array_equal(s2._pool["ellipsoid", 0]["expected"], pool["expected"])
    cfg3 = check_config({**cfg, "data": {**cfg["data"], "max_axis_ratio": 1.2}})
    assert DataStream(cfg3, 4)._pool_key("ellipsoid", 0) != s._pool_key("ellipsoid", 0)
    with pytest.raises(ValueError, match="data.pool"):
        check_config({"data": {"pool": -1}})
    # training on a pool lowers the loss
    meta = train({**cfg, "train": {**cfg["train"], "steps": 20}}, str(tmp_path / "p.eqx"), progress=None)
    curve = np.array(meta["loss_curve"])
    assert curve[-1, 1] < curve[0, 1] and meta["pool_seconds"] >= 0
