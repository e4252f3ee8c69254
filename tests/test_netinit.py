"""The network as a fit start (`network_starts`, `fit_from_network`) and the shipped default model."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds
import fitting
from diffscat.detectors import expected_photons
from fitting._network import InversionCNN, NetworkPredictor
from fitting._train import check_config

CLASSES = ["Sphere", "Ellipsoid", "Cube"]


def _fixed_network(
    radius: float,
    cls: str = "Sphere",
    axes=(-0.1, 0.15),
    rot6d=(1, 0, 0, 0, 1, 0),
    classes=tuple(CLASSES),
    orientation_classes="all",
):
    """A tiny `InversionCNN` whose output does not depend on its input: the last layer's weights are zero and
    its bias says `radius` [wavelengths], class `cls`, log axis ratios `axes`, rotation `rot6d`."""
    classes = list(classes)
    cfg = check_config(
        {
            "classes": classes,
            "network": {"n": 32, "widths": [8, 16], "hidden": 16, "input": "cartesian"},
            "data": {"n_pixels": 32},
            "train": {"orientation_classes": orientation_classes},
        }
    )
    m = InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), hidden=16, n_classes=len(classes))
    k = len(classes)
    b = np.zeros(1 + k + 2 + 6, np.float32)
    b[0] = math.log(radius) - 1.5  # the model adds log(4.5) ~ 1.5
    b[1 + classes.index(cls)] = 5.0
    # softplus^-1 of the wanted |log axes|
    b[1 + k] = math.log(math.expm1(-axes[0]))
    b[2 + k] = math.log(math.expm1(axes[1]))
    b[3 + k :] = rot6d
    last = m.head.layers[-1]
    m = eqx.tree_at(lambda t: (t.head.layers[-1].weight, t.head.layers[-1].bias), m, (0 * last.weight, b))
    return NetworkPredictor(m, {"config": cfg})


def _sphere_counts(exp, radius, photons=1e6, seed=0):
    """Poisson counts of a homogeneous sphere (Born form factor at each pixel's |q|: an independent path)."""
    x = np.linalg.norm(np.asarray(exp.q), axis=-1) * radius
    x = np.where(x < 1e-6, 1e-6, x)
    inten = jnp.asarray((3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2)
    e = np.asarray(expected_photons(inten, exp, 1.0))
    e = e / e[np.asarray(exp.valid)].sum() * photons
    return np.random.default_rng(seed).poisson(e).astype(float)


EXP = ds.Experiment(1.0, ds.QGrid(32, 30.0))


def test_starts_have_the_predicted_classes_sizes_and_twins():
    R = np.asarray(fitting.rotation_from_6d(jnp.array([1.0, 0.3, 0.0, 0.0, 1.0, 0.4])), float)
    net = _fixed_network(3.0, "Ellipsoid", rot6d=(1.0, 0.3, 0.0, 0.0, 1.0, 0.4))
    counts = _sphere_counts(EXP, 3.0)
    # default: the predicted class only
    s = fitting.network_starts(net, counts, EXP)
    # ellipsoids: 2 twins x 4 spins about the long axis at the predicted size, then the 2 twins at 1.04 x
    assert list(s) == ["Ellipsoid"] and len(s["Ellipsoid"]) == 2 * 4 + 2
    c45, s45 = math.cos(math.pi / 4), math.sin(math.pi / 4)
    spin45 = np.array([[c45, -s45, 0.0], [s45, c45, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(np.asarray(s["Ellipsoid"][2].rotation), R @ spin45, atol=1e-5)
    assert len(fitting.network_starts(net, counts, EXP, ellipsoid_spins=1)["Ellipsoid"]) == 4
    s = fitting.network_starts(net, counts, EXP, classes=CLASSES, n_per_class=4, delta=0.002, beta=0.001)
    assert list(s) == CLASSES and [len(v) for v in s.values()] == [4, 10, 4]
    radii = sorted(float(x.radius) for x in s["Sphere"])
    np.testing.assert_allclose(radii, [3.0 * 0.96, 3.0, 3.0 * 1.04, 3.0 * 1.08], rtol=1e-4)
    assert float(s["Sphere"][0].delta) == pytest.approx(0.002) and float(
        s["Sphere"][0].beta
    ) == pytest.approx(0.001)
    # ellipsoids: predicted axes (r e^-0.1, ., r e^0.15) and volume; the predicted rotation and its z-mirror twin
    e0, e1 = s["Ellipsoid"][0], s["Ellipsoid"][1]
    ax = np.asarray(e0.semi_axes, float)
    np.testing.assert_allclose([ax[0], ax[2]], [3.0 * math.exp(-0.1), 3.0 * math.exp(0.15)], rtol=1e-4)
    np.testing.assert_allclose(np.prod(ax) ** (1 / 3), 3.0, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(e0.rotation), R, atol=1e-5)
    Mz = np.diag([1.0, 1.0, -1.0])
    # the z-mirror image M R M of the body, up to the ellipsoid's own symmetries R D (D = diag(+-1), det 1)
    Ds = [np.diag(d) for d in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))]
    assert min(np.abs(np.asarray(e1.rotation) - Mz @ R @ Mz @ D).max() for D in Ds) < 1e-5
    assert np.abs(np.asarray(e1.rotation) - R).max() > 0.1  # a different body orientation
    # polyhedra: the predicted volume; first orientation the network's, others different
    cube = s["Cube"][0]
    np.testing.assert_allclose(float(cube.volume()), 4 / 3 * math.pi * 3.0**3, rtol=1e-4)
    assert np.abs(np.asarray(s["Cube"][1].rotation) - np.asarray(cube.rotation)).max() > 1e-3


def test_polyhedron_starts_are_the_predicted_twin_bodies_when_the_network_orients_them():
    rot6d = (1.0, 0.3, 0.0, 0.0, 1.0, 0.4)
    R = np.asarray(fitting.rotation_from_6d(jnp.array(rot6d)), float)
    counts = _sphere_counts(EXP, 3.0)
    Mz = np.diag([1.0, 1.0, -1.0])
    cube_images = [R, Mz @ R]  # the body and its z-mirror image (r -> -r: the cube itself)
    s = fitting.network_starts(_fixed_network(3.0, "Cube", rot6d=rot6d), counts, EXP, n_per_class=4)
    assert len(s["Cube"]) == 4
    for start in s["Cube"]:  # each start is R or the mirror image, as a body (up to the cube's 48 symmetries)
        rot = np.asarray(start.rotation, float)
        G = fitting.body_symmetries("Cube")
        assert any(np.abs(rot @ g - T).max() < 1e-5 for g in G for T in cube_images)
    assert len({round(float(c.edge), 6) for c in s["Cube"]}) == 2  # two sizes x two bodies
    # a model trained on ellipsoid orientations only: the network's rotation, then random ones
    legacy = _fixed_network(3.0, "Cube", rot6d=rot6d, orientation_classes="ellipsoid")
    s = fitting.network_starts(legacy, counts, EXP, n_per_class=4)
    np.testing.assert_allclose(np.asarray(s["Cube"][0].rotation), R, atol=1e-5)
    rot1 = np.asarray(s["Cube"][1].rotation, float)
    assert all(
        np.abs(rot1 @ g - T).max() > 1e-3 for g in fitting.body_symmetries("Cube") for T in cube_images
    )
    assert legacy.predict(counts, EXP)["oriented_classes"] == ("Ellipsoid",)
    # the starts have the orientation search's template structure (the rigid Decahedron: notched=False), so
    # both can be stacked into one multi-start (a notched start made fit_from_network fail on decahedra)
    from fitting._auto import _drop_hint, _template

    for name in ("Decahedron", "Icosahedron"):
        net = _fixed_network(3.0, name, rot6d=rot6d, classes=("Sphere", "Ellipsoid", name))
        for start in fitting.network_starts(net, counts, EXP)[name]:
            templ = _template(name, 3.0, 0.0, 0.0, rotation=R)  # (the fits drop the size hint themselves)
            assert jax.tree.structure(_drop_hint(start, None)) == jax.tree.structure(_drop_hint(templ, None))


def test_rotations_near_turns_by_the_given_angles():
    from fitting._netinit import rotations_near

    R = np.asarray(fitting.rotation_from_6d(jnp.array([1.0, 0.3, 0.0, 0.0, 1.0, 0.4])), float)
    near = rotations_near([R, -R @ np.diag([1.0, 1.0, -1.0])], (10.0, 25.0))
    assert near.shape == (2 * 17, 3, 3)
    np.testing.assert_allclose(
        np.einsum("kij,kil->kjl", near, near), np.broadcast_to(np.eye(3), near.shape), atol=1e-12
    )
    ang = np.degrees(np.arccos(np.clip((np.einsum("kij,ij->k", near[:17], R) - 1) / 2, -1, 1)))
    np.testing.assert_allclose(ang, [0.0] + [10.0] * 8 + [25.0] * 8, atol=1e-3)  # R: float32


def _msft_sphere_counts(radius, photons=1e5, seed=0):
    truth = ds.Sphere(radius, delta=0.005, beta=0.002)
    e = np.asarray(expected_photons(ds.simulate(truth, EXP), EXP, 1.0))
    mask = np.asarray(EXP.valid) & (np.asarray(EXP.theta) > np.radians(2.0))
    e = np.where(mask, e, 0.0)
    return np.random.default_rng(seed).poisson(e / e.sum() * photons).astype(float), mask


def test_fit_from_network_converges_on_a_sphere():
    """The network says 4.0 wavelengths; the truth is 4.2; the refinement from its starts finds the truth."""
    net = _fixed_network(4.0, "Sphere")
    counts, mask = _msft_sphere_counts(4.2)
    res = fitting.fit_from_network(
        counts, EXP, net, mask, delta=0.005, beta=0.002, max_steps=30, n_per_class=2, uncertainties=False
    )
    assert isinstance(res.model, ds.Sphere)
    assert abs(float(res.model.radius) / 4.2 - 1) < 0.01
    assert [r[0] for r in res.ranking] == ["Sphere"] and res.ranking[0][2] == 1
    assert res.network_prediction["class"] == "Sphere"
    assert res.network_prediction["radius_eq"] == pytest.approx(4.0, rel=1e-4)


@pytest.mark.slow
def test_fit_from_network_ranks_candidates_by_bic():
    net = _fixed_network(4.0, "Ellipsoid")
    counts, mask = _msft_sphere_counts(4.2, seed=1)
    res = fitting.fit_from_network(
        counts,
        EXP,
        net,
        mask,
        candidates=["Ellipsoid", "Sphere"],
        delta=0.005,
        beta=0.002,
        max_steps=40,
        uncertainties=False,
    )
    assert [r[0] for r in res.ranking] == ["Sphere", "Ellipsoid"]
    assert isinstance(res.model, ds.Sphere) and abs(float(res.model.radius) / 4.2 - 1) < 0.01
    assert res.ranking[1][1] <= res.ranking[0][1] + 1.0  # the ellipsoid fits about as well ...
    assert res.ranking[1][3] > res.ranking[0][3]  # ... but pays for its extra parameters


def test_network_search_and_refinement_use_tight_grids():
    """The coarse multi-start's grid: SEARCH_MARGIN bounding radii of its largest start at SEARCH_COARSENING x
    the pitch; the refinement after it: `refine_grid` of the search's optimum, not `fit`'s 1.3-radii default."""
    from fitting._fit import GRID_MARGIN, _fit_grid
    from fitting._multires import refine_grid
    from fitting._netinit import SEARCH_COARSENING, SEARCH_MARGIN

    net = _fixed_network(4.0, "Ellipsoid")
    counts, mask = _msft_sphere_counts(4.2, seed=2)
    pitch = ds.default_pitch(*EXP.sampling_hint)
    kw = dict(delta=0.005, beta=0.002, max_steps=1, search_steps=1, uncertainties=False, pitch=pitch)
    kw.update(ellipsoid_spins=1, n_per_class=2, pin_size=False, ellipsoid_refine=1)
    res = fitting.fit_from_network(counts, EXP, net, mask, candidates=["Ellipsoid"], **kw)
    search, refine = res.stages
    starts = fitting.network_starts(
        net,
        counts,
        EXP,
        mask,
        classes=["Ellipsoid"],
        delta=0.005,
        beta=0.002,
        n_per_class=2,
        ellipsoid_spins=1,
    )
    starts = starts["Ellipsoid"][: search.n_starts]
    c = SEARCH_COARSENING * pitch
    assert search.grid == _fit_grid(starts, EXP, c, SEARCH_MARGIN)
    assert search.grid.shape[0] < _fit_grid(starts, EXP, c, GRID_MARGIN).shape[0]
    assert refine.grid == refine_grid([search.model], EXP, pitch)
    with pytest.raises(ValueError, match="search_margin"):
        fitting.fit_from_network(counts, EXP, net, mask, candidates=["Ellipsoid"], search_margin=1.0, **kw)


def test_ellipsoid_starts_take_the_pinned_size_and_the_best_optima_go_on():
    """The network says 4.8 wavelengths for a 4.2-wavelength body: the sphere fit first (`size_pin`) moves the
    size; the ellipsoid's starts are the spun twins and 8 random orientations
    at the pinned volume-equivalent radius; the search's best `ellipsoid_refine` (default 3) distinct optima are refined
    together (`fitting.fit_ellipsoid_auto`'s multi-resolution path); with the Sphere among the candidates its own
    fit is the pin; `pin_size=False, ellipsoid_refine=1` is the former path (no pin, the search's best)."""
    from fitting._netinit import ELLIPSOID_REFINE, _pinned_ellipsoid_starts

    net = _fixed_network(4.8, "Ellipsoid")
    counts, mask = _msft_sphere_counts(4.2, seed=2)
    kw = dict(delta=0.005, beta=0.002, max_steps=6, search_steps=2, uncertainties=False)
    res = fitting.fit_from_network(counts, EXP, net, mask, candidates=["Ellipsoid"], **kw)
    pin = res.size_pin
    r = float(pin.model.radius)
    assert abs(r / 4.2 - 1) < abs(4.8 / 4.2 - 1) / 2
    search = res.stages[0]
    assert search.n_starts == 16  # 2 twins x 4 spins + 8 random orientations
    # the best ELLIPSOID_REFINE (3) by default (with a crop stage: its own result)
    assert ELLIPSOID_REFINE == 3 and (res.stages[1].n_starts == 3 or len(res.stages) == 2)
    p = net.predict(counts, EXP, mask)
    starts = _pinned_ellipsoid_starts(pin, p, 0.005, 0.002, 0, 4)
    assert len(starts) == 16
    for m in starts:
        assert float(np.prod(np.asarray(m.semi_axes))) ** (1 / 3) == pytest.approx(r, rel=1e-4)
    ell = fitting.fit_from_network(
        counts, EXP, net, mask, candidates=["Ellipsoid"], pin_size=False, ellipsoid_refine=1, **kw
    )
    assert ell.size_pin is None and ell.stages[1].n_starts == 1
    # fit_auto(ellipsoid_start="network") is that path; a bad value fails before any fit
    fast = fitting.fit_auto(counts, EXP, ("Ellipsoid",), mask, init=net, ellipsoid_start="network", **kw)
    assert fast.size_pin is None and fast.stages[1].n_starts == 1
    with pytest.raises(ValueError, match="ellipsoid_start"):
        fitting.fit_auto(counts, EXP, ("Ellipsoid",), mask, init=net, ellipsoid_start="fast", **kw)


@pytest.mark.slow
def test_network_refinement_takes_the_callers_grid_margin():
    """A caller's grid_margin is the refinement's (and is not passed twice to the search)."""
    from fitting._fit import _fit_grid

    net = _fixed_network(4.0, "Ellipsoid")
    counts, mask = _msft_sphere_counts(4.2, seed=2)
    pitch = ds.default_pitch(*EXP.sampling_hint)
    kw = dict(delta=0.005, beta=0.002, max_steps=1, search_steps=1, uncertainties=False, pitch=pitch)
    res = fitting.fit_from_network(
        counts,
        EXP,
        net,
        mask,
        candidates=["Ellipsoid"],
        grid_margin=1.3,
        ellipsoid_spins=1,
        n_per_class=2,
        ellipsoid_refine=1,
        **kw,
    )
    assert res.stages[1].grid == _fit_grid([res.stages[0].model], EXP, pitch, 1.3)


def test_bad_arguments_give_clear_errors(tmp_path):
    net = _fixed_network(3.0)
    counts = _sphere_counts(EXP, 3.0)
    with pytest.raises(TypeError, match="network"):
        fitting.network_starts(42, counts, EXP)
    with pytest.raises(FileNotFoundError, match="no such model"):
        fitting.network_starts(str(tmp_path / "none.eqx"), counts, EXP)
    with pytest.raises(ValueError, match="classes"):
        fitting.network_starts(net, counts, EXP, classes=["Blob"])
    with pytest.raises(ValueError, match="n_per_class"):
        fitting.network_starts(net, counts, EXP, n_per_class=0)
    with pytest.raises(TypeError, match="experiment"):
        fitting.network_starts(net, counts, "exp")
    with pytest.raises(ValueError, match="data"):
        fitting.network_starts(net, counts[:5], EXP)
    with pytest.raises(ValueError, match="criterion"):
        fitting.fit_from_network(counts, EXP, net, delta=0.005, beta=0.0, criterion="xic")
    with pytest.raises(ValueError, match="delta and beta"):
        fitting.fit_from_network(counts, EXP, net, delta=0.0, beta=0.0)
    with pytest.raises(ValueError, match="candidates|classes"):
        fitting.fit_from_network(counts, EXP, net, delta=0.005, beta=0.0, candidates=[])
    with pytest.raises(ValueError, match="data"):
        fitting.fit_from_network(counts[:5], EXP, net, delta=0.005, beta=0.0)


def test_shipped_model_loads_and_predicts():
    net = fitting.load_network("default")
    assert fitting.load_network("default") is net  # loaded once
    assert set(net.classes) == set(fitting.NETWORK_CLASSES)
    side = net.meta
    assert side["step"] >= 100 and side["loss_curve"] and "jax" in side["versions"]
    exp = ds.Experiment(1.0, ds.QGrid(64, 30.0))
    p = net.predict(_sphere_counts(exp, 5.0), exp)
    assert np.isfinite(p["radius_eq"]) and 1.0 < p["radius_eq"] < 20.0
    assert np.all(np.isfinite(p["rotation"])) and abs(sum(p["class_probs"].values()) - 1) < 1e-5
    # the harmonic head (session 20): 24 relative coefficients, a body of the predicted volume
    assert fitting.has_harmonics(net) and p["sh_relative"].shape == (24,) and p["coefficients"].shape == (25,)
    r = (3 * float(ds.SphericalHarmonics(p["coefficients"]).volume()) / (4 * math.pi)) ** (1 / 3)
    assert r == pytest.approx(p["radius_eq"], rel=1e-4)


def test_mixed_family_batches_span_the_classes():
    """`data.mix_families`: one batch holds every family (the class head then sees them all at once); the
    default keeps one family per batch. (The simulation is stubbed: this checks the batch composition.)"""
    from fitting._train import DataStream

    cfg = check_config(
        {
            "classes": ["Sphere", "Cube", "Octahedron"],
            "data": {"size_buckets": [1.0, 1.5, 2.0], "mix_families": True},
        }
    )

    def stub(fam, bucket):
        return lambda t, nz, key: (jnp.zeros((len(t["delta"]), 2, 4, 4)), None, None)

    mixed = DataStream(cfg, 12)
    mixed.fn = stub
    for step in range(3):
        _, tg = mixed.batch(step)
        assert len(tg["label"]) == 12 and sorted(set(tg["label"].tolist())) == [0, 1, 2]
        r = np.exp(tg["log_size"])
        assert np.sum(r < 1.5) == 6 and np.sum(r >= 1.5) == 6  # both size buckets, evenly
    one = DataStream(check_config({**cfg, "data": {**cfg["data"], "mix_families": False}}), 12)
    one.fn = stub
    assert all(len(set(one.batch(k)[1]["label"].tolist())) == 1 for k in range(3))


def test_fit_init_network_replaces_the_starts():
    """`fitting.fit(data, exp, model, init=net)`: the network's starts for model's class (size from the
    network, not from `model`), model's delta / beta; an unknown class is refused naming `init`."""
    net = _fixed_network(2.9, "Sphere")
    counts = _sphere_counts(EXP, 3.0)
    far = ds.Sphere(6.0, 0.001, 0.002)  # far from the truth: only its class and optical constants are used
    res = fitting.fit(
        counts, EXP, far, free=("radius",), init=net, max_steps=30, uncertainties=False, pitch=0.4
    )
    assert res.n_starts == 4
    assert float(res.model.delta) == pytest.approx(0.001) and float(res.model.beta) == pytest.approx(0.002)
    assert abs(float(res.model.radius) - 3.0) < 0.1
    with pytest.raises(ValueError, match="init"):
        fitting.fit(counts, EXP, ds.SphericalHarmonics([10.0]), init=net, max_steps=1)
    with pytest.raises(TypeError, match="network"):
        fitting.fit(counts, EXP, far, init=3.0, max_steps=1)


def test_fit_auto_init_network_skips_the_searches(monkeypatch):
    """`fit_auto(..., init=net)`: the network's size replaces the no-guess size estimate (the sphere fit from
    it is the no-guess path's `fit_sphere_auto`, started at the network's radius)."""
    import fitting._init as init_mod

    def no_search(*a, **k):
        raise AssertionError("the no-guess size estimate ran although init= was given")

    monkeypatch.setattr(init_mod, "estimate_radius", no_search)
    net = _fixed_network(3.1, "Sphere")
    counts = _sphere_counts(EXP, 3.0)
    res = fitting.fit_auto(
        counts,
        EXP,
        ["Sphere"],
        delta=0.001,
        beta=0.001,
        init=net,
        max_steps=30,
        uncertainties=False,
        pitch=0.4,
    )
    assert type(res.model).__name__ == "Sphere" and [r[0] for r in res.ranking] == ["Sphere"]
    assert abs(float(res.model.radius) - 3.0) < 0.1
    with pytest.raises(TypeError, match="network"):
        fitting.fit_auto(counts, EXP, ["Sphere"], delta=0.001, beta=0.001, init=1.0)


def test_network_prune_rule():
    """`_network_prune`: polyhedra below `network_min_prob` are dropped, never the most probable one."""
    import fitting._auto as auto_mod

    net = _fixed_network(3.0, "Cube", classes=("Sphere", "Cube", "Octahedron", "Icosahedron"))
    counts = _sphere_counts(EXP, 3.0)
    _, drop = auto_mod._network_prune(net, ["Cube", "Octahedron", "Icosahedron"], counts, EXP, None, 0.05)
    assert sorted(n for n, _ in drop) == ["Icosahedron", "Octahedron"] and all(0 < p < 0.05 for _, p in drop)
    _, kept = auto_mod._network_prune(net, ["Cube", "Octahedron"], counts, EXP, None, 0.001)
    assert kept == []  # a threshold below every probability keeps them all
    _, drop = auto_mod._network_prune(net, ["Octahedron", "Icosahedron"], counts, EXP, None, 0.5)
    assert len(drop) == 1  # both are < 0.5: one of the two (the most probable) stays
    _, none = auto_mod._network_prune(net, ["Cube", "Octahedron"], counts, EXP, None, None)
    assert none == []
    # scope "all": the sphere (and any class the network knows) may be ruled out too; "polyhedra" keeps it
    cands = ["Sphere", "Cube", "Octahedron"]
    _, drop = auto_mod._network_prune(net, cands, counts, EXP, None, 0.05, "all")
    assert sorted(n for n, _ in drop) == ["Octahedron", "Sphere"]
    _, drop = auto_mod._network_prune(net, cands, counts, EXP, None, 0.05, "polyhedra")
    assert [n for n, _ in drop] == ["Octahedron"]
    # a class the network does not know (Superellipsoid) is never ruled out
    _, drop = auto_mod._network_prune(net, ["Superellipsoid", "Cube"], counts, EXP, None, 0.05, "all")
    assert drop == []


def test_fit_auto_network_prune_all_fits_only_the_kept_classes(monkeypatch):
    """`fit_auto(network_prune="all")`: the classes the network rules out (the sphere here) never reach the
    fits; a bad `network_prune` is a ValueError naming it."""
    import fitting._auto as auto_mod

    net = _fixed_network(3.0, "Cube", classes=("Sphere", "Cube", "Octahedron", "Icosahedron"))
    counts = _sphere_counts(EXP, 3.0)
    seen = []

    class Reached(Exception):
        pass

    def spy(results, cands, *a, **k):
        seen.append(list(cands))
        raise Reached

    monkeypatch.setattr(auto_mod, "_network_stages", spy)
    kw = dict(delta=0.001, beta=0.001, init=net, network_min_prob=0.05)
    for scope, expect in (("all", ["Cube"]), ("polyhedra", ["Sphere", "Cube"])):
        with pytest.raises(Reached):
            fitting.fit_auto(counts, EXP, ["Sphere", "Cube", "Octahedron"], network_prune=scope, **kw)
        assert seen.pop() == expect
    with pytest.raises(ValueError, match="network_prune"):
        fitting.fit_auto(counts, EXP, ["Sphere", "Cube"], network_prune="everything", **kw)

    # a network with a harmonic head: a ruled-out SphericalHarmonics runs no harmonic stage (the route is
    # decided after the pruning), a kept one does
    class Harmonics(Exception):
        pass

    def no_stages(results, cands, *a, **k):
        seen.append(list(cands))
        return None, None, 3.0

    def harmonics(*a, **k):
        raise Harmonics

    def search(*a, **k):
        raise Reached

    def prune(init, cands, data, experiment, mask, min_prob, scope="polyhedra"):  # as the rule would for
        drop = [("Sphere", 0.01), ("SphericalHarmonics", 0.02)] if scope == "all" else []  # such a network
        return init, drop

    monkeypatch.setattr(auto_mod, "_network_prune", prune)
    monkeypatch.setattr(auto_mod, "_network_stages", no_stages)
    monkeypatch.setattr(auto_mod, "_sh_from_network", lambda sh_start, init: True)
    monkeypatch.setattr(auto_mod, "_harmonics_from_network", harmonics)
    monkeypatch.setattr(auto_mod, "_class_search", search)
    cands = ["Sphere", "Cube", "SphericalHarmonics"]
    with pytest.raises(Reached):  # straight to the cube's search
        fitting.fit_auto(counts, EXP, cands, network_prune="all", **kw)
    assert seen.pop() == ["Cube"]
    with pytest.raises(Harmonics):
        fitting.fit_auto(counts, EXP, cands, network_prune="polyhedra", **kw)


def test_nested_completion_fits_the_ruled_out_nested_classes(monkeypatch):
    """`_complete_nested`: a misfit best nested class (noise z > escape_z) brings back the richer nested classes
    the network ruled out; the simpler ones are always fitted from the best's model; polyhedra and classes
    already fitted are left alone."""
    import fitting._auto as auto_mod

    class R:  # a fit result stand-in: its model and a criterion value
        def __init__(self, name, crit):
            self.model, self.crit = name + "-model", crit

    def choose(results, n_used, criterion):
        ranking = sorted(((n, 0.0, 0, r.crit) for n, r in results.items()), key=lambda t: t[3])
        best = results[ranking[0][0]]
        best.ranking = ranking
        return best

    z = {"value": 3.0}
    monkeypatch.setattr(auto_mod, "choose_class", choose)
    monkeypatch.setattr(auto_mod, "noise_consistency", lambda r: (z["value"], 0.0, 1.0))
    calls = []

    def richer(name):
        calls.append(("richer", name))
        return R(name, {"Ellipsoid": 90.0, "SphericalHarmonics": 50.0}[name])

    def simpler(name, model):
        calls.append(("simpler", name, model))
        return R(name, 200.0)

    pruned = {"Ellipsoid": 0.01, "SphericalHarmonics": 0.02, "Cube": 0.01}
    results = {"Sphere": R("Sphere", 100.0)}
    added = auto_mod._complete_nested(results, pruned, 4096, "bic", 2.0, richer, simpler)
    # the richest by its own route, the ellipsoid between by a local fit from it
    assert calls == [("richer", "SphericalHarmonics"), ("simpler", "Ellipsoid", "SphericalHarmonics-model")]
    assert [a[0] for a in added] == ["SphericalHarmonics", "Ellipsoid"] and "misfit" in added[0][1]
    assert set(results) == {"Sphere", "Ellipsoid", "SphericalHarmonics"}  # never the pruned cube

    calls.clear()
    z["value"] = 1.0  # consistent with the noise: the network's choice stands
    results = {"Sphere": R("Sphere", 100.0)}
    assert auto_mod._complete_nested(results, pruned, 4096, "bic", 2.0, richer, simpler) == []
    assert calls == [] and set(results) == {"Sphere"}
    assert auto_mod._complete_nested(results, pruned, 4096, "bic", None, richer, simpler) == []

    # a harmonic best: its simpler nested classes always, from its model, simplest first
    results = {"SphericalHarmonics": R("SphericalHarmonics", 10.0)}
    pruned = {"Sphere": 0.01, "Ellipsoid": 0.03}
    added = auto_mod._complete_nested(results, pruned, 4096, "bic", 2.0, richer, simpler)
    assert calls == [
        ("simpler", "Sphere", "SphericalHarmonics-model"),
        ("simpler", "Ellipsoid", "SphericalHarmonics-model"),
    ]
    assert added == [
        ("Sphere", "nested in SphericalHarmonics"),
        ("Ellipsoid", "nested in SphericalHarmonics"),
    ]

    calls.clear()  # a polyhedron best: nothing nested to complete
    results = {"Cube": R("Cube", 1.0), "SphericalHarmonics": R("SphericalHarmonics", 10.0)}
    assert auto_mod._complete_nested(results, pruned, 4096, "bic", 2.0, richer, simpler) == []
    assert calls == []


def test_ellipsoid_from_shape_recovers_a_rotated_ellipsoid():
    """`ellipsoid_from_shape`: the moments of a rotated ellipsoid (and of its harmonic projection) give back its
    semi-axes (volume kept) and its axes' directions; too coarse a grid is a ValueError."""
    c, s_ = math.cos(0.6), math.sin(0.6)
    R = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, math.cos(0.9), -math.sin(0.9)], [0.0, math.sin(0.9), math.cos(0.9)]]
    )
    truth = ds.Ellipsoid([3.0, 4.0, 5.5], 0.01, 0.002, rotation=R)
    for shape in (truth, fitting.harmonics_from_ellipsoid(truth, 4)):
        e = fitting.ellipsoid_from_shape(shape)
        np.testing.assert_allclose(np.asarray(e.semi_axes), [3.0, 4.0, 5.5], rtol=0.01)
        # eigenvectors ascending with the axes: each body axis along the truth's, up to sign
        np.testing.assert_allclose(np.abs(np.asarray(e.rotation).T @ R), np.eye(3), atol=0.01)
        assert np.isclose(float(e.volume()), float(shape.volume()), rtol=1e-4)
        assert float(e.delta) == pytest.approx(0.01) and float(e.beta) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="n must be"):
        fitting.ellipsoid_from_shape(truth, n=4)


