"""Losses against NumPy/SciPy written here: Poisson log-pmf, brute-force profiling, Gaussian likelihoods."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

import diffscat as ds
import fitting


def _problem(seed=0, n=(12, 10)):
    rng = np.random.default_rng(seed)
    model = rng.uniform(0.1, 5.0, n)
    data = rng.poisson(30.0 * model + 2.0).astype(float)
    mask = rng.random(n) > 0.2
    return model, data, mask


def test_poisson_matches_scipy_logpmf():
    model, data, mask = _problem()
    mu = 30.0 * model + 2.0
    ref = -stats.poisson.logpmf(data, mu) + stats.poisson.logpmf(data, np.maximum(data, 1e-300))
    ref = np.sum(np.where(mask, ref, 0.0))
    got = fitting.poisson_nll(model, data, mask, scale=30.0, background=2.0)
    assert np.isclose(float(got), ref, rtol=1e-10)


def test_poisson_float32_is_accurate_at_high_counts():
    """Bright pixels (1e6 counts, model within 0.1 %): the float32 deviance matches float64 to 1e-3 units over
    2000 pixels (the direct form mu - d + d log(d / mu) was off by ~10 units in the sum, ~0.3 per pixel:
    enough to stall a line search near a 1e7-photon optimum); dim, empty and far-off pixels stay exact and
    the gradient stays finite at mu -> 0."""
    rng = np.random.default_rng(3)
    d = np.concatenate([rng.poisson(1e6, 2000), rng.poisson(3.0, 500), np.zeros(50)]).astype(np.float64)
    mu = d * (1.0 + rng.normal(0.0, 1e-3, d.size))
    mu[2000:2100] *= 3.0  # far off: the direct branch
    mu[2500:] = rng.uniform(0.0, 5.0, 50)  # d = 0
    mu32 = mu.astype(np.float32)
    ref = -stats.poisson.logpmf(d, mu32.astype(np.float64)) + stats.poisson.logpmf(d, np.maximum(d, 1e-300))
    got = np.asarray(fitting.Poisson().terms(jnp.asarray(mu32), jnp.asarray(d, jnp.float32)), np.float64)
    assert abs(got[:2000].sum() - ref[:2000].sum()) < 1e-2
    assert np.allclose(got, ref, rtol=2e-3, atol=1e-4)
    g = jax.grad(lambda m: jnp.sum(fitting.Poisson().terms(m, jnp.asarray([5.0, 0.0, 1e6], jnp.float32))))(
        jnp.asarray([1e-30, 0.0, 1.0], jnp.float32)
    )
    assert np.all(np.isfinite(np.asarray(g)))


def test_poisson_profiled_scale_closed_form_and_bruteforce():
    model, data, mask = _problem(1)
    s_closed = data[mask].sum() / model[mask].sum()
    s = fitting.profile_scale("poisson", jnp.asarray(model), jnp.asarray(data), jnp.asarray(mask))
    assert np.isclose(float(s), s_closed, rtol=1e-12)
    # with a background: no closed form, compare with a 1-D minimisation in NumPy
    nll = lambda t: np.sum(
        np.where(mask, np.exp(t) * model + 2.0 - data * np.log(np.exp(t) * model + 2.0), 0)
    )
    t_ref = optimize.minimize_scalar(nll, bracket=(0.0, 5.0), tol=1e-12).x
    s_bg = fitting.profile_scale("poisson", jnp.asarray(model), jnp.asarray(data), jnp.asarray(mask), 2.0)
    assert np.isclose(float(s_bg), np.exp(t_ref), rtol=1e-6)
    # the profiled loss equals the loss at the best scale, and is below nearby scales
    prof = float(fitting.poisson_nll(model, data, mask, background=2.0))
    assert np.isclose(
        prof, float(fitting.poisson_nll(model, data, mask, scale=np.exp(t_ref), background=2.0))
    )
    for f in (0.99, 1.01):
        assert prof < float(fitting.poisson_nll(model, data, mask, scale=f * np.exp(t_ref), background=2.0))


@pytest.mark.parametrize("loss", [fitting.Poisson(), fitting.Anscombe(), fitting.LogIntensity(2.0)])
@pytest.mark.parametrize("background", [0.0, 1.5])
def test_profiled_scale_and_loss_derivatives_match_central_differences(loss, background):
    """The profiled scale's derivative (Newton steps outside autodiff, the last one differentiated) and the
    profiled loss's gradient against central differences of the values (float64), and the loss's gradient
    against the envelope theorem: at the optimal scale, d loss / d model is the gradient at that scale held
    fixed. A start 3x off the optimum so that the Newton steps have work to do."""
    model, data, mask = _problem(11)
    m, d, k = jnp.asarray(model), jnp.asarray(data), jnp.asarray(mask)
    v = jnp.asarray(np.random.default_rng(5).normal(size=model.shape))
    scale = lambda x: loss.newton_scale(x, d, k, background, 3.0 * loss.profile_scale(x, d, k, background))
    value = lambda x: loss.value(x, d, k, background=background)
    h = 1e-5
    for fn in (scale, value):
        fd = (float(fn(m + h * v)) - float(fn(m - h * v))) / (2 * h)
        ad = float(jax.jvp(fn, (m,), (v,))[1])
        assert np.isclose(ad, fd, rtol=1e-6, atol=1e-9), (fn, ad, fd)
        gv = float(jnp.vdot(jax.grad(fn)(m), v))  # reverse mode agrees with forward mode
        assert np.isclose(gv, ad, rtol=1e-9)
    s = loss.profile_scale(m, d, k, background)
    g_fixed = jax.grad(lambda x: loss.value(x, d, k, scale=s, background=background))(m)
    assert np.allclose(np.asarray(jax.grad(value)(m)), np.asarray(g_fixed), rtol=1e-7, atol=1e-9)
    assert float(loss.newton_scale(m, d, k, background, 3.0 * s, newton_steps=0)) == float(3.0 * s)
    with pytest.raises(ValueError, match="newton_steps"):
        loss.newton_scale(m, d, k, background, s, newton_steps=-1)


def test_anscombe_and_log_match_numpy():
    model, data, mask = _problem(2)
    mu = 25.0 * model
    r = 2 * (np.sqrt(data + 3 / 8) - np.sqrt(mu + 3 / 8))
    assert np.isclose(float(fitting.anscombe_nll(model, data, mask, scale=25.0)), 0.5 * np.sum(r[mask] ** 2))
    lr = np.log(data + 1.0) - np.log(mu + 1.0)
    n = mask.sum()
    ref = 0.5 * n * np.log(np.sum(lr[mask] ** 2) / n)
    assert np.isclose(float(fitting.log_intensity_nll(model, data, mask, scale=25.0)), ref)
    # profiled scales minimise the loss (brute force in NumPy)
    for kind, fn in (("anscombe", fitting.anscombe_nll), ("log", fitting.log_intensity_nll)):
        if kind == "anscombe":
            f = lambda t: np.sum(
                (2 * (np.sqrt(data + 3 / 8) - np.sqrt(np.exp(t) * model + 3 / 8)))[mask] ** 2
            )
        else:
            f = lambda t: np.sum((np.log(data + 1) - np.log(np.exp(t) * model + 1))[mask] ** 2)
        t_ref = optimize.minimize_scalar(f, bracket=(2.0, 4.0), tol=1e-12).x
        s = fitting.profile_scale(kind, jnp.asarray(model), jnp.asarray(data), jnp.asarray(mask))
        assert np.isclose(float(s), np.exp(t_ref), rtol=1e-5), kind
        assert np.isclose(float(fn(model, data, mask)), float(fn(model, data, mask, scale=np.exp(t_ref))))


def test_masked_pixels_are_ignored_even_nan():
    model, data, mask = _problem(3)
    bad = data.copy()
    bad[~mask] = np.nan
    for fn in (fitting.poisson_nll, fitting.anscombe_nll, fitting.log_intensity_nll):
        a = fn(model, data, mask)
        b = fn(model, bad, mask)
        assert np.isclose(float(a), float(b)) and np.isfinite(float(b))
        g = jax.grad(lambda m: fn(m, bad, mask))(jnp.asarray(model))
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g)[~mask] == 0)


def test_poisson_gradient_matches_analytic():
    model, data, mask = _problem(4)
    g = np.asarray(jax.grad(lambda m: fitting.poisson_nll(m, data, mask, scale=30.0, background=2.0))(model))
    mu = 30.0 * model + 2.0
    assert np.allclose(g, np.where(mask, 30.0 * (1 - data / mu), 0.0), rtol=1e-10)


def test_residual_maps():
    model, data, mask = _problem(5)
    r = np.asarray(fitting.residuals("poisson", model, data, mask, scale=30.0, background=2.0))
    mu = 30.0 * model + 2.0
    dev = mu - data + np.where(data > 0, data * np.log(np.maximum(data, 1e-300) / mu), 0)
    assert np.all(np.isnan(r[~mask]))
    assert np.allclose(r[mask], (np.sign(data - mu) * np.sqrt(2 * dev))[mask])


def test_loss_input_errors():
    model, data, mask = _problem(6)
    with pytest.raises(ValueError, match="model shape"):
        fitting.poisson_nll(model[:-1], data, mask)
    with pytest.raises(ValueError, match="mask shape"):
        fitting.poisson_nll(model, data, mask[:, :-1])
    with pytest.raises(TypeError, match="boolean"):
        fitting.poisson_nll(model, data, mask.astype(int))
    with pytest.raises(ValueError, match="NaN"):
        fitting.check_data(np.where(mask, np.nan, data), mask)
    with pytest.raises(ValueError, match="negative"):
        fitting.check_data(-data, mask)
    with pytest.raises(ValueError, match="excludes every pixel"):
        fitting.check_data(data, np.zeros_like(mask))
    with pytest.raises(ValueError, match="image shape"):
        fitting.check_data(data, None, (3, 3))
    with pytest.raises(ValueError, match="unknown loss"):
        fitting.profile_scale("gauss", jnp.asarray(model), jnp.asarray(data), jnp.asarray(mask))


# --- losses as classes (fitting.AbstractLoss): NumPy references written here, not the old functions' output ---


def _np_log_residual(mu, data, floor):
    return np.log(data + floor) - np.log(mu + floor)


def test_loss_classes_match_numpy_values():
    model, data, mask = _problem(7)
    mu = 20.0 * model + 1.5
    pois = mu - data + np.where(data > 0, data * np.log(np.maximum(data, 1e-300) / mu), 0.0)
    ans = 0.5 * (2 * (np.sqrt(data + 3 / 8) - np.sqrt(mu + 3 / 8))) ** 2
    lr = _np_log_residual(mu, data, 2.5)
    n = mask.sum()
    refs = {
        fitting.Poisson(): np.sum(pois[mask]),
        fitting.Anscombe(): np.sum(ans[mask]),
        fitting.LogIntensity(floor=2.5): 0.5 * n * np.log(np.sum(lr[mask] ** 2) / n),
    }
    for loss, ref in refs.items():
        kw = dict(scale=20.0, background=1.5)
        assert np.isclose(float(loss.value(model, data, mask, **kw)), ref, rtol=1e-12), loss
        assert np.isclose(float(loss(model, data, mask, **kw)), ref, rtol=1e-12), loss  # __call__ = value
    # per-pixel terms (LogIntensity: 0.5 r^2, what its scale profiling minimises)
    mu_j, d_j = jnp.asarray(mu), jnp.asarray(data)
    assert np.allclose(np.asarray(fitting.Poisson().terms(mu_j, d_j)), pois, rtol=1e-12)
    assert np.allclose(np.asarray(fitting.Anscombe().terms(mu_j, d_j)), ans, rtol=1e-12)
    assert np.allclose(np.asarray(fitting.LogIntensity(2.5).terms(mu_j, d_j)), 0.5 * lr**2, rtol=1e-12)
    # the wrappers are the classes
    assert float(fitting.poisson_nll(model, data, mask, **kw)) == float(
        fitting.Poisson()(model, data, mask, **kw)
    )
    assert np.isclose(
        float(fitting.log_intensity_nll(model, data, mask, scale=20.0, background=1.5, floor=2.5)),
        refs[fitting.LogIntensity(floor=2.5)],
        rtol=1e-12,
    )


def test_fisher_weights_and_residuals_match_numpy():
    model, data, mask = _problem(8)
    mu = 25.0 * model + 1.0
    m = jnp.asarray(mask)
    bad = np.where(mask, data, np.nan)  # masked data may hold NaN: weights stay finite, 0 there
    w_p = np.asarray(fitting.Poisson().fisher_weight(jnp.asarray(mu), jnp.asarray(bad), m))
    w_a = np.asarray(fitting.Anscombe().fisher_weight(jnp.asarray(mu), jnp.asarray(bad), m))
    w_l = np.asarray(fitting.LogIntensity(3.0).fisher_weight(jnp.asarray(mu), jnp.asarray(bad), m))
    lr = _np_log_residual(mu, data, 3.0)
    var = np.mean(lr[mask] ** 2)
    for w, ref in ((w_p, 1 / mu), (w_a, 1 / (mu + 3 / 8)), (w_l, 1 / ((mu + 3.0) ** 2 * var))):
        assert np.all(w[~mask] == 0) and np.allclose(w[mask], ref[mask], rtol=1e-12)
    kw = dict(scale=25.0, background=1.0)
    r_a = np.asarray(fitting.residuals(fitting.Anscombe(), model, data, mask, **kw))
    assert np.all(np.isnan(r_a[~mask]))
    assert np.allclose(r_a[mask], (2 * (np.sqrt(data + 3 / 8) - np.sqrt(mu + 3 / 8)))[mask])
    r_l = np.asarray(fitting.LogIntensity(3.0).residuals(model, data, mask, **kw))
    assert np.allclose(r_l[mask], lr[mask] / np.sqrt(var))
    # name + floor (old style) and instance give the same map
    r_l2 = np.asarray(fitting.residuals("log", model, data, mask, floor=3.0, **kw))
    assert np.array_equal(r_l, r_l2, equal_nan=True)


def test_wrappers_accept_names_and_instances():
    model, data, mask = _problem(9)
    mj, dj, kj = jnp.asarray(model), jnp.asarray(data), jnp.asarray(mask)
    s_closed = data[mask].sum() / model[mask].sum()
    assert np.isclose(float(fitting.profile_scale(fitting.Poisson(), mj, dj, kj)), s_closed, rtol=1e-12)
    assert np.isclose(float(fitting.Poisson().initial_scale(mj, dj, kj)), s_closed, rtol=1e-12)
    # LogIntensity's floor travels with the instance: brute-force NumPy minimum with floor 3
    f = lambda t: np.sum((np.log(data + 3.0) - np.log(np.exp(t) * model + 3.0))[mask] ** 2)
    t_ref = optimize.minimize_scalar(f, bracket=(2.0, 4.0), tol=1e-12).x
    s_inst = float(fitting.profile_scale(fitting.LogIntensity(3.0), mj, dj, kj))
    s_name = float(fitting.profile_scale("log", mj, dj, kj, floor=3.0))
    assert np.isclose(s_inst, np.exp(t_ref), rtol=1e-5) and s_inst == s_name
    assert fitting.as_loss("anscombe") == fitting.Anscombe()
    assert fitting.as_loss(fitting.LogIntensity) == fitting.LogIntensity(1.0)
    assert fitting.as_loss("log", floor=4.0) == fitting.LogIntensity(floor=4.0)
    inst = fitting.LogIntensity(2.0)
    assert fitting.as_loss(inst) is inst
    assert set(fitting.LOSSES) == {"poisson", "anscombe", "log"}
    assert all(cls.name == name for name, cls in fitting.LOSSES.items())
    assert (
        fitting.Poisson.nonnegative and fitting.Anscombe.nonnegative and not fitting.LogIntensity.nonnegative
    )


def test_bad_loss_errors_name_the_argument():
    with pytest.raises(
        ValueError, match=r"unknown loss 'l2': loss must be one of \('poisson', 'anscombe', 'log'\)"
    ):
        fitting.as_loss("l2")
    with pytest.raises(TypeError, match="loss must be a name"):
        fitting.as_loss(fitting.poisson_nll)
    with pytest.raises(ValueError, match="does not take options"):
        fitting.as_loss("poisson", floor=2.0)
    with pytest.raises(ValueError, match="already an instance"):
        fitting.as_loss(fitting.Poisson(), floor=2.0)
    with pytest.raises(ValueError, match="floor must be a positive"):
        fitting.LogIntensity(floor=0.0)
    with pytest.raises(TypeError, match="abstract"):
        fitting.AbstractLoss()
    exp = ds.Experiment(1.0, ds.QGrid(n=8, theta_max_deg=20.0))
    data = np.ones(exp.shape)
    with pytest.raises(ValueError, match="unknown loss 'gauss'.*poisson"):
        fitting.fit(data, exp, ds.Sphere(3.0), loss="gauss")
    with pytest.raises(ValueError, match="floor"):  # floor belongs to LogIntensity
        fitting.fit(data, exp, ds.Sphere(3.0), loss="poisson", floor=2.0)
    with pytest.raises(ValueError, match="unknown loss 'gauss'"):
        fitting.SphereBatchFitter(exp, loss="gauss")


def test_batch_config_loss_is_validated(tmp_path):
    from diffscat.io import ConfigError
    from fitting._cli_batch import load_batch_config

    cfg = tmp_path / "b.toml"
    cfg.write_text(
        '[data]\nlength_unit = "nm"\n[model]\nradius_min = 2.0\nradius_max = 4.0\n[fit]\nloss = "l2"\n'
    )
    with pytest.raises(ConfigError, match=r"fit.loss = 'l2'.*poisson"):
        load_batch_config(str(cfg))


class Gaussian(fitting.AbstractLoss):
    """A new loss in one class: Gaussian noise of known standard deviation `sigma` (counts) on every pixel.

    NLL 0.5 sum ((d - mu) / sigma)^2; maximum-likelihood scale in closed form (weighted least squares)."""

    sigma: float = 1.0
    name: ClassVar[str] = "gaussian"
    nonnegative: ClassVar[bool] = False  # background-subtracted data may be negative

    def terms(self, mu, data):
        return 0.5 * ((data - mu) / self.sigma) ** 2

    def value(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        return jnp.sum(jnp.where(m, self.terms(mu, d), 0.0))

    def initial_scale(self, model, data, mask, background=0.0):
        m = jnp.where(mask, model, 0.0)
        return jnp.sum(m * (jnp.where(mask, data, 0.0) - background)) / jnp.maximum(jnp.sum(m * m), 1e-30)

    def profile_scale(self, model, data, mask, background=0.0, *, newton_steps=6):
        return self.initial_scale(model, data, mask, background)  # exact

    def fisher_weight(self, mu, data, mask):
        return mask.astype(mu.dtype) / self.sigma**2

    def residuals(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        return jnp.where(m, (d - mu) / self.sigma, jnp.nan)


def test_user_defined_loss_runs_through_fit():
    """A loss written here (no other file touched) drives `fitting.fit`: scale, value, Fisher, residuals."""
    exp = ds.Experiment(1.0, ds.QGrid(n=16, theta_max_deg=30.0))
    truth = ds.Sphere(3.0, delta=-0.01, beta=0.001)
    grid = ds.VoxelGrid.around(4.0, 0.5, margin=2)  # coarse: a fast test (data made on the same grid)
    sig = np.asarray(fitting.expected_signal(truth, exp, grid))
    clean = sig * (200.0 / sig.max())
    sigma = 2.0
    data = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    assert np.any(data < 0)  # Poisson would refuse these data; the Gaussian says they are fine
    with pytest.raises(ValueError, match="negative"):
        fitting.fit(data, exp, ds.Sphere(3.2, delta=-0.01, beta=0.001), grid=grid)
    loss = Gaussian(sigma=sigma)
    res = fitting.fit(data, exp, ds.Sphere(3.2, delta=-0.01, beta=0.001), loss=loss, grid=grid)
    r = float(res.model.radius)
    assert abs(r - 3.0) < 0.03, r
    assert np.isclose(res.scale * float(np.max(sig)), 200.0, rtol=0.02)
    assert res.loss_kind == "gaussian" and res.loss_function == loss
    # at the truth the NLL per pixel is about 1/2 (chi-square / 2); residuals have about unit variance
    assert 0.3 < res.loss / res.n_used < 0.7
    resid = res.residuals()
    assert np.isfinite(resid).all() and 0.7 < np.std(resid) < 1.3
    # Fisher sigma of the radius from Gaussian weights 1 / sigma^2: positive and small
    s_r = float(res.sigmas["radius"])
    assert 0 < s_r < 0.03 and abs(r - 3.0) < 4 * s_r, (r, s_r)
    assert res.summary()["loss_function"] == "Gaussian(sigma=2.0)"


@pytest.mark.slow
def test_batch_fitters_use_the_configured_loss(monkeypatch):
    """EllipsoidBatchFitter with loss="anscombe" takes its scale and Fisher weights from Anscombe (it used
    Poisson's whatever the loss); its SphereBatchFitter initialisation too. Spies on the loss classes."""
    calls = []
    for cls in (fitting.Poisson, fitting.Anscombe):
        for meth in ("profile_scale", "fisher_weight", "value"):
            orig = getattr(cls, meth)

            def spy(self, *a, _orig=orig, _key=(cls.name, meth), **k):
                calls.append(_key)
                return _orig(self, *a, **k)

            monkeypatch.setattr(cls, meth, spy)
    exp = ds.Experiment(1.0, ds.QGrid(n=12, theta_max_deg=25.0))
    truth = ds.Ellipsoid((2.6, 3.0, 3.3), delta=-0.01, beta=0.001)
    sig = np.asarray(fitting.expected_signal(truth, exp, ds.VoxelGrid.around(4.0, 0.5)))
    data = np.random.default_rng(1).poisson(sig * (500.0 / sig.max()))[None].astype(float)
    mask = np.ones(data.shape, bool)
    kw = dict(radius_range=(2.0, 4.0), n_candidates=8, pitch=0.6, delta=-0.01, beta=0.001)
    fitter = fitting.EllipsoidBatchFitter(exp, loss="anscombe", n_starts=1, n_steps=10, **kw)
    assert fitter.loss == fitting.Anscombe() and fitter.sphere.loss == fitting.Anscombe()
    out = fitter(data, mask)
    assert ("anscombe", "profile_scale") in calls and ("anscombe", "fisher_weight") in calls
    assert ("anscombe", "value") in calls
    assert not [c for c in calls if c[0] == "poisson"], calls
    assert np.all(np.isfinite(np.asarray(out["scale"]))) and np.all(np.asarray(out["semi_axes_sigma"]) > 0)


def test_docs_new_loss_example_matches_test_loss():
    """The worked example of docs/fitting.md ("Writing a new loss") runs and is the loss fitted above."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "fitting.md").read_text()
    section = text[text.index("### Writing a new loss") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns = {}
    exec(compile(code, "docs/fitting.md", "exec"), ns)
    doc_loss, test_loss = ns["Gaussian"](sigma=2.0), Gaussian(sigma=2.0)
    model, data, mask = _problem(10)
    data = data - 40.0  # negative values are fine for a Gaussian
    for meth in ("value", "residuals"):
        a = np.asarray(getattr(doc_loss, meth)(model, data, mask))
        b = np.asarray(getattr(test_loss, meth)(model, data, mask))
        assert np.array_equal(a, b, equal_nan=True), meth
    # NumPy reference: weighted least-squares scale, then 0.5 chi-square
    s = np.sum(model[mask] * data[mask]) / np.sum(model[mask] ** 2)
    ref = 0.5 * np.sum(((data - s * model)[mask] / 2.0) ** 2)
    assert np.isclose(float(doc_loss(model, data, mask)), ref, rtol=1e-12)
    assert doc_loss.name == "gaussian" and not doc_loss.nonnegative
