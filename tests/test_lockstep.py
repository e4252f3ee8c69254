"""`fitting.lockstep_map`: per-pattern drivers run together, their `fit` calls merged into vmapped batches."""

import jax
import numpy as np
import pytest

import diffscat as ds
import fitting

OPT = dict(delta=0.01, beta=0.002)


@pytest.fixture(scope="module")
def exp():
    return ds.Experiment(1.0, ds.QGrid(n=24, theta_max_deg=30.0))


@pytest.fixture(scope="module")
def stack(exp):
    radii = (2.6, 3.0, 3.3)
    data = []
    for i, r in enumerate(radii):
        mean = np.asarray(
            fitting.expected_signal(ds.Sphere(r, 0.01, 0.001), exp, ds.VoxelGrid.around(5.0, 0.25))
        )
        data.append(np.random.default_rng(i).poisson(mean / mean.sum() * 2e5).astype(float))
    mask = np.asarray(exp.theta) > np.radians(3.0)
    return radii, np.stack(data), mask


# the 3.3 sphere's own default grid at pitch 0.4: with max_steps=6 and no uncertainties everywhere but the
# refinement, the tests below reuse each other's compiled steps (each new batch size compiles ~10 s)
GRID = fitting.ladder_grid(1.3 * 3.3, 0.4)


def _sphere_fit(data, exp, mask, **kw):
    # a driver with control flow of its own: a short first fit, then a refinement from its result
    first = fitting.fit(data, exp, [ds.Sphere(f * 2.9, 0.01, 0.001) for f in (0.9, 1.1)], mask,
                        free=("radius",), max_steps=6, uncertainties=False, **kw)  # fmt: skip
    return fitting.fit(data, exp, first.model, mask, free=("radius",), max_steps=30, **kw)


def test_lockstep_gives_the_per_pattern_fits(exp, stack):
    radii, data, mask = stack
    idx = [0, 2]  # (two patterns: the merged refinement reuses the 2-start program of the first stage)
    seq = [_sphere_fit(data[i], exp, mask, grid=GRID) for i in idx]
    stats = {}
    out = fitting.lockstep_map(lambda i: _sphere_fit(data[i], exp, mask, grid=GRID), idx, stats=stats)
    assert stats["calls"] == [2, 2]  # each stage of the two patterns ran as one call
    for a, b, r in zip(seq, out, [radii[i] for i in idx], strict=True):
        assert isinstance(b, fitting.FitResult)
        # the same optimisation inside a bigger vmapped batch: same optimum and uncertainty
        assert float(b.model.radius) == pytest.approx(float(a.model.radius), rel=1e-4)
        assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-3)
        assert b.sigmas["radius"] == pytest.approx(a.sigmas["radius"], rel=1e-2)
        assert b.grid == a.grid and b.n_starts == 1
        assert abs(float(b.model.radius) - r) < 0.02 * r  # its own pattern's answer, not a neighbour's


def test_grids_merged_or_kept_apart(exp, stack):
    radii, data, mask = stack

    def fn(i):  # each pattern's own default grid (ladder rung of its start): 2.6 and 3.3 differ
        return fitting.fit(data[i], exp, ds.Sphere(radii[i], 0.01, 0.001), mask, free=("radius",),
                           max_steps=6, pitch=0.4, uncertainties=False)  # fmt: skip

    own = [fitting.ladder_grid(1.3 * r, 0.4) for r in (radii[0], radii[2])]
    assert own[0] != own[1] and own[1] == GRID
    stats = {}
    out = fitting.lockstep_map(fn, [0, 2], stats=stats)
    assert stats["calls"] == [2] and out[0].grid == out[1].grid
    assert out[0].grid.shape == tuple(max(a, b) for a, b in zip(own[0].shape, own[1].shape, strict=True))
    stats = {}
    out = fitting.lockstep_map(fn, [0, 2], stats=stats, merge_grids=False)
    assert stats["calls"] == [1, 1] and [o.grid for o in out] == own


def test_failures_stay_with_their_item_and_ragged_starts(exp, stack):
    radii, data, mask = stack

    def fn(i):
        if i == 1:
            raise ValueError("bad pattern")
        n = 1 if i == 0 else 2  # different numbers of starts merge too (padded, not live)
        starts = [ds.Sphere(radii[i] * (1 + 0.02 * k), 0.01, 0.001) for k in range(n)]
        d = data[0] * 0 if i == 3 else data[i]  # 3: data refused by fit's checks, before any merged work
        return fitting.fit(
            d, exp, starts, mask, free=("radius",), max_steps=6, grid=GRID, uncertainties=False
        )

    radii = radii + (3.0,)
    stats = {}
    done = []
    out = fitting.lockstep_map(fn, range(4), stats=stats, on_done=lambda i, r: done.append(i))
    assert isinstance(out[1], ValueError) and isinstance(out[3], ValueError) and sorted(done) == [0, 1, 2, 3]
    assert stats["calls"] == [2]
    assert out[0].n_starts == 1 and out[2].n_starts == 2 and out[2].start_losses.shape == (2,)
    assert abs(float(out[2].model.radius) - radii[2]) < 0.02 * radii[2]


