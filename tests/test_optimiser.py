"""The fit's optimiser loop: loss evaluations per L-BFGS step, the line search's slack near an optimum, and
dropping finished starts from the vmapped batch (CPU)."""

import jax
import numpy as np
import optax
import pytest
from references import mie_dcs

import diffscat as ds
import fitting
from fitting import _fit

LAM, R_TRUE = 1.0, 2.0


@pytest.fixture(scope="module")
def problem():
    """A Mie pattern (independent of the MSFT) on a small QGrid."""
    exp = ds.Experiment(LAM, ds.QGrid(n=16, theta_max_deg=30.0))
    th = np.asarray(exp.theta)
    mean = mie_dcs(R_TRUE, -0.01, 0.001, LAM, th, polarisation="unpolarised") * np.asarray(exp.solid_angle)
    data = np.random.default_rng(0).poisson(mean / mean.sum() * 1e6).astype(float)
    mask = th > np.radians(2.5)
    return exp, data, mask


def _counting(monkeypatch):
    """Count evaluations of the loss inside compiled steps (a host callback in `_nll`)."""
    count = [0]
    nll = _fit._nll

    def counted(*args, **kwargs):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return nll(*args, **kwargs)

    monkeypatch.setattr(_fit, "_nll", counted)
    return count


def test_lbfgs_step_evaluates_the_loss_once_per_line_search_trial(problem, monkeypatch):
    exp, data, mask = problem
    count = _counting(monkeypatch)
    starts = [ds.Sphere(r, -0.01, 0.001) for r in (1.8, 2.2)]
    kw = dict(polarisation="unpolarised", free=("radius",), uncertainties=False)
    grid = fitting.ladder_grid(1.3 * 2.2, ds.default_pitch(LAM, 30.0))
    cfg_opt = _fit.make_optimizer("lbfgs", None, 200)
    prob, u, d, m, norm, st = _prepared(data, mask, exp, starts, grid, kw)
    state = _fit._init_state(u, cfg_opt)
    for k in range(4):
        count[0] = 0
        u, state, val, _ = _fit._step(u, state, prob, d, m, norm, st, cfg_opt, True)
        jax.block_until_ready(val)
        jax.effects_barrier()
        trials = int(np.max(np.asarray(optax.tree_utils.tree_get(state, "num_linesearch_steps"))))
        # the first step computes the value and gradient at the start once, later steps reuse the line
        # search's; optax's per-start `value_and_grad_from_state` under vmap evaluated it every step
        assert count[0] == trials + (k == 0), (k, count[0], trials)


def _prepared(data, mask, exp, starts, grid, kw):
    """The batched arguments of `_fit._step` for `starts` on one pattern (as `_fit._fit_patterns` builds them)."""
    import jax.numpy as jnp

    from fitting._params import Parametrisation, stack_parametrisations

    level = float(np.sum(data[mask])) / int(mask.sum())
    ps = [Parametrisation.create(s, exp, kw["free"], 0.0, level) for s in starts]
    prob = stack_parametrisations(ps)
    u = jax.tree.map(lambda *xs: jnp.stack(xs), *[p.initial_u() for p in ps])
    n, dt = len(starts), starts[0].dtype
    d = jnp.stack([jnp.asarray(data, dt)] * n)
    m = jnp.stack([jnp.asarray(mask)] * n)
    norm = jnp.full(n, float(mask.sum()), dt)
    st = _fit._Static(fitting.as_loss("poisson"), "msft", True, kw["polarisation"], grid, None)
    return prob, u, d, m, norm, st


