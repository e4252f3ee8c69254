"""Compile once per geometry: fits of another pattern of similar size, and the stages of the harmonic
ladder, reuse the compiled step (counted by the jit caches of `fitting._fit`'s compiled functions)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds
import fitting
from fitting import _fit


def _cache_sizes():
    """Number of compiled variants held by each jitted function of the fit driver."""
    return {name: getattr(_fit, name)._cached._cache_size() for name in ("_step", "_init_state", "_finalize")}


def _counts(shape, exp, photons, seed):
    mean = np.asarray(fitting.expected_signal(shape, exp, ds.VoxelGrid.around(5.0, 0.25)))
    return np.random.default_rng(seed).poisson(mean / mean.sum() * photons).astype(float)


@pytest.fixture(scope="module")
def exp():
    return ds.Experiment(1.0, ds.QGrid(n=24, theta_max_deg=30.0))


def test_ladder_grid_rounds_up_to_shared_rungs():
    p = 0.25
    g1, g2 = fitting.ladder_grid(3.0, p), fitting.ladder_grid(3.05, p)
    assert g1 == g2  # 2 % apart: one rung
    # the rung holds the requested ball and is at most one ladder step (plus a voxel) larger
    for r in (0.7, 3.0, 3.05, 11.0):
        g = fitting.ladder_grid(r, p)
        half = 0.5 * g.shape[0] * p - 2 * p
        assert r <= half + 1e-9 and half <= r * fitting.GRID_LADDER + p
    with pytest.raises(ValueError, match="radius"):
        fitting.ladder_grid(0.0, p)


def test_second_pattern_of_similar_size_compiles_nothing(exp):
    mask = np.asarray(exp.theta) > np.radians(3.0)
    d1 = _counts(ds.Sphere(3.0, -0.01, 0.001), exp, 1e5, 0)
    d2 = _counts(ds.Sphere(3.05, -0.01, 0.001), exp, 2e5, 1)
    kw = dict(max_steps=3, uncertainties=False, pitch=0.4)
    starts = lambda r: [ds.Sphere(f * r, -0.01, 0.001) for f in (1.08, 1.1, 1.12)]
    r1 = fitting.fit(d1, exp, starts(3.0), mask, **kw)
    before = _cache_sizes()
    r2 = fitting.fit(d2, exp, starts(3.05), mask, **kw)
    assert r2.grid == r1.grid
    assert _cache_sizes() == before
    assert r2.n_starts == 3 and r2.start_losses.shape == (3,)  # padded to 4 internally, 3 reported


def test_kinds_do_not_depend_on_the_sign_of_initial_values(exp):
    a = ds.SphericalHarmonics([10.0, 0.1, 0.2, 0.3])
    b = ds.SphericalHarmonics([10.0, -0.1, 0.2, -0.3])
    pa = fitting.Parametrisation.create(a, exp, ("coefficients",))
    pb = fitting.Parametrisation.create(b, exp, ("coefficients",))
    assert pa.kinds == pb.kinds == ("real",)


def test_active_mask_freezes_entries(exp):
    sh = ds.SphericalHarmonics([10.0, 0.1, 0.2, 0.3])
    act = np.array([True, False, True, False])
    p = fitting.Parametrisation.create(sh, exp, ("coefficients",), active={"coefficients": act})
    u = {"coefficients": jnp.full(4, 2.0, jnp.float32)}
    c = np.asarray(p.physical(u)["coefficients"])
    np.testing.assert_allclose(c[~act], [0.1, 0.3])  # frozen at the initial value
    assert np.all(np.abs(c[act] - np.array([10.0, 0.2])) > 0.1)
    # Laplace sigmas: the frozen entries' zero rows are dropped (sigma 0), the rest inverted
    H = np.diag([4.0, 0.0, 16.0, 0.0, 1.0])  # 4 coefficients + the log scale (nuisance)
    u0 = p.initial_u()
    sig, ok = fitting.laplace_sigmas(H, u0, p, nuisance=1, active=p.active)
    unit = np.asarray(p.unit["coefficients"])
    np.testing.assert_allclose(sig["coefficients"], [unit[0] / 2, 0.0, unit[2] / 4, 0.0], rtol=1e-5)
    assert ok
    with pytest.raises(ValueError, match="active"):
        fitting.Parametrisation.create(sh, exp, ("coefficients",), active={"coefficients": act[:3]})
    with pytest.raises(ValueError, match="active"):
        fitting.Parametrisation.create(sh, exp, ("coefficients",), active={"radius": act})


@pytest.mark.slow  # ~15 s idle (an lmax-3 MSFT step compiles once)
def test_harmonic_ladder_compiles_its_step_once(exp):
    truth = ds.Ellipsoid([3.3, 3.0, 2.6], -0.01, 0.001, rotation=fitting.random_rotations(1, 2)[0])
    data = _counts(truth, exp, 3e5, 2)
    mask = np.asarray(exp.theta) > np.radians(3.0)
    start = ds.Ellipsoid([3.2, 3.0, 2.7], -0.01, 0.001, rotation=truth.rotation)
    before = _cache_sizes()
    # stage_coarsening=1: every stage at the fit's pitch (by default, on a pattern without a crop, the
    # intermediate stages share a coarser grid and the last refines at the fit's: two programs)
    res, stages = fitting.harmonics_ladder(
        data, exp, start, 3, mask, degrees=(1, 2, 3), max_steps=3, pitch=0.4, uncertainties=False,
        stage_coarsening=1.0,
    )  # fmt: skip
    after = _cache_sizes()
    assert after["_step"] - before["_step"] <= 1
    assert after["_init_state"] - before["_init_state"] <= 1
    assert after["_finalize"] - before["_finalize"] <= 1
    # max_steps 3 leaves a misfit, so the escape's all-degrees route ("compact_all", from `start` itself: it
    # is not stretched along the beam) runs too (one more stage): it compiles nothing either (the counts
    # above include it)
    assert res.escapes is not None and [r for r, _, _ in res.escapes] == ["ladder", "compact_all"]
    assert len(stages) == 4 and all(s.model.coefficients.shape == (16,) for s in stages)
    assert all(s.grid == stages[0].grid for s in stages)
    # stage l = 1 freed degrees <= 1 only: the l = 2, 3 coefficients are the start's projection's
    c0 = np.asarray(fitting.harmonics_from_ellipsoid(start, 3).coefficients)
    np.testing.assert_allclose(np.asarray(stages[0].model.coefficients)[4:], c0[4:], rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(stages[0].model.coefficients)[:4], c0[:4])


def test_harmonics_twins_give_the_inverted_and_mirrored_bodies():
    c = np.random.default_rng(0).normal(size=9) * 0.5
    c[0] = 10.0
    sh = ds.SphericalHarmonics(c, rotation=fitting.random_rotations(1, 3)[0])
    same, inv, mir, both = fitting.harmonics_twins(sh)
    assert same is sh
    pts = np.random.default_rng(1).normal(size=(500, 3)) * 2.5
    occ = lambda s, p: np.asarray(s.occupancy(p)) > 0.5
    M = np.diag([1.0, 1.0, -1.0])
    assert np.mean(occ(inv, pts) == occ(sh, -pts)) > 0.99
    assert np.mean(occ(mir, pts) == occ(sh, pts @ M)) > 0.99
    assert np.mean(occ(both, pts) == occ(sh, -(pts @ M))) > 0.99
    assert np.mean(occ(mir, pts) == occ(sh, pts)) < 0.99  # the twin is another body


def test_padded_pattern_batches_share_programs_and_results(exp, monkeypatch):
    """On an accelerator (`_fit.PAD_PATTERNS`, forced here) a batch of N patterns runs padded to a power of two,
    so the merged fits of `lockstep_map` (whose sizes change as patterns finish) reuse one program per power;
    the padding does not change the real patterns' results."""
    mask = np.asarray(exp.theta) > np.radians(3.0)
    radii = (2.9, 3.0, 3.1, 3.2)
    data = np.stack([_counts(ds.Sphere(r, -0.01, 0.001), exp, 1e5, i) for i, r in enumerate(radii)])
    starts = [ds.Sphere(1.08 * r, -0.01, 0.001) for r in radii]
    kw = dict(max_steps=3, uncertainties=False, grid=ds.VoxelGrid.around(4.5, 0.4))
    monkeypatch.setattr(_fit, "PAD_PATTERNS", False)
    plain = fitting.fit_batch(data[:3], exp, starts[:3], mask, **kw)
    monkeypatch.setattr(_fit, "PAD_PATTERNS", True)
    three = fitting.fit_batch(data[:3], exp, starts[:3], mask, **kw)
    assert len(three) == 3
    for a, b in zip(plain, three, strict=True):
        np.testing.assert_allclose(b.values["radius"], a.values["radius"], rtol=1e-6)
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6)
        assert b.n_steps == a.n_steps
    before = _cache_sizes()
    four = fitting.fit_batch(data, exp, starts, mask, **kw)  # 4 patterns: the padded 3's program
    assert _cache_sizes() == before
    np.testing.assert_allclose(four[1].values["radius"], three[1].values["radius"], rtol=1e-6)


