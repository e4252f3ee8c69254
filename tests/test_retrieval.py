"""Evaluation set, IoU metric, strong-refraction sphere start and class selection (`fitting.fit_auto`)."""

import math

import numpy as np
import pytest
from references import mie_dcs, sphere_amplitude

import diffscat as ds
import fitting
from fitting._evalset import render_supersampled
from fitting._init import _msft_sphere_profile, msft_sphere_intensity

TINY = dict(
    n_harmonics=1,
    n_ellipsoids=1,
    polyhedra=("Cube",),
    n_orientations=1,
    n_pixels=16,
    size_range=(2.0, 2.5),
)


# --- evaluation set -------------------------------------------------------------------------------------------


def test_evaluation_set_reproducible_from_seed(tmp_path):
    b = fitting.evaluation_set(3, **TINY, cache_dir=tmp_path)
    c = fitting.evaluation_set(3, **TINY, cache_dir=tmp_path)  # from the cache file
    assert len(list(tmp_path.glob("evalset-*.npz"))) == 1
    assert [p.truth["class"] for p in b] == ["SphericalHarmonics", "Ellipsoid", "Cube"]
    for y, z in zip(b, c, strict=True):
        np.testing.assert_array_equal(y.counts, z.counts)
        np.testing.assert_array_equal(y.mask, z.mask)
        np.testing.assert_array_equal(y.expected, z.expected)
        assert y.truth == z.truth
    # regenerated from the seed (no cache): identical, and a subset of the families (or more shapes of another
    # family) leaves each pattern unchanged
    e = fitting.evaluation_set(3, **dict(TINY, families=("ellipsoid",), n_harmonics=5))
    np.testing.assert_array_equal(e[0].counts, b.family("ellipsoid")[0].counts)
    assert e[0].truth == b.family("ellipsoid")[0].truth
    d = fitting.evaluation_set(4, **dict(TINY, families=("ellipsoid",)))
    assert not np.array_equal(b.family("ellipsoid")[0].counts, d[0].counts)


def test_evaluation_set_truth_ranges_and_mask():
    es = fitting.evaluation_set(0, **dict(TINY, beamstop_deg=5.0))
    pix = es.experiment.pixels()
    theta = np.degrees(np.arccos(1 - np.asarray(pix.omc)))
    for p in es:
        t = p.truth
        assert 2.0 <= t["radius_eq"] <= 2.5 and 0 <= t["delta"] <= 0.01 and 0.001 <= t["beta"] <= 0.01
        shape = p.truth_shape()
        assert float(shape.volume()) == pytest.approx(4 / 3 * math.pi * t["radius_eq"] ** 3, rel=1e-6)
        assert not p.mask[theta < 5.0].any() and p.mask[theta > 6.0].all()
        assert np.all(p.counts[~p.mask] == 0)
        # Poisson counts around the expected total
        assert abs(p.counts.sum() - t["photons"]) < 6 * math.sqrt(t["photons"])


def test_harmonics_coefficients_radius_ratio():
    from diffscat.shapes._harmonics import _sphere_grid, real_sph_harm

    rng = np.random.default_rng(0)
    u, _ = _sphere_grid(60, 120)
    Y = np.asarray(real_sph_harm(4, np.asarray(u, float)))
    for ratio in (1.0, 1.2, 1.25 / 0.75):
        c = fitting.random_harmonics_coefficients(rng, 4, ratio, mean_radius=2.0)
        r = Y @ c
        assert r.max() / r.min() == pytest.approx(ratio, rel=2e-3)
        assert c[0] / math.sqrt(4 * math.pi) == pytest.approx(2.0)
        assert np.all(c[1:4] == 0)  # l = 1 skipped


def test_reference_path_is_independent_but_consistent():
    """The evaluation set's simulation differs from the fit's forward model (other renderer, other transform)
    by far more than float round-off, yet agrees with it to < 1 % and with Mie's trend."""
    exp = ds.Experiment(1.0, ds.QGrid(24, 30.0))
    shape = ds.Ellipsoid([2.0, 2.4, 2.8], delta=0.01, beta=0.002, rotation=fitting.random_rotations(1, 2)[0])
    ref = fitting.simulate_reference(shape, exp)
    fit_model = np.asarray(ds.simulate(shape, exp))
    m = np.asarray(exp.valid)
    rel = np.linalg.norm((ref - fit_model)[m]) / np.linalg.norm(fit_model[m])
    assert 1e-5 < rel < 1e-2
    # occupancy is a box average over sub-voxel points: values in multiples of 1/8, volume close to the truth
    vm = render_supersampled(shape, 0.25, 2)
    occ = np.abs(np.asarray(vm.dn)) / abs(complex(-0.01, 0.002))
    np.testing.assert_allclose(occ * 8, np.round(occ * 8), atol=1e-9)
    assert occ.sum() * 0.25**3 == pytest.approx(float(shape.volume()), rel=0.02)