@pytest.mark.slow  # ~1 min on 2 cores (the network-started ellipsoid's robust route, then the nested sphere)
def test_fit_auto_nested_completion_brings_back_a_pruned_sphere():
    """End to end: a network sure of "Ellipsoid" rules the sphere out (p < 0.05) on a Born sphere pattern; the
    nested completion fits the sphere after all (one local fit from the ellipsoid) and BIC chooses it; with
    `network_nested=False` the pruning is final and the ellipsoid is returned."""
    net = _fixed_network(3.0, "Ellipsoid", classes=("Sphere", "Ellipsoid"))
    counts = _sphere_counts(EXP, 3.0, photons=1e6)
    kw = dict(delta=0.001, beta=0.001, init=net, network_min_prob=0.05, network_prune="all", max_steps=40)
    res = fitting.fit_auto(counts, EXP, ["Sphere", "Ellipsoid"], **kw)
    assert [a[0] for a in res.network_added] == ["Sphere"] and res.network_pruned == []
    assert isinstance(res.model, ds.Sphere) and abs(float(res.model.radius) - 3.0) < 0.05
    assert [r[0] for r in res.ranking] == ["Sphere", "Ellipsoid"] and res.network_added_s > 0
    off = fitting.fit_auto(counts, EXP, ["Sphere", "Ellipsoid"], network_nested=False, **kw)
    assert isinstance(off.model, ds.Ellipsoid) and off.network_added == []
    assert [n for n, _ in off.network_pruned] == ["Sphere"]
    with pytest.raises(ValueError, match="network_escape_z"):
        fitting.fit_auto(counts, EXP, ["Sphere"], network_escape_z=float("nan"), **kw)