def test_line_search_does_not_halve_float32_noise(monkeypatch):
    """Near an optimum the float32 loss is noise: the line search accepts a step that does not raise it by more
    than `LINESEARCH_RTOL` instead of halving it up to 12 times per step (each a full value_and_grad). An
    optimiser-mechanics test, so the pattern is the model's own (an ellipsoid, 6 parameters); with no slack
    this fit took 110 loss evaluations for 19 steps, with it 50."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # the noise is float32's (the tests otherwise run in float64)
    try:
        exp = ds.Experiment(LAM, ds.QGrid(n=24, theta_max_deg=30.0))
        rot = np.asarray(ds.rotation_from_euler(np.array([0.3, 0.7, 0.2])))
        truth = ds.Ellipsoid(np.array([3.4, 2.9, 2.5]), -0.01, 0.001, rotation=rot)
        mu = np.asarray(fitting.expected_signal(truth, exp, ds.VoxelGrid.around(4.0, 1 / 6)))
        data = np.random.default_rng(0).poisson(mu / mu.sum() * 1e6).astype(float)
        count = _counting(monkeypatch)  # before the fit compiles its step
        start = ds.Ellipsoid(np.array([3.3, 3.0, 2.6]), -0.01, 0.001, rotation=rot)
        assert start.dtype == np.float32
        res = fitting.fit(data, exp, start, None, uncertainties=False)
        jax.effects_barrier()
    finally:
        jax.config.update("jax_enable_x64", old)
    assert res.converged
    assert count[0] <= 4 * res.n_steps, (count[0], res.n_steps)


def test_finished_starts_leave_the_batch_with_the_same_result(problem, monkeypatch):
    exp, data, mask = problem
    starts = [ds.Sphere(r, -0.01, 0.001) for r in (2.0, 1.7, 2.4, 2.03)]
    kw = dict(polarisation="unpolarised", free=("radius",), alternatives_tol=np.inf)
    sizes = []
    step = _fit._step

    def recording(u, *args, **kwargs):
        sizes.append(int(jax.tree.leaves(u)[0].shape[0]))
        return step(u, *args, **kwargs)

    monkeypatch.setattr(_fit, "_step", recording)
    monkeypatch.setattr(_fit, "_compacting", lambda: True)
    monkeypatch.setattr(_fit, "COMPACT_MIN_STEP_S", 0.0)  # this tiny fit's steps take milliseconds
    monkeypatch.setattr(_fit, "CPU_START_BATCH", None)  # the whole batch in one `_optimise` (its compaction)
    a = fitting.fit(data, exp, starts, mask, **kw)
    compacted = list(sizes)
    sizes.clear()
    monkeypatch.setattr(_fit, "_compacting", lambda: False)
    b = fitting.fit(data, exp, starts, mask, **kw)
    assert set(sizes) == {4}
    assert compacted[0] == 4 and min(compacted) < 4  # some starts finished first and left the batch
    assert sorted(compacted, reverse=True) == compacted
    np.testing.assert_allclose(a.start_losses, b.start_losses, rtol=2e-6)
    np.testing.assert_allclose(float(a.model.radius), float(b.model.radius), rtol=1e-5)
    np.testing.assert_allclose(a.sigmas["radius"], b.sigmas["radius"], rtol=1e-3)
    # (the step counts may differ by float round-off: a smaller batch is another compiled program)
    assert a.converged and b.converged
    assert len(a.loss_history) == a.n_steps


def test_lbfgs_memory_grows_with_the_free_parameters(problem, monkeypatch):
    """optax's default memory of 10 up to 10 free parameters, n + 5 beyond (the harmonic body: its slow tail
    at memory 10, `fitting._fit.LBFGS_MEMORY_EXTRA`); `fit` passes the rule's value for its own parameters."""
    assert [_fit.lbfgs_memory(n) for n in (1, 6, 10, 11, 25)] == [10, 10, 10, 16, 30]
    with pytest.raises(ValueError, match="n_free"):
        _fit.lbfgs_memory(-1)
    for bad in (2.5, True):
        with pytest.raises((ValueError, TypeError), match="n_free"):
            _fit.lbfgs_memory(bad)
    with pytest.raises(ValueError, match="memory_size"):
        _fit.make_optimizer("lbfgs", None, 200, 0)
    exp, data, mask = problem
    seen = []
    make = _fit.make_optimizer

    def recording(name, lr, max_steps, memory_size=10):
        seen.append(memory_size)
        return make(name, lr, max_steps, memory_size)

    monkeypatch.setattr(_fit, "make_optimizer", recording)
    c = np.zeros(16)  # lmax 3: 16 coefficients, all free
    c[0] = R_TRUE * np.sqrt(4 * np.pi)
    start = ds.SphericalHarmonics(c, -0.01, 0.001)
    kw = dict(polarisation="unpolarised", uncertainties=False, max_steps=2, pitch=0.5)
    fitting.fit(data, exp, start, mask, free=("coefficients",), **kw)
    fitting.fit(data, exp, ds.Sphere(R_TRUE, -0.01, 0.001), mask, free=("radius",), **kw)
    assert seen == [21, 10]
