"""fitting._jitmem: clearing jax's caches before the kernel's memory-map limit (vm.max_map_count)."""

import sys

import jax
import jax.numpy as jnp
import pytest

import fitting._jitmem as jm


def test_release_jit_memory_clears_caches_only_above_the_fraction(monkeypatch):
    f = jax.jit(lambda x: x + 1)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    monkeypatch.setattr(jm, "map_count", lambda: (30_000, 65_530))
    assert jm.release_jit_memory(0.5) is False and f._cache_size() == 1
    monkeypatch.setattr(jm, "map_count", lambda: (40_000, 65_530))
    with pytest.warns(UserWarning, match="max_map_count"):
        assert jm.release_jit_memory(0.5) is True
    assert f._cache_size() == 0
    monkeypatch.setattr(jm, "map_count", lambda: None)  # not Linux: nothing to do
    assert jm.release_jit_memory(0.01) is False
    with pytest.raises(ValueError, match="fraction"):
        jm.release_jit_memory(0.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_map_count_reads_this_process():
    n, limit = jm.map_count()
    assert 0 < n < limit


def test_release_jit_memory_rss_budget(monkeypatch):
    """The resident-set budget: below it nothing is cleared; above it (after the heap is trimmed) the caches go."""
    f = jax.jit(lambda x: x * 2)
    f(jnp.ones(3))
    monkeypatch.setattr(jm, "map_count", lambda: (100, 65_530))
    monkeypatch.setattr(jm, "rss_mib", lambda: 900.0)
    assert jm.release_jit_memory(rss_budget_mib=1000) is False and f._cache_size() == 1
    assert jm.release_jit_memory() is False and f._cache_size() == 1  # no budget: the map count alone
    monkeypatch.setattr(jm, "rss_mib", lambda: 1100.0)
    with pytest.warns(UserWarning, match="over the budget of 1000 MiB"):
        assert jm.release_jit_memory(rss_budget_mib=1000) is True
    assert f._cache_size() == 0
    with pytest.raises(ValueError, match="rss_budget_mib"):
        jm.release_jit_memory(rss_budget_mib=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_rss_reads_this_process():
    assert 10 < jm.rss_mib() < 100_000
    jm.trim_heap()  # glibc: returns True; elsewhere False, never raises


class _Entered(Exception):
    pass


def _raise(*args, **kwargs):
    raise _Entered


@pytest.mark.parametrize("entry", ["fit_auto", "fit_from_network"])
def test_the_per_pattern_entry_points_guard_the_map_limit(monkeypatch, entry):
    """A user's loop of `fit_auto` / `fit_from_network` calls reaches `release_jit_memory` once per pattern
    (session 25: a 21-pattern benchmark loop died at vm.max_map_count after 16 patterns)."""
    import numpy as np

    import diffscat as ds
    import fitting
    import fitting._auto as auto
    import fitting._netinit as netinit

    module = auto if entry == "fit_auto" else netinit
    monkeypatch.setattr(module, "release_jit_memory", _raise)
    exp = ds.Experiment(1.0, ds.QGrid(16, 30.0))
    data = np.ones(exp.shape)
    with pytest.raises(_Entered):
        if entry == "fit_auto":
            fitting.fit_auto(data, exp, ("Sphere",))
        else:
            fitting.fit_from_network(data, exp, "default", candidates=["Sphere"], delta=0.001, beta=0.0)


def test_stage_budget_applies_only_inside_its_block(monkeypatch):
    """`release_between_stages` clears (silently) above the enclosing `stage_budget` and never outside one."""
    f = jax.jit(lambda x: x - 1)
    f(jnp.ones(3))
    monkeypatch.setattr(jm, "map_count", lambda: (100, 65_530))
    monkeypatch.setattr(jm, "rss_mib", lambda: 1100.0)
    assert jm.release_between_stages() is False and f._cache_size() == 1  # no block: no budget
    with jm.stage_budget(2000):
        assert jm.release_between_stages() is False and f._cache_size() == 1
    with jm.stage_budget(None):
        assert jm.release_between_stages() is False
    with jm.stage_budget(1000):  # no warning: pytest's filter would turn one into a failure
        assert jm.release_between_stages() is True
    assert f._cache_size() == 0
    assert jm.release_between_stages() is False  # the block's budget is gone
    with pytest.raises(ValueError, match="rss_budget_mib"):
        with jm.stage_budget(-1):
            pass


def test_batch_fit_checks_its_budget_between_a_patterns_class_stages(monkeypatch):
    """The per-pattern batch path runs each `fit_auto` inside `stage_budget(rss_budget_mib)`, and fit_auto's
    class stages (search, crop and full refinements) check it (session 27: a polyhedron pattern compiled 0.5-1 GB
    inside one pattern, past the between-pattern check)."""
    import numpy as np

    import diffscat as ds
    import fitting._auto as auto
    from fitting._batch_auto import AutoBatchFitter

    seen = []

    def spy(*args, **kwargs):
        seen.append(jm._STAGE_BUDGET.get())
        raise _Entered

    monkeypatch.setattr(auto, "orientation_search", spy)
    exp = ds.Experiment(1.0, ds.QGrid(16, 30.0))
    fitter = AutoBatchFitter(exp, candidates=("Cube",), rss_budget_mib=1234, lockstep=False)
    with pytest.raises(_Entered):
        fitter._fit_chunk(np.ones((1, *exp.shape)), np.ones((1, *exp.shape), bool))
    assert seen == [1234.0]
