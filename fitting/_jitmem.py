"""Keep a long fitting process under the kernel's memory-map limit (Linux `vm.max_map_count`).

Every program XLA compiles for the CPU keeps ~15 memory maps of JIT code and data (measured: 300 small programs
added 4561 maps; `jax.clear_caches()` released them all). A long per-pattern run compiles a few programs per
new grid rung and class, and the caches keep every one: a `fit_auto` run over six polyhedron classes at 128²
held 26 711 maps after 7 patterns, and died after 15 (session 6) with "LLVM ERROR: Unable to allocate section
memory" at the default limit of 65 530, with RAM to spare. `release_jit_memory` clears jax's caches when the
count passes a fraction of the limit; programs then compile again when next needed (seconds each).
Alternatively raise the limit: `sysctl -w vm.max_map_count=262144` (root). `fitting.fit_auto` and
`fitting.fit_from_network` call it (map count only) at their start, so a user's loop over patterns is guarded
too: a 21-pattern `benchmarks/bench_network.py` loop without it died after 16 patterns (session 25).

The same caches hold most of a long run's memory: a harmonic batch-fit (64^2, lmax 4, network-started) grew to
~2.4 GB of RSS over 16 patterns, of which `jax.clear_caches()` plus `malloc_trim` released ~1 GB after 4
patterns (1469 -> 478 MiB). `release_jit_memory(rss_budget_mib=...)` also clears them when the resident set
passes a budget, so a run's memory stays bounded; the programs then compile again, from jax's persistent
compilation cache where it is on (the CLI turns it on).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
import warnings

import jax

__all__ = [
    "map_count",
    "release_between_stages",
    "release_jit_memory",
    "rss_mib",
    "stage_budget",
    "trim_heap",
]


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


def rss_mib() -> float | None:
    """This process's resident set size [MiB], or None where /proc does not say (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def trim_heap() -> bool:
    """Return the C heap's free memory to the system (glibc `malloc_trim(0)`); False where unavailable."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def _check_budget(rss_budget_mib) -> None:
    if rss_budget_mib is not None and not (float(rss_budget_mib) > 0):
        raise ValueError(f"rss_budget_mib must be None or > 0, got {rss_budget_mib!r}")


def release_jit_memory(
    fraction: float = 0.5, verbose: bool = True, rss_budget_mib: int | float | None = None
) -> bool:
    """Clear jax's compilation caches (`jax.clear_caches()`) when this process holds more than `fraction` of
    the kernel's memory-map limit, or (`rss_budget_mib`, MiB; None: no budget) when its resident set exceeds
    the budget after the C heap's free memory went back to the system; True when it cleared. A no-op (False)
    where /proc does not say."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    _check_budget(rss_budget_mib)
    mc = map_count()
    why = None
    if mc is not None and mc[0] > fraction * mc[1]:
        why = f"{mc[0]} memory maps of vm.max_map_count = {mc[1]}"
    elif rss_budget_mib is not None:
        if (rss_mib() or 0.0) > rss_budget_mib:
            gc.collect()
            trim_heap()
            rss = rss_mib() or 0.0
            if rss > rss_budget_mib:
                why = f"resident set {rss:.0f} MiB over the budget of {float(rss_budget_mib):.0f} MiB"
    if why is None:
        return False
    jax.clear_caches()
    gc.collect()
    trim_heap()
    if verbose:
        after, rss = map_count(), rss_mib()
        warnings.warn(
            f"{why}: cleared jax's compilation caches ({after[0] if after else '?'} maps, "
            f"{rss if rss is not None else float('nan'):.0f} MiB now; the next patterns compile again)",
            stacklevel=2,
        )
    return True


# The budget `release_between_stages` applies inside `stage_budget` (per thread of execution: contextvars).
_STAGE_BUDGET: contextvars.ContextVar[float | None] = contextvars.ContextVar("stage_budget", default=None)


@contextlib.contextmanager
def stage_budget(rss_budget_mib: int | float | None):
    """Within this block `release_between_stages` clears jax's compilation caches when the resident set exceeds
    `rss_budget_mib` [MiB] (None: never). Session 27: a polyhedron pattern's class searches and refinements
    compile 0.5-1 GB of programs inside one `fit_auto` call, past the budget that batch-fit checks between
    patterns (16 cubes at 64^2, six candidates: peak 2.19 GB with the check between patterns only)."""
    _check_budget(rss_budget_mib)
    token = _STAGE_BUDGET.set(None if rss_budget_mib is None else float(rss_budget_mib))
    try:
        yield
    finally:
        _STAGE_BUDGET.reset(token)


def release_between_stages() -> bool:
    """`release_jit_memory` with the budget of the enclosing `stage_budget` (no warning); False outside one.
    Called by `fit_auto` before the orientation search, crop refinement and full refinement of each class
    fitted through an orientation search (the polyhedra and other oriented classes; not the sphere, ellipsoid
    and harmonic stages)."""
    budget = _STAGE_BUDGET.get()
    if budget is None:
        return False
    return release_jit_memory(verbose=False, rss_budget_mib=budget)