def test_blocked_jacobian_equals_jacfwd():
    """The Fisher Jacobian, computed FISHER_BLOCK tangents at a time (memory), is jacfwd's (blocks that do not
    divide n, and a block larger than n)."""
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(7, 11)))
    f = lambda z: jnp.sin(A @ z) * jnp.exp(0.1 * (A @ z) ** 2)  # noqa: E731
    z0 = jnp.asarray(rng.normal(size=11))
    ref = jax.jacfwd(f)(z0)
    for block in (1, 4, 8, 11, 32):
        np.testing.assert_allclose(_fit._jacobian_blocked(f, z0, block), ref, rtol=1e-6, atol=1e-12)


def test_blocked_jacobian_does_not_keep_the_primal_intermediates():
    """XLA hoists the loop-invariant primal out of the Jacobian's `lax.map` unless told not to, and then keeps
    every intermediate the tangents need alive at once (27 sub-voxel samples x facets of a polyhedron: 754 MiB
    at 64^2, the peak of a polyhedron batch-fit). With the barrier the Jacobian's temporaries are those of about
    one JVP; without it (the same loop) they are several times larger."""
    from jax.flatten_util import ravel_pytree

    exp = ds.Experiment(1.0, ds.QGrid(12, 30.0))
    shape = ds.Octahedron(4.0, delta=0.005, beta=0.002, rotation=fitting.random_rotations(1, 3)[0])
    grid = _fit.ladder_grid(2.5, 0.25)
    arr, static = eqx.partition(shape, eqx.is_inexact_array)
    x0, unravel = ravel_pytree(arr)

    def f(z):
        return fitting.expected_signal(eqx.combine(unravel(z), static), exp, grid).reshape(-1)

    def temp(fn):
        m = jax.jit(fn).lower(x0).compile().memory_analysis()
        if m is None:
            pytest.skip("this backend reports no memory analysis")
        return m.temp_size_in_bytes

    one = temp(lambda z: jax.jvp(f, (z,), (jnp.ones_like(z),))[1])
    hoisted = temp(lambda z: jax.lax.map(lambda e: jax.jvp(f, (z,), (e,))[1], jnp.eye(z.size)))
    ours = temp(lambda z: _fit._jacobian_blocked(f, z))
    assert hoisted > 3 * one  # the effect this guards against is present on this grid
    assert ours < 1.5 * one