def test_reference_separable_equals_direct():
    exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
    shape = ds.Cube(2.0, delta=0.02, beta=0.01, rotation=fitting.random_rotations(1, 1)[0])
    a = fitting.simulate_reference(shape, exp, transform="separable")
    b = fitting.simulate_reference(shape, exp, transform="direct")
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * a.max())


# --- IoU --------------------------------------------------------------------------------------------------------


def test_iou_known_cases():
    R = fitting.random_rotations(1, 7)[0]
    e = ds.Ellipsoid([1.0, 1.5, 2.0], rotation=R)
    assert fitting.iou(e, e) == 1.0
    # disjoint spheres (no twins, no alignment): 0
    a, b = ds.Sphere(1.0, centre=[2.0, 0, 0]), ds.Sphere(1.0, centre=[-2.0, 0, 0])
    assert fitting.iou(a, b, twins=False, align_centroids=False) == 0.0
    # ...but the inversion twin of one is the other; the centroid alignment also makes them equal
    assert fitting.iou(a, b, align_centroids=False) == 1.0
    assert fitting.iou(a, b, twins=False) == pytest.approx(1.0, abs=0.03)  # centroids on a grid
    # concentric spheres: IoU = volume ratio
    assert fitting.iou(ds.Sphere(2.0), ds.Sphere(2.0 * 0.8 ** (1 / 3)), n=96) == pytest.approx(0.8, abs=0.01)


def test_iou_twin_invariance():
    R = fitting.random_rotations(1, 3)[0]
    M = np.diag([1.0, 1.0, -1.0])
    shape = ds.Cube(2.0, rotation=R)
    mirror = ds.Cube(
        2.0, rotation=M @ R @ M
    )  # the z-mirror image (a cube is mirror-symmetric in its body frame)
    assert fitting.iou(shape, mirror, twins=False) < 0.9
    val, which = fitting.iou(shape, mirror, return_twin=True)
    assert val > 0.99 and which in ("z_mirror", "inversion_z_mirror")
    c = fitting.random_harmonics_coefficients(np.random.default_rng(1), 3, 1.5)
    c[1:4] = [0.0, 0.0, 0.0]
    sh = ds.SphericalHarmonics(c, rotation=R)
    odd = np.array([(-1) ** math.isqrt(i) for i in range(c.size)])  # Y_lm(-u) = (-1)^l Y_lm(u)
    inv = ds.SphericalHarmonics(c * odd, rotation=R)
    assert fitting.iou(sh, inv, twins=False) < 0.97
    assert fitting.iou(sh, inv) > 0.99