def test_argument_errors():
    with pytest.raises(ValueError, match="max_batch"):
        fitting.lockstep_map(lambda i: i, range(2), max_batch=0)
    with pytest.raises(TypeError, match="fn"):
        fitting.lockstep_map(3, range(2))
    assert fitting.lockstep_map(lambda i: i * 2, range(3)) == [0, 2, 4]  # no fit inside: plain map
    assert fitting.lockstep_map(lambda i: i, []) == []


def test_max_batch_splits(exp, stack):
    radii, data, mask = stack
    stats = {}
    fn = lambda i: fitting.fit(  # noqa: E731
        data[i], exp, ds.Sphere(radii[i], 0.01, 0.001), mask, free=("radius",), max_steps=6, pitch=0.4,
        grid=GRID, uncertainties=False,
    )  # fmt: skip
    fitting.lockstep_map(fn, range(3), max_batch=2, stats=stats)
    assert stats["calls"] == [2, 1]


def _two_spheres(tmp_path):
    from batch_data import make_shape_dataset

    from diffscat.io import read_cxi

    exp = make_shape_dataset(
        str(tmp_path / "d.cxi"), [ds.Sphere(3.0, **OPT), ds.Sphere(4.2, **OPT)], photons=2e5
    )
    return exp, np.asarray(read_cxi(str(tmp_path / "d.cxi"), length_unit="nm").data)


def _batch(tmp_path, exp, data, on):
    from fitting._batch import ArraySource, batch_fit, read_results
    from fitting._batch_auto import AutoBatchFitter

    fitter = AutoBatchFitter(exp, ("Sphere",), polarisation="none", max_steps=30, lockstep=on, **OPT)
    assert fitter.uses_lockstep() is on
    out = str(tmp_path / f"r{on}.h5")
    batch_fit(ArraySource(data), fitter, out, chunk_size=2, progress=False)
    return read_results(out)


# a worker of the suite may hold many compiled programs: the batch path's memory-map guard then warns
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*memory maps:UserWarning")
def test_batch_fit_lockstep(tmp_path):
    """`AutoBatchFitter(lockstep=True)` (batch-fit's `[batch] lockstep = "on"`) fits a chunk together."""
    exp, data = _two_spheres(tmp_path)
    res = _batch(tmp_path, exp, data, True)
    assert list(res["status_names"]) == ["ok", "ok"]
    np.testing.assert_allclose(res["radius"], [3.0, 4.2], rtol=0.02)
    assert np.all(np.isfinite(res["time_s"])) and np.all(res["n_steps"] >= 1)


def test_lockstep_config_and_fitter_arguments(tmp_path, exp):
    from fitting._batch_auto import AutoBatchFitter
    from fitting._cli_batch import load_batch_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[data]\nlength_unit='nm'\n[model]\ntype='SphericalHarmonics'\n[batch]\nlockstep='on'\nmax_batch=4\n"
    )
    c = load_batch_config(str(cfg))
    assert (
        c["batch"]["lockstep"] == "on" and c["batch"]["max_batch"] == 4 and c["batch"]["merge_grids"] is True
    )
    cfg.write_text(cfg.read_text() + "merge_grids=false\n")
    assert load_batch_config(str(cfg))["batch"]["merge_grids"] is False
    with pytest.raises(ValueError, match="lockstep"):
        AutoBatchFitter(exp, ("Sphere",), lockstep="yes", **OPT)
    auto = AutoBatchFitter(exp, ("Sphere",), **OPT).uses_lockstep()
    assert auto is (jax.default_backend() != "cpu")  # "auto": on an accelerator only
    # the memory budget: "auto" = 1200 MiB on the CPU backend, none on an accelerator; 0 / None: none
    from fitting._batch_auto import DEFAULT_RSS_BUDGET_MIB

    budget = AutoBatchFitter(exp, ("Sphere",), **OPT).rss_budget_mib
    assert budget == (DEFAULT_RSS_BUDGET_MIB if jax.default_backend() == "cpu" else None)
    assert AutoBatchFitter(exp, ("Sphere",), rss_budget_mib=0, **OPT).rss_budget_mib is None
    assert AutoBatchFitter(exp, ("Sphere",), rss_budget_mib=900, **OPT).rss_budget_mib == 900.0
    with pytest.raises(ValueError, match="rss_budget_mib"):
        AutoBatchFitter(exp, ("Sphere",), rss_budget_mib=-1, **OPT)
    cfg.write_text(cfg.read_text() + "rss_budget_mib=800\n")
    assert load_batch_config(str(cfg))["batch"]["rss_budget_mib"] == 800


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*memory maps:UserWarning")
def test_batch_fit_lockstep_on_matches_off(tmp_path):
    """Lockstep writes the pattern-by-pattern path's results, up to the shared grid's discretisation."""
    exp, data = _two_spheres(tmp_path)
    on, off = _batch(tmp_path, exp, data, True), _batch(tmp_path, exp, data, False)
    assert list(on["status_names"]) == list(off["status_names"]) == ["ok", "ok"]
    np.testing.assert_allclose(on["radius"], off["radius"], rtol=3e-3)
