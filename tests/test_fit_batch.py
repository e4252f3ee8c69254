"""`fitting.fit_batch`: several patterns in one vmapped optimisation give what `fit` gives pattern by pattern."""

import numpy as np
import pytest

import diffscat as ds
import fitting
from fitting import _fit


@pytest.fixture(scope="module")
def exp():
    return ds.Experiment(1.0, ds.QGrid(n=24, theta_max_deg=30.0))


def _counts(shape, exp, photons, seed):
    mean = np.asarray(fitting.expected_signal(shape, exp, ds.VoxelGrid.around(5.0, 0.25)))
    return np.random.default_rng(seed).poisson(mean / mean.sum() * photons).astype(float)


@pytest.fixture(scope="module")
def stack(exp):
    radii = (2.6, 3.0, 3.3)
    data = np.stack([_counts(ds.Sphere(r, -0.01, 0.001), exp, 2e5, i) for i, r in enumerate(radii)])
    mask = np.asarray(exp.theta) > np.radians(3.0)
    return radii, data, mask


def test_batch_equals_pattern_by_pattern(exp, stack):
    radii, data, mask = stack
    grid = fitting.ladder_grid(1.3 * 3.5, 0.4)
    kw = dict(max_steps=40, pitch=0.4, grid=grid, free=("radius",))
    starts = [[ds.Sphere(1.04 * r, -0.01, 0.001), ds.Sphere(0.97 * r, -0.01, 0.001)] for r in radii]
    batch = fitting.fit_batch(data, exp, starts, mask, **kw)
    assert len(batch) == 3
    for i, r in enumerate(radii):
        one = fitting.fit(data[i], exp, starts[i], mask, **kw)
        b = batch[i]
        # the same optimisation, only run inside a bigger vmapped batch: same optimum and uncertainty
        assert float(b.model.radius) == pytest.approx(float(one.model.radius), rel=1e-4)
        assert b.loss == pytest.approx(one.loss, rel=1e-4, abs=1e-3)
        assert b.sigmas["radius"] == pytest.approx(one.sigmas["radius"], rel=1e-2)
        assert b.converged and b.n_starts == 2 and b.start_losses.shape == (2,)
        assert np.array_equal(b.data, one.data) and np.array_equal(b.mask, one.mask)
        # and the truth (a fit on its own pattern, not a neighbour's)
        assert abs(float(b.model.radius) - r) < 5 * float(b.sigmas["radius"]) + 0.01 * r


def test_second_batch_compiles_nothing_and_one_start_each(exp, stack):
    radii, data, mask = stack
    grid = fitting.ladder_grid(1.3 * 3.5, 0.4)
    kw = dict(max_steps=3, pitch=0.4, grid=grid, free=("radius",), uncertainties=False)
    fitting.fit_batch(data, exp, [ds.Sphere(r, -0.01, 0.001) for r in radii], mask, **kw)
    sizes = {n: getattr(_fit, n)._cached._cache_size() for n in ("_step", "_init_state", "_finalize")}
    res = fitting.fit_batch(
        data[::-1] * 2, exp, [ds.Sphere(1.02 * r, -0.01, 0.001) for r in radii], mask, **kw
    )
    assert {n: getattr(_fit, n)._cached._cache_size() for n in sizes} == sizes
    assert [r.n_starts for r in res] == [1, 1, 1]


def test_bad_arguments(exp, stack):
    radii, data, mask = stack
    s = ds.Sphere(3.0, -0.01, 0.001)
    with pytest.raises(ValueError, match="data must have shape"):
        fitting.fit_batch(data[0], exp, s)
    with pytest.raises(ValueError, match="model must be"):
        fitting.fit_batch(data, exp, [s, s])
    with pytest.raises(ValueError, match="same .*number of starts"):
        fitting.fit_batch(data, exp, [[s], [s, s], [s]])
    with pytest.raises(ValueError, match="mask"):
        fitting.fit_batch(data, exp, s, mask[:5])
    with pytest.raises(ValueError, match="mask must be"):
        fitting.fit_batch(data, exp, s, np.stack([mask, mask]))
    with pytest.raises(ValueError, match="data"):
        bad = data.copy()
        bad[1] = 0.0
        fitting.fit_batch(bad, exp, s, mask)


@pytest.mark.slow  # two subprocesses compile the fit (~30 s idle, 90 s under load)
def test_sharded_over_devices_equals_one_device(tmp_path):
    """With 4 (fake CPU) devices the starts are sharded; the fitted radii equal the one-device run's."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, jax, numpy as np, diffscat as ds, fitting\n"
        "exp = ds.Experiment(1.0, ds.QGrid(n=16, theta_max_deg=30.0))\n"
        "rng = np.random.default_rng(0)\n"
        "sig = [np.asarray(fitting.expected_signal(ds.Sphere(r, 0.0, 0.001), exp, ds.VoxelGrid.around(4.0, 0.4)))"
        " for r in (2.5, 3.0)]\n"
        "data = np.stack([rng.poisson(2e4 * s / s.sum()).astype(float) for s in sig])\n"
        "res = fitting.fit_batch(data, exp, [[ds.Sphere(f * r, 0.0, 0.001) for f in (1.03, 0.98)] for r in (2.5, 3.0)],"
        " free=('radius',), pitch=0.4, max_steps=15, uncertainties=False)\n"
        "print(json.dumps([jax.local_device_count()] + [float(r.model.radius) for r in res]))\n"
    )
    out = []
    for n in (1, 4):
        env = dict(
            os.environ,
            XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}",
            JAX_PLATFORMS="cpu",
        )
        p = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    assert out[0][0] == 1 and out[1][0] == 4
    np.testing.assert_allclose(out[1][1:], out[0][1:], rtol=1e-5)
