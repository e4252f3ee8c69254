"""The network's spherical-harmonic head (session 20): twin signs, loss, training bodies, starts, fit_auto."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_netinit import _fixed_network, _sphere_counts

import diffscat as ds
import fitting
from diffscat.shapes._harmonics import real_sph_harm
from fitting._evalset import _x64
from fitting._network import InversionCNN, NetworkPredictor, network_loss, sh_twin_signs
from fitting._train import DataStream, check_config, sample_truths, targets_of

EXP = ds.Experiment(1.0, ds.QGrid(32, 30.0))


def _x64_Y(lmax, u):
    with _x64():
        return np.asarray(real_sph_harm(lmax, jnp.asarray(u, jnp.float64)), np.float64)


def test_twin_signs_are_the_point_inversion_and_the_beam_mirror():
    """Each sign vector turns R(u) = sum c_lm Y_lm(u) into R(T u) for its lab operation T (identity, -1,
    diag(1, 1, -1), diag(-1, -1, 1)), checked on random directions, independently of how the signs are made."""
    L = 4
    rng = np.random.default_rng(3)
    u = rng.normal(size=(50, 3))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    c = rng.normal(size=(L + 1) ** 2)
    ops = [np.eye(3), -np.eye(3), np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    Y = _x64_Y(L, u)
    for s, T in zip(sh_twin_signs(L), ops, strict=True):
        twin = np.concatenate([[c[0]], s * c[1:]])
        np.testing.assert_allclose(Y @ twin, _x64_Y(L, u @ T.T) @ c, atol=1e-10)
    assert sh_twin_signs(L).shape == (4, 24)


def _target(sh, has=1.0):
    return {
        "log_size": jnp.float32(1.0),
        "label": jnp.int32(0),
        "log_axes": jnp.zeros(2),
        "rotation": jnp.eye(3),
        "has_orientation": jnp.float32(0.0),
        "has_axes": jnp.float32(0.0),
        "sh": jnp.asarray(sh, jnp.float32),
        "has_sh": jnp.float32(has),
    }


def test_harmonic_loss_is_zero_at_every_twin_and_only_for_harmonic_bodies():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.05, 8).astype(np.float32)  # lmax 2
    out = {
        "log_size": jnp.float32(1.0),
        "logits": jnp.array([5.0, 0.0]),
        "log_axes": jnp.zeros(2),
        "rot6d": jnp.array([1.0, 0, 0, 0, 1, 0]),
    }
    for s in sh_twin_signs(2):
        _, t = network_loss(dict(out, sh=jnp.asarray(s * truth)), _target(truth))
        assert float(t["harmonics"]) < 1e-12
    wrong = truth + 0.02
    _, t = network_loss(dict(out, sh=jnp.asarray(wrong)), _target(truth))
    expected = min(float(np.sum((s * wrong - truth) ** 2)) for s in sh_twin_signs(2))
    assert float(t["harmonics"]) == pytest.approx(expected, rel=1e-5) and expected > 1e-3
    _, t = network_loss(dict(out, sh=jnp.asarray(wrong)), _target(truth, has=0.0))
    assert float(t["harmonics"]) == 0.0
    # a model without the head: no harmonic term at all
    _, t = network_loss(dict(out, sh=jnp.zeros(0)), _target(truth))
    assert "harmonics" not in t
    with pytest.raises(ValueError, match="coefficients"):
        network_loss(dict(out, sh=jnp.zeros(3)), _target(truth))


def test_training_bodies_have_the_drawn_size_and_a_bounded_deformation():
    cfg = check_config({"classes": ["Sphere", "SphericalHarmonics"], "network": {"sh_lmax": 4}})
    t = sample_truths(cfg, "SphericalHarmonics", 1, 64, np.random.default_rng(1))
    c = t["coefficients"]
    assert c.shape == (64, 25) and np.all(c[:, 1:4] == 0)  # l = 1 (a shift) kept 0
    vol = np.array([float(ds.SphericalHarmonics(ci).volume()) for ci in c[:8]])
    np.testing.assert_allclose((3 * vol / (4 * math.pi)) ** (1 / 3), t["r_eq"][:8], rtol=1e-4)
    u = np.random.default_rng(2).normal(size=(4000, 3))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    R = c @ _x64_Y(4, u).T
    # the caps hold on the sampler's grid of directions (48 x 80), to a few 0.1 % between its nodes
    assert np.all(R.max(-1) / R.min(-1) <= 1.8 * 1.005)
    assert np.all(R.max(-1) / t["r_eq"] <= 1.45 * 1.005)
    assert np.median(R.max(-1) / R.min(-1)) > 1.2  # deformed, not spheres
    tg = targets_of(cfg, t)
    np.testing.assert_allclose(tg["sh"], c[:, 1:] / c[:, :1], rtol=1e-5, atol=1e-7)
    assert np.all(tg["has_sh"] == 1)
    with pytest.raises(ValueError, match="sh_lmax"):
        check_config({"classes": ["SphericalHarmonics"], "network": {"sh_lmax": 2}})


@pytest.fixture(scope="module")
def sh_network():
    """A tiny network whose output does not depend on its input: class SphericalHarmonics, radius 3
    wavelengths, relative coefficients REL (l <= 2)."""
    classes = ["Sphere", "SphericalHarmonics"]
    cfg = check_config(
        {
            "classes": classes,
            "network": {"n": 32, "widths": [8, 16], "hidden": 16, "input": "cartesian", "sh_lmax": 2},
            "data": {"n_pixels": 32, "harmonics_lmax": 2},
        }
    )
    m = InversionCNN(jax.random.PRNGKey(0), n=32, widths=(8, 16), hidden=16, n_classes=2, sh_lmax=2)
    b = np.zeros(1 + 2 + 2 + 6 + 8, np.float32)
    b[0] = math.log(3.0) - 1.5
    b[2] = 5.0
    b[5:11] = (1, 0, 0, 0, 1, 0)
    b[11:] = REL / 0.1  # the head's output scale
    last = m.head.layers[-1]
    m = eqx.tree_at(lambda t: (t.head.layers[-1].weight, t.head.layers[-1].bias), m, (0 * last.weight, b))
    return NetworkPredictor(m, {"config": cfg})


REL = np.array([0.0, 0.0, 0.0, 0.03, -0.02, 0.06, 0.01, -0.04])


def test_harmonic_starts_are_the_predicted_body_and_its_twins(sh_network):
    counts = _sphere_counts(EXP, 3.0)
    p = sh_network.predict(counts, EXP)
    assert p["class"] == "SphericalHarmonics" and isinstance(p["shape"], ds.SphericalHarmonics)
    np.testing.assert_allclose(p["sh_relative"], REL, atol=1e-6)
    c = p["coefficients"]
    np.testing.assert_allclose(c[1:] / c[0], REL, atol=1e-6)
    r = (3 * float(ds.SphericalHarmonics(c).volume()) / (4 * math.pi)) ** (1 / 3)
    assert r == pytest.approx(3.0, rel=1e-4)
    s = fitting.network_starts(sh_network, counts, EXP, delta=0.002, beta=0.001)["SphericalHarmonics"]
    assert len(s) == 4
    for sign, shape in zip(sh_twin_signs(2), s, strict=True):
        ci = np.asarray(shape.coefficients, float)
        np.testing.assert_allclose(ci[1:] / ci[0], sign * REL, atol=1e-5)
        assert float(shape.delta) == pytest.approx(0.002)
    # padded to a higher degree (zeros), cut to a lower one (volume kept)
    s4 = fitting.network_starts(sh_network, counts, EXP, lmax=4, delta=0.002)["SphericalHarmonics"][0]
    assert s4.lmax == 4 and np.all(np.asarray(s4.coefficients)[9:] == 0)
    s1 = fitting.network_starts(sh_network, counts, EXP, lmax=1, delta=0.002)["SphericalHarmonics"][0]
    assert s1.lmax == 1
    assert (3 * float(s1.volume()) / (4 * math.pi)) ** (1 / 3) == pytest.approx(3.0, rel=1e-4)
    s0 = fitting.network_starts(sh_network, counts, EXP, lmax=0, delta=0.002)["SphericalHarmonics"][0]
    assert float(s0.coefficients[0]) / math.sqrt(4 * math.pi) == pytest.approx(3.0, rel=1e-5)
    # a model without the head cannot start a harmonic fit
    old = _fixed_network(3.0, "Sphere")
    assert not fitting.has_harmonics(old) and fitting.has_harmonics(sh_network)
    with pytest.raises(ValueError, match="no spherical-harmonic coefficients"):
        fitting.network_starts(old, counts, EXP, classes=["SphericalHarmonics"])


def test_the_harmonic_refinement_starts_from_the_twin_the_search_ranks_best(monkeypatch, sh_network):
    """The coarse search only RANKS the 4 twins: the refinement starts from the best-ranked twin itself, not
    from where the 20 coarse steps left it (that moved 2 of 10 evaluation-set bodies into another basin)."""
    import fitting._fit as fit_mod
    import fitting._multires as multires

    counts = _sphere_counts(EXP, 3.0)
    twins = fitting.network_starts(sh_network, counts, EXP, lmax=2, delta=0.002, beta=0.001)[
        "SphericalHarmonics"
    ]
    moved = ds.SphericalHarmonics(np.asarray(twins[0].coefficients) * 1.3, 0.002, 0.001)
    seen = {}

    class Search:
        start_losses = np.array([7.0, np.nan, 3.0, 5.0])  # twin 2 ranked best (a NaN start never wins)
        model = moved

    def fake_fit(data, experiment, starts, mask=None, **kw):
        seen["search"] = list(starts)
        return Search()

    def fake_refine(data, experiment, starts, mask=None, **kw):
        seen["refine"] = starts
        raise RuntimeError("stop after the handoff")

    monkeypatch.setattr(fit_mod, "fit", fake_fit)  # fit_from_network imports both when called
    monkeypatch.setattr(multires, "refine_fit", fake_refine)
    with pytest.raises(RuntimeError, match="handoff"):
        fitting.fit_from_network(
            counts, EXP, sh_network, candidates=["SphericalHarmonics"], lmax=2, delta=0.002, beta=0.001
        )
    assert len(seen["search"]) == 4
    np.testing.assert_array_equal(np.asarray(seen["refine"].coefficients), np.asarray(twins[2].coefficients))


def test_fit_auto_starts_the_harmonics_from_the_network_and_escapes_by_the_ellipsoid(monkeypatch, sh_network):
    import fitting._auto as auto
    import fitting._init as init_mod
    import fitting._netinit as netinit

    calls = []

    class Res:
        def __init__(self, loss, name):
            self.loss, self.name, self.stages, self.n_used = loss, name, None, 100
            self.model = ds.SphericalHarmonics([3.0 * math.sqrt(4 * math.pi)], 0.002, 0.001)
            self.free = ("coefficients",)

    net_ell = ds.Ellipsoid((3.0, 3.0, 4.0), 0.002, 0.001)

    def fake_fit_from_network(data, experiment, network, mask=None, *, candidates, **kw):
        calls.append((candidates[0], kw.get("lmax")))
        r = Res(50.0 if candidates[0] == "SphericalHarmonics" else 60.0, candidates[0])
        if candidates[0] == "Ellipsoid":
            r.model = net_ell
        r.stages = [r]
        return r

    ladder_escapes = []

    def fake_ladder(data, experiment, ellipsoid, lmax, mask=None, **kw):
        calls.append(("ladder", kw.get("route")))
        ladder_escapes.append(kw.get("escapes", "misfit"))
        # from the network's ellipsoid 40; from another (the no-guess search's) 30
        return Res(40.0 if ellipsoid is net_ell else 30.0, "ladder"), []

    searched = {"model": ds.Ellipsoid((3.0, 4.0, 3.5), 0.002, 0.001)}

    def fake_search(data, experiment, mask, **kw):
        calls.append(("search", kw["n_starts"], kw["seed"]))
        r = Res(55.0, "Ellipsoid")
        r.model = searched["model"]
        return None, r, 3.0

    monkeypatch.setattr(netinit, "fit_from_network", fake_fit_from_network)
    monkeypatch.setattr(init_mod, "harmonics_ladder", fake_ladder)
    monkeypatch.setattr(init_mod, "sphere_ellipsoid_stages", fake_search)
    monkeypatch.setattr(auto, "choose_class", lambda results, n, criterion: next(iter(results.values())))
    counts = _sphere_counts(EXP, 3.0)
    kw = dict(delta=0.002, beta=0.001, init=sh_network, lmax=2)
    # consistent with the noise: the network's harmonic fit alone, no sphere or ellipsoid
    monkeypatch.setattr(auto, "noise_consistency", lambda r: (0.5, 0.0, 1.0))
    res = fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], **kw)
    assert calls == [("SphericalHarmonics", 2)] and res.loss == 50.0
    # a misfit: the network-started ellipsoid and the ellipsoid route run; that route's result is consistent
    # with the noise, so the lower loss is kept and the no-guess search does not run
    calls.clear()
    monkeypatch.setattr(auto, "noise_consistency", lambda r: (9.0 if r.loss == 50.0 else 0.5, 0.0, 1.0))
    res = fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], **kw)
    assert calls == [("SphericalHarmonics", 2), ("Ellipsoid", None), ("ladder", fitting.SH_ROUTE)]
    assert res.name == "ladder" and res.loss == 40.0
    assert [e[0] for e in res.escapes] == ["network", fitting.SH_ROUTE]
    from fitting._batch_auto import escape_code

    assert escape_code(res) == 1 + fitting.HARMONIC_ROUTES.index(fitting.SH_ROUTE)
    # still a misfit after that route: the same route from the no-guess ellipsoid search (this call's
    # n_starts and seed), the lowest of the three losses kept
    calls.clear()
    monkeypatch.setattr(auto, "noise_consistency", lambda r: (9.0, 0.0, 1.0))
    res = fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], n_starts=5, seed=3, **kw)
    assert calls == [
        ("SphericalHarmonics", 2),
        ("Ellipsoid", None),
        ("ladder", fitting.SH_ROUTE),
        ("search", 5, 3),
        ("ladder", fitting.SH_ROUTE),
    ]
    assert res.loss == 30.0 and [e[0] for e in res.escapes] == [
        "network",
        fitting.SH_ROUTE,
        "ellipsoid_search",
    ]
    assert [e[1] for e in res.escapes] == [50.0, 40.0, 30.0]
    assert escape_code(res) == 1 + fitting.HARMONIC_ROUTES.index("ellipsoid_search")
    assert [type(s.model).__name__ for s in res.stages].count("Ellipsoid") == 2  # both starts in the stages
    # the search ends at the network's ellipsoid (the same body, other axis order): no second route
    calls.clear()
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # columns: body axes (proper)
    searched["model"] = ds.Ellipsoid((3.0, 3.0, 4.0), 0.002, 0.001, rotation=swap)
    res = fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], **kw)
    assert calls == [
        ("SphericalHarmonics", 2),
        ("Ellipsoid", None),
        ("ladder", fitting.SH_ROUTE),
        ("search", 8, 0),
    ]
    assert res.loss == 40.0 and [e[0] for e in res.escapes] == ["network", fitting.SH_ROUTE]
    # sh_escapes="always": the ellipsoid route runs although the network's fit is consistent with the noise
    # (a local minimum the noise check cannot see), and the ladder's own escapes run always too
    calls.clear()
    ladder_escapes.clear()
    monkeypatch.setattr(auto, "noise_consistency", lambda r: (0.5, 0.0, 1.0))
    res = fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], sh_escapes="always", **kw)
    assert calls == [
        ("SphericalHarmonics", 2),
        ("Ellipsoid", None),
        ("ladder", fitting.SH_ROUTE),
        ("search", 8, 0),
    ]
    assert ladder_escapes == ["always"]
    assert res.name == "ladder" and [e[0] for e in res.escapes] == ["network", fitting.SH_ROUTE]
    with pytest.raises(ValueError, match="sh_escapes"):
        fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], sh_escapes="often", **kw)
    # sh_start="ellipsoid": the old path (ellipsoid, then the ladder)
    calls.clear()
    fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], sh_start="ellipsoid", **kw)
    assert calls == [("Ellipsoid", None), ("ladder", fitting.SH_ROUTE)]
    with pytest.raises(ValueError, match="sh_start"):
        fitting.fit_auto(counts, EXP, ["SphericalHarmonics"], sh_start="bad", **kw)
    with pytest.raises(ValueError, match="predicts no harmonic"):
        fitting.fit_auto(
            counts, EXP, ["SphericalHarmonics"], sh_start="network", **dict(kw, init=_fixed_network(3.0))
        )


def test_data_stream_with_harmonic_bodies_gives_the_harmonic_targets():
    cfg = {
        "classes": ["Sphere", "SphericalHarmonics"],
        "data": {
            "n_pixels": 16,
            "size_buckets": [1.5, 2.0],
            "pitch": 0.5,
            "harmonics_lmax": 2,
            "mix_families": True,
        },
        "network": {"n": 16, "widths": [4, 4], "hidden": 8, "polar": [8, 16], "sh_lmax": 2, "orient_bins": 2},
        "train": {"batch_size": 4},
    }
    stream = DataStream(cfg, 4)
    x, tg = stream.batch(0)
    assert x.shape == (4, 2, 16, 16) and np.all(np.isfinite(np.asarray(x)))
    assert tg["sh"].shape == (4, 8) and sorted(tg["has_sh"].tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert np.all(tg["sh"][tg["has_sh"] == 0] == 0)
    from fitting._network import build_model
    from fitting._train import batch_loss, loss_twins

    model = build_model(stream.cfg, jax.random.PRNGKey(0))
    loss, parts = batch_loss(model, x, tg, {"harmonics": 20.0}, loss_twins(stream.cfg))
    assert np.isfinite(float(loss)) and float(parts["harmonics"]) > 0


def test_detector_effects_gap_gain_and_saturation():
    """The training data's detector effects: a dead band (in detector, not pattern, coordinates), a power-law
    gain curve and saturation at a fraction of the largest count; all off by default (unchanged data)."""
    from fitting._train import make_batch_fn, sample_noise

    base = {"classes": ["Sphere"], "data": {"n_pixels": 16, "size_buckets": [1.5, 2.0], "pitch": 0.5}}
    cfg = check_config(base)
    t = sample_truths(cfg, "ellipsoid", 0, 2, np.random.default_rng(0))
    t = {k: np.asarray(v, np.float32) for k, v in t.items() if k != "label"}
    fn = make_batch_fn(cfg, "ellipsoid", 0)
    nz = sample_noise(cfg, 2, np.random.default_rng(1))
    nz.update(shift=np.zeros((2, 2), np.int32), background=np.zeros(2, np.float32))
    _, c0, m0 = fn(t, nz, jax.random.PRNGKey(0))
    assert np.all(nz["gamma"] == 1) and np.all(np.isinf(nz["saturation"])) and np.all(nz["gap_px"] == 0)
    on = check_config(
        {
            **base,
            "data": {
                **base["data"],
                "panel_gap_px": 2,
                "panel_gap_prob": 1.0,
                "gain_gamma_range": [0.5, 0.5],
                "saturation_range": [0.5, 0.5],
                "saturation_prob": 1.0,
            },
        }
    )
    nz2 = sample_noise(on, 2, np.random.default_rng(1))
    nz2.update(shift=np.zeros((2, 2), np.int32), background=np.zeros(2, np.float32))
    nz2["gap_axis"] = np.array([0, 1], np.int32)
    nz2["gap_start"] = np.array([5, 9], np.int32)
    _, c1, m1 = fn(t, nz2, jax.random.PRNGKey(0))  # the same Poisson draws (same key)
    c0, c1, m0, m1 = (np.asarray(a) for a in (c0, c1, m0, m1))
    assert not m1[0, 5:7].any() and not m1[1, :, 9:11].any()  # the bands
    np.testing.assert_array_equal(m1[0, 7:], m0[0, 7:])  # nothing else
    keep = m1 & m0
    expect = np.minimum(np.sqrt(c0), 0.5 * np.sqrt(c0.reshape(2, -1).max(-1))[:, None, None])
    np.testing.assert_allclose(c1[keep], expect[keep], rtol=1e-5)
    with pytest.raises(ValueError, match="gain_gamma_range"):
        check_config({"data": {"gain_gamma_range": [0.5, 1.5]}})


def test_same_ellipsoid_compares_bodies_not_parametrisations():
    from fitting._auto import same_ellipsoid

    a = ds.Ellipsoid((3.0, 4.0, 5.0))
    # the same body: axes permuted with the rotation's columns, and a body axis flipped
    perm = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert same_ellipsoid(a, ds.Ellipsoid((4.0, 5.0, 3.0), rotation=perm))
    assert same_ellipsoid(a, ds.Ellipsoid((3.0, 4.0, 5.0), rotation=np.diag([-1.0, 1.0, -1.0])))
    assert same_ellipsoid(a, ds.Ellipsoid((3.0, 4.0, 5.02)))  # within rtol
    assert not same_ellipsoid(a, ds.Ellipsoid((3.0, 4.0, 5.5)))
    # tilted, and its z-mirror twin (another body with the same far field in the Born limit)
    r = np.asarray(ds.rotation_from_euler(np.array([0.4, 0.6, 0.2])))
    m = np.diag([1.0, 1.0, -1.0])  # the mirror body: rotation m r m (proper, and m D m = D)
    assert not same_ellipsoid(
        ds.Ellipsoid((3.0, 4.0, 5.0), rotation=r), ds.Ellipsoid((3.0, 4.0, 5.0), rotation=m @ r @ m)
    )