def _rot(axis, deg):
    """Rotation by `deg` about the unit vector `axis` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def test_ellipsoid_axis_errors_known_cases():
    R = fitting.random_rotations(1, 11)[0]
    truth = ds.Ellipsoid([2.0, 1.0, 3.0], rotation=R)  # axes sorted: 1 (column 1), 2 (column 0), 3 (column 2)
    lengths, dirs = fitting.ellipsoid_axis_errors(truth, truth)
    np.testing.assert_allclose(lengths, 0.0, atol=1e-6)
    np.testing.assert_allclose(dirs, 0.0, atol=0.05)
    # the same body listed in another axis order, with flipped axis signs: no error
    P = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])  # det +1
    same = ds.Ellipsoid([3.0, 2.0, 1.0], rotation=R @ P)  # columns of R @ P: -R[:, 2], R[:, 0], -R[:, 1]
    np.testing.assert_allclose(fitting.ellipsoid_axis_errors(truth, same)[1], 0.0, atol=0.05)
    # 5 deg about the longest axis turns the two others by 5 deg; lengths scaled per axis
    turned = ds.Ellipsoid([2.0 * 1.01, 1.0 * 0.98, 3.0], rotation=_rot(R[:, 2], 5.0) @ R)
    lengths, dirs = fitting.ellipsoid_axis_errors(truth, turned)
    np.testing.assert_allclose(lengths, [-0.02, 0.01, 0.0], atol=1e-6)
    np.testing.assert_allclose(dirs, [5.0, 5.0, 0.0], atol=0.05)
    # the z-mirror image (a single pattern's ambiguity) counts as no error
    M = np.diag([1.0, 1.0, -1.0])
    mirror = ds.Ellipsoid([2.0, 1.0, 3.0], rotation=M @ R @ M)
    assert fitting.iou(truth, mirror, twins=False) < 0.95
    np.testing.assert_allclose(fitting.ellipsoid_axis_errors(truth, mirror)[1], 0.0, atol=0.05)
    with pytest.raises(TypeError, match="fitted"):
        fitting.ellipsoid_axis_errors(truth, ds.Sphere(2.0))


def test_ellipsoid_axis_sigmas_follow_the_fit():
    """Two nearly equal semi-axes: the fit's sigma of the rotation about the third axis is large, so the
    directions of the pair are poorly determined and the third axis's is not (fit started at the truth)."""
    R = fitting.random_rotations(1, 5)[0]
    truth = ds.Ellipsoid([3.0, 3.03, 4.2], delta=0.004, beta=0.004, rotation=R)
    c, m, exp = _pattern(truth, 24, 1e6, 3)
    res = fitting.fit(c, exp, truth, m, free=("semi_axes", "orientation"), max_steps=20)
    sig_a, sig_d = fitting.ellipsoid_axis_sigmas(res)
    assert sig_a.shape == sig_d.shape == (3,) and np.all(sig_a > 0)
    # the pair (shortest first) against the long axis
    assert sig_d[0] > 5 * sig_d[2] and sig_d[1] > 5 * sig_d[2]
    # the same in the result's summary (fit.json), with the lab-frame directions
    axes = res.summary()["principal_axes"]
    assert [ax["semi_axis"] for ax in axes] == sorted(np.asarray(res.model.semi_axes, float).tolist())
    np.testing.assert_allclose([ax["direction_sigma_deg"] for ax in axes], sig_d)
    long_axis = np.asarray(axes[2]["direction"])
    assert abs(long_axis @ R[:, 2]) > np.cos(np.radians(2.0))
    # arithmetic: quadrature sums of the other two rotation sigmas, reordered shortest axis first
    fake = type("R", (), {"model": ds.Ellipsoid([3.0, 1.0, 2.0]), "sigmas": None})()
    fake.sigmas = {"semi_axes": np.array([0.3, 0.1, 0.2]), "orientation": np.array([1.0, 2.0, 3.0])}
    sa, sd = fitting.ellipsoid_axis_sigmas(fake)
    np.testing.assert_allclose(sa, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(sd, [math.hypot(3, 1), math.hypot(1, 2), math.hypot(2, 3)])
    fake.sigmas = {}
    with pytest.raises(ValueError, match="uncertainties=True"):
        fitting.ellipsoid_axis_sigmas(fake)
    fake.model = ds.Sphere(1.0)
    with pytest.raises(TypeError, match="Ellipsoid"):
        fitting.ellipsoid_axis_sigmas(fake)


# --- strong refraction: sphere start ---------------------------------------------------------------------------


def _sphere_counts(I, exp, photons, seed):
    pix = exp.pixels()
    theta = np.degrees(np.arccos(1 - np.asarray(pix.omc)))
    mask = np.asarray(pix.valid) & (theta > 2.0)
    mu = np.where(mask, I * np.asarray(pix.solid_angle), 0.0)
    mu = mu * photons / mu.sum()
    return np.random.default_rng(seed).poisson(mu).astype(float), mask


def test_msft_sphere_profile_limits():
    q = np.linspace(0.05, 3.0, 40)
    born = msft_sphere_intensity(q, [4.0], 1.0)[0]
    ref = (sphere_amplitude(q * 4.0)) ** 2
    np.testing.assert_allclose(born / born[0], ref / ref[0], rtol=1e-6, atol=1e-9)
    # against the project's own sphere simulation at delta = 0.05 along a row of a QGrid
    exp = ds.Experiment(1.0, ds.QGrid(48, 30.0))
    I = np.asarray(ds.simulate(ds.Sphere(4.0, delta=0.05, beta=0.01), exp))
    qn = np.linalg.norm(np.asarray(exp.q), axis=-1)
    row = I[24, 24:]
    model = msft_sphere_intensity(qn[24, 24:], [4.0], 1.0, 0.05, 0.01)[0]
    model = model * row.sum() / model.sum()
    assert np.linalg.norm(model - row) / np.linalg.norm(row) < 0.03


@pytest.mark.parametrize(
    ("radius", "delta", "beta"), [(2.0, 0.0, 0.0), (9.0, 0.05, 0.01), (30.0, -0.01, 0.002)]
)
def test_msft_sphere_scan_profile_matches_direct(radius, delta, beta):
    # the radius scan's interpolated profile (Psi on a coarse |q| grid, 4-point Lagrange) against the direct
    # quadrature at every |q|: within 2e-3 of the peak, fringe minima included
    q = np.sort(np.random.default_rng(1).uniform(0.0, 3.2, 1500))
    radii = np.array([0.95, 1.0]) * radius
    direct = msft_sphere_intensity(q, radii, 1.0, delta, beta)
    scan = _msft_sphere_profile(q, radii, 1.0, delta, beta)
    err = np.max(np.abs(scan - direct), axis=1) / np.max(direct, axis=1)
    assert np.all(err < 2e-3), err


@pytest.mark.parametrize(("delta", "beta"), [(0.05, 0.05), (0.1, 0.0)])
def test_estimate_radius_strong_refraction_msft(delta, beta):
    exp = ds.Experiment(1.0, ds.QGrid(48, 30.0))
    I = np.asarray(ds.simulate(ds.Sphere(7.0, delta=delta, beta=beta), exp))
    c, m = _sphere_counts(I, exp, 1e6, 0)
    born = fitting.estimate_radius(c, exp, m)
    r = fitting.estimate_radius(c, exp, m, delta=delta, beta=beta)
    assert r == pytest.approx(7.0, rel=0.01)
    assert abs(r - 7.0) < abs(born - 7.0) / 3  # the Born fringe estimate is fooled (the measured problem)


def test_estimate_radius_strong_refraction_mie():
    wl = 1.0
    exp = ds.Experiment(wl, ds.QGrid(64, 30.0))
    pix = exp.pixels()
    theta = np.arccos(1 - np.asarray(pix.omc))
    I = mie_dcs(7.0, 0.05, 0.01, wl, theta, polarisation="unpolarised")
    I = np.where(np.asarray(pix.valid), I, 0.0)
    c, m = _sphere_counts(I, exp, 1e6, 1)
    r = fitting.estimate_radius(c, exp, m, delta=0.05, beta=0.01)
    assert r == pytest.approx(7.0, rel=0.03)


# --- class selection ---------------------------------------------------------------------------------------------


def _pattern(shape, n, photons, seed):
    exp = ds.Experiment(1.0, ds.QGrid(n, 30.0))
    I = fitting.simulate_reference(shape, exp)
    c, m = _sphere_counts(I, exp, photons, seed)
    return c, m, exp


def test_bin_pattern():
    d = np.arange(16.0).reshape(4, 4)
    m = np.ones((4, 4), bool)
    m[0, 0] = False
    db, mb = fitting.bin_pattern(d, m, 2)
    np.testing.assert_array_equal(
        db, [[0 + 1 + 4 + 5 - 0, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    )
    np.testing.assert_array_equal(mb, [[False, True], [True, True]])
    with pytest.raises(ValueError, match="factor"):
        fitting.bin_pattern(np.zeros((5, 4)), np.ones((5, 4), bool), 2)


def test_fit_auto_rejects_unknown_class():
    exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
    with pytest.raises(ValueError, match="candidates"):
        fitting.fit_auto(np.ones((8, 8)), exp, ("Sphere", "Blob"))
    with pytest.raises(ValueError, match="fit_optics"):  # before any fit
        fitting.fit_auto(np.ones((8, 8)), exp, ("Sphere",), fit_optics=("delta", "radius"))


@pytest.mark.slow
def test_fit_auto_cube_vs_sphere():
    R = fitting.random_rotations(1, 5)[0]
    truth = ds.Cube(4.0, delta=0.005, beta=0.002, rotation=R)
    c, m, exp = _pattern(truth, 32, 1e6, 0)
    res = fitting.fit_auto(
        c,
        exp,
        ("Sphere", "Cube"),
        m,
        delta=0.005,
        beta=0.002,
        n_orientations=32,
        n_refine=2,
        max_steps=30,
        uncertainties=False,
    )
    assert [r[0] for r in res.ranking] == ["Cube", "Sphere"]
    assert res.ranking[0][2] == 4 and res.ranking[1][2] == 1
    assert isinstance(res.model, ds.Cube)
    assert float(res.model.edge) == pytest.approx(4.0, rel=0.02)
    assert fitting.iou(truth, res.model) > 0.9


def test_prune_classes_rule():
    dev = {
        "Cube": 100.0,
        "Octahedron": 140.0,
        "Icosahedron": 400.0,
        "Decahedron": 151.0,
        "Superellipsoid": 900.0,
    }
    keep, pruned = fitting.prune_classes(dev, class_margin=1.5, min_classes=1)
    # within 1.5 x the best polyhedron: Cube, Octahedron; Superellipsoid is no rigid polyhedron: always kept
    assert keep == ["Cube", "Octahedron", "Superellipsoid"]
    assert pruned == [("Decahedron", pytest.approx(1.51)), ("Icosahedron", pytest.approx(4.0))]
    # min_classes: the best searches are kept whatever their margin
    keep, pruned = fitting.prune_classes(dev, class_margin=1.0, min_classes=3)
    assert keep == ["Cube", "Octahedron", "Decahedron", "Superellipsoid"]
    assert [n for n, _ in pruned] == ["Icosahedron"]
    # None (or fewer polyhedra than min_classes): everything is refined
    assert fitting.prune_classes(dev, class_margin=None) == (list(dev), [])
    assert fitting.prune_classes({"Cube": 1.0, "Octahedron": 9.0}, 1.5, 2) == (["Cube", "Octahedron"], [])
    # a non-finite search deviance ranks last and is pruned
    keep, pruned = fitting.prune_classes({"Cube": 1.0, "Octahedron": np.inf, "Icosahedron": 1.2}, 1.5, 1)
    assert keep == ["Cube", "Icosahedron"] and pruned[0][0] == "Octahedron"
    with pytest.raises(ValueError, match="class_margin"):
        fitting.prune_classes(dev, class_margin=0.5)
    with pytest.raises(ValueError, match="min_classes"):
        fitting.prune_classes(dev, min_classes=0)
    exp = ds.Experiment(1.0, ds.QGrid(8, 30.0))
    with pytest.raises(ValueError, match="refine_margin"):  # checked before any fitting
        fitting.fit_auto(np.ones((8, 8)), exp, ("Cube",), refine_margin=0.9)


def test_orientation_search_runs_on_the_low_q_crop(monkeypatch):
    """The search evaluates its templates on the binned low-q crop when the size allows one (coarse=True), on
    the binned whole pattern otherwise; either way the true class's best start beats the wrong class's."""
    import fitting._auto as auto

    R = fitting.random_rotations(1, 3)[0]
    truth = ds.Octahedron(13.0, delta=0.004, beta=0.002, rotation=R)  # volume-equivalent radius 6.3 lambda
    c, m, exp = _pattern(truth, 32, 1e6, 1)
    r_eq = (3 * float(truth.volume()) / (4 * math.pi)) ** (1 / 3)
    seen = []
    real = auto._batch_deviance

    def spy(shapes, data, mask, experiment, grid):
        seen.append((experiment.detector.n, experiment.detector.theta_max_deg))
        return real(shapes, data, mask, experiment, grid)

    monkeypatch.setattr(auto, "_batch_deviance", spy)
    best = {}
    for coarse in (True, False):
        for name in ("Octahedron", "Cube"):
            seen.clear()
            _, dev, _ = fitting.orientation_search(
                name, c, exp, m, r_eq, delta=0.004, beta=0.002, n_orientations=8, coarse=coarse
            )
            assert np.all(np.diff(dev) >= 0)  # sorted best first
            best[coarse, name] = dev[0]
            # 32^2 at 30 deg -> crop 16^2 at sin(theta') = sin(30 deg) / 2 -> binned 8^2; no crop: binned 16^2
            n_want, t_want = (8, math.degrees(math.asin(0.25))) if coarse else (16, 30.0)
            assert {n for n, _ in seen} == {n_want}
            assert all(t == pytest.approx(t_want) for _, t in seen)
    assert best[True, "Octahedron"] < best[True, "Cube"]
    assert best[False, "Octahedron"] < best[False, "Cube"]


@pytest.mark.slow
def test_fit_auto_prunes_classes_by_their_searches(monkeypatch):
    import fitting._auto as auto

    R = fitting.random_rotations(1, 5)[0]
    # r_eq 6.8 wavelengths: big enough for a low-q crop at 64^2 (fitting._multires.coarse_factor)
    truth = ds.Cube(11.0, delta=0.005, beta=0.002, rotation=R)
    c, m, exp = _pattern(truth, 64, 1e6, 0)
    crop, full = [], []
    real_crop, real_full = auto._oriented_crop, auto._oriented_full

    def spy_crop(name, *a, **k):
        crop.append(name)
        return real_crop(name, *a, **k)

    def spy_full(name, *a, **k):
        full.append(name)
        return real_full(name, *a, **k)

    monkeypatch.setattr(auto, "_oriented_crop", spy_crop)
    monkeypatch.setattr(auto, "_oriented_full", spy_full)
    cands = ("Cube", "Octahedron", "Icosahedron", "Decahedron")
    kw = dict(delta=0.005, beta=0.002, n_orientations=32, n_refine=2, max_steps=30, uncertainties=False)
    res = fitting.fit_auto(c, exp, cands, m, class_margin=1.5, min_classes=2, refine_margin=1.5, **kw)
    assert isinstance(res.model, ds.Cube)
    assert len(crop) == 2  # the two best searches refined on the crop ...
    assert full == ["Cube"]  # ... the octahedron (crop deviance ~60 x the cube's) not at full resolution
    assert [r[0] for r in res.ranking] == full
    assert res.pruned and all(ratio > 1.5 for _, ratio in res.pruned)
    assert sorted(full + [n for n, _ in res.pruned]) == sorted(cands)


@pytest.mark.slow
def test_fit_auto_sphere_is_not_overfitted():
    truth = ds.Sphere(3.5, delta=0.005, beta=0.002)
    c, m, exp = _pattern(truth, 32, 1e5, 1)
    res = fitting.fit_auto(
        c,
        exp,
        ("Sphere", "Ellipsoid"),
        m,
        delta=0.005,
        beta=0.002,
        n_starts=2,
        max_steps=30,
        uncertainties=False,
    )
    assert res.ranking[0][0] == "Sphere"
    assert res.ranking[1][1] <= res.ranking[0][1] + 1.0  # the ellipsoid fits at least about as well...
    assert res.ranking[1][3] > res.ranking[0][3]  # ...but pays for its 5 extra parameters


@pytest.mark.slow
def test_fit_auto_fits_delta_when_asked():
    """`fit_optics=("delta",)`: a sphere made by the independent reference path with delta = 0.03, fitted from an
    assumed 0.01. At fixed delta the fit is far from the noise; with delta free it recovers delta and the
    radius, and the class pays for one more parameter."""
    truth = ds.Sphere(4.0, delta=0.03, beta=0.003)
    c, m, exp = _pattern(truth, 24, 3e5, 2)
    kw = dict(delta=0.01, beta=0.003, max_steps=60)
    fixed = fitting.fit_auto(c, exp, ("Sphere",), m, **kw)
    free = fitting.fit_auto(c, exp, ("Sphere",), m, fit_optics=("delta",), **kw)
    assert "delta" not in fixed.free and "delta" in free.free
    assert float(np.asarray(free.model.delta)) == pytest.approx(0.03, rel=0.05)
    assert 0 < float(free.sigmas["delta"]) < 0.003
    assert float(np.asarray(free.model.radius)) == pytest.approx(4.0, rel=0.01)
    assert free.loss < fixed.loss - 100.0
    assert free.ranking[0][2] == fixed.ranking[0][2] + 1
    assert free.stages[-1] is free and len(free.stages) == len(fixed.stages) + 1
    assert free.time_s > free.stages[-2].time_s


def test_data_loss_and_parameter_count():
    from types import SimpleNamespace

    r = SimpleNamespace(
        loss_kind="poisson",
        loss=99.0,
        data=np.array([2.0, 0.0, 5.0]),
        mask=np.array([True, True, False]),
        model_counts=np.array([1.0, 3.0, 1.0]),
        free=("edge", "orientation"),
        values={"edge": np.array(3.0), "orientation": np.eye(3)},
    )
    # (1 - 2 + 2 ln 2) + (3 - 0): the third pixel is masked; the regulariser in `loss` is not counted
    assert fitting.data_loss(r) == pytest.approx(2 + 2 * math.log(2))
    assert fitting.n_parameters(r) == 4
    r.free, r.values = ("semi_axes", "orientation"), {"semi_axes": np.ones(3), "orientation": np.eye(3)}
    assert fitting.n_parameters(r) == 6
