"""Keep a long fitting process under the kernel's memory-map limit (Linux `vm.max_map_count`).

Every program XLA compiles for the CPU keeps ~15 memory maps of JIT code and data (measured: 300 small programs
added 4561 maps; `jax.clear_caches()` released them all). A long per-pattern run compiles a few programs per
new grid rung and class, and the caches keep every one: a `fit_auto` run over six polyhedron classes at 128²
held 26 711 maps after 7 patterns, and died after 15 (session 6) with "LLVM ERROR: Unable to allocate section
memory" at the default limit of 65 530, with RAM to spare. `release_jit_memory` clears jax's caches when the
count passes a fraction of the limit; programs then compile again when next needed (seconds each).
Alternatively raise the limit: `sysctl -w vm.max_map_count=262144` (root).
"""

from __future__ import annotations

import warnings

import jax

__all__ = ["map_count", "release_jit_memory"]


def _read_limit() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def map_count() -> tuple[int, int] | None:
    """(memory maps of this process, the kernel's limit), or None where /proc does not say (not Linux)."""
    limit = _read_limit()
    if limit is None:
        return None
    try:
        with open("/proc/self/maps", "rb") as f:
            n = sum(1 for _ in f)
    except OSError:
        return None
    return n, limit


def release_jit_memory(fraction: float = 0.5, verbose: bool = True) -> bool:
    """Clear jax's compilation caches (`jax.clear_caches()`) when this process holds more than `fraction` of
    the kernel's memory-map limit; True when it did. A no-op (False) where the count is unknown."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    mc = map_count()
    if mc is None or mc[0] <= fraction * mc[1]:
        return False
    jax.clear_caches()
    if verbose:
        after = map_count()
        warnings.warn(
            f"{mc[0]} memory maps of vm.max_map_count = {mc[1]}: cleared jax's compilation caches "
            f"({after[0] if after else '?'} maps now; the next patterns compile again)",
            stacklevel=2,
        )
    return True
