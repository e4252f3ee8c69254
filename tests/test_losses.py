"""Losses against NumPy/SciPy written here: Poisson log-pmf, brute-force profiling, Gaussian likelihoods."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

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