def test_nested_local_fits_recover_the_simpler_class():
    """`_fit_nested_below` on a sphere pattern (Born counts, an independent path): from a deformed harmonic
    body of another size, the local sphere fit ends at the true radius, the local ellipsoid fit at three
    nearly equal axes."""
    import fitting._auto as auto_mod

    counts = _sphere_counts(EXP, 3.0, photons=1e6)
    body = fitting.harmonics_from_ellipsoid(ds.Ellipsoid([3.3, 3.1, 2.9], 0.001, 0.001), 2)
    sph = auto_mod._fit_nested_below("Sphere", body, counts, EXP, None, (), {})
    assert abs(float(sph.model.radius) - 3.0) < 0.03
    ell = auto_mod._fit_nested_below("Ellipsoid", body, counts, EXP, None, (), {"max_steps": 60})
    axes = np.asarray(ell.model.semi_axes)
    along_beam = np.argmax(np.abs(np.asarray(ell.model.rotation)[2]))  # the body axis nearest to z
    in_plane = np.delete(axes, along_beam)
    assert np.all(np.abs(in_plane - 3.0) < 0.03), axes  # started at 3.3 and 3.1
    # the extent along the beam shows only through the Ewald sphere's curvature (30 deg): started at 2.9
    assert abs(axes[along_beam] - 3.0) < 0.15, axes
    with pytest.raises(ValueError, match="only Sphere and Ellipsoid"):
        auto_mod._fit_nested_below("Cube", body, counts, EXP, None, (), {})


