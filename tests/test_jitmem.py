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