@pytest.mark.slow  # 46 s on 2 cores (fits of three classes); the pruning rule itself: test_network_prune_rule
def test_fit_auto_network_min_prob_prunes_unlikely_polyhedra(monkeypatch):
    """`fit_auto(init=net, network_min_prob=p)`: polyhedra the network gives < p are neither searched nor fitted."""
    import fitting._auto as auto_mod
    import fitting._netinit as netinit_mod

    classes = ("Sphere", "Cube", "Octahedron", "Icosahedron")
    net = _fixed_network(3.0, "Cube", classes=classes)  # p(Cube) = e^5 / (e^5 + 3) ~ 0.98, others ~ 0.007
    searched, fitted, rotations = [], [], []
    real_search, real_fit = netinit_mod.orientation_search, netinit_mod.fit_from_network

    def spy_search(name, *a, **k):
        searched.append(name)
        rotations.append(k.get("rotations"))
        return real_search(name, *a, **k)

    def spy_fit(*a, candidates, **k):
        fitted.extend(candidates)
        return real_fit(*a, candidates=candidates, **k)

    monkeypatch.setattr(netinit_mod, "orientation_search", spy_search)
    monkeypatch.setattr(netinit_mod, "fit_from_network", spy_fit)
    monkeypatch.setattr(auto_mod, "orientation_search", spy_search)
    counts = _sphere_counts(EXP, 3.0)  # the data do not matter here: what is fitted does
    kw = dict(delta=0.001, beta=0.001, init=net, max_steps=5, uncertainties=False, pitch=0.5)
    kw |= dict(n_orientations=4, n_refine=1)
    res = fitting.fit_auto(counts, EXP, ["Cube", "Octahedron", "Icosahedron"], network_min_prob=0.05, **kw)
    assert fitted == ["Cube"] and set(searched) == {"Cube"}
    assert rotations == [None]  # n_orientations given: the random search
    assert [r[0] for r in res.ranking] == ["Cube"]
    assert sorted(n for n, _ in res.network_pruned) == ["Icosahedron", "Octahedron"]
    assert all(0 < p < 0.05 for _, p in res.network_pruned)
    # a threshold below every probability keeps them all; the most probable is never pruned
    _, kept = auto_mod._network_prune(net, ["Cube", "Octahedron"], counts, EXP, None, 0.001)
    assert kept == []
    _, drop = auto_mod._network_prune(net, ["Octahedron", "Icosahedron"], counts, EXP, None, 0.5)
    assert len(drop) == 1  # both are < 0.5: one of the two (the most probable) stays
    # class_network without init: the no-guess searches run on the kept class only
    searched.clear()
    res = fitting.fit_auto(
        counts,
        EXP,
        ["Cube", "Octahedron", "Icosahedron"],
        delta=0.001,
        beta=0.001,
        class_network=net,
        network_min_prob=0.05,
        max_steps=5,
        uncertainties=False,
        pitch=0.5,
        n_orientations=4,
        n_refine=1,
    )
    assert set(searched) == {"Cube"} and [r[0] for r in res.ranking] == ["Cube"]
    assert sorted(n for n, _ in res.network_pruned) == ["Icosahedron", "Octahedron"]
    # the network orients cubes: by default the search runs near its twin bodies only (2 bodies x 17 turns)
    rotations.clear()
    kw.pop("n_orientations")
    fitting.fit_from_network(
        counts, EXP, net, candidates=["Cube"], **{k: v for k, v in kw.items() if k != "init"}
    )
    assert len(rotations) == 1 and rotations[0].shape == (34, 3, 3)
    with pytest.raises(ValueError, match="network_min_prob needs a network"):
        fitting.fit_auto(counts, EXP, ["Cube"], delta=0.001, beta=0.001, network_min_prob=0.1)
    with pytest.raises(ValueError, match="network_min_prob"):
        fitting.fit_auto(counts, EXP, ["Cube"], delta=0.001, beta=0.001, init=net, network_min_prob=1.5)


@pytest.mark.slow
def test_fit_auto_network_frees_delta_in_its_multistart(monkeypatch):
    """`fit_auto(init=net, fit_optics=("delta",))`: the network-started ellipsoid fits (the coarse multi-start
    and the refinement) have delta free from the start, so no extra refinement follows; an ellipsoid made by
    the independent reference path with delta = 0.02, started from an assumed 0.01, comes back with its
    delta and shape."""
    from fitting import _fit

    frees = []
    real_fit = _fit.fit  # fit_from_network imports it at call time

    def spy(*a, free=None, **k):
        frees.append(tuple(free))
        return real_fit(*a, free=free, **k)

    monkeypatch.setattr(_fit, "fit", spy)
    truth = ds.Ellipsoid([3.4, 4.0, 4.7], delta=0.02, beta=0.002)
    inten = np.asarray(fitting.simulate_reference(truth, EXP))
    e = np.asarray(expected_photons(jnp.asarray(inten), EXP, 1.0))
    counts = np.random.default_rng(3).poisson(e / e[np.asarray(EXP.valid)].sum() * 1e6).astype(float)
    net = _fixed_network(
        4.0, "Ellipsoid", axes=(-0.15, 0.15)
    )  # truth: log(a / r_eq), log(c / r_eq) = -0.16, 0.16
    kw = dict(delta=0.01, beta=0.002, init=net, max_steps=60, uncertainties=False)
    res = fitting.fit_auto(counts, EXP, ("Ellipsoid",), fit_optics=("delta",), **kw)
    assert frees and all("delta" in f for f in frees)
    assert "delta" in res.free and len(res.stages) == 2  # multi-start + refinement, no extra stage
    assert float(np.asarray(res.model.delta)) == pytest.approx(0.02, rel=0.1)
    assert fitting.iou(truth, res.model) > 0.95
    with pytest.raises(ValueError, match="fit_optics"):
        fitting.fit_from_network(counts, EXP, net, delta=0.01, beta=0.002, fit_optics=("radius",))
