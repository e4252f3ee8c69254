"""Preflight: estimate the memory of a planned simulation or fit and refuse it before any work.

A voxel grid grows as (radius / pitch)^3: a radius of 5000 wavelengths at the default pitch is 8e12 voxels,
and without a check the engines start allocating and die with a `MemoryError` (or the OS kills the
process) after seconds to minutes. `check_memory` compares a cheap estimate of the peak memory (from static
sizes only: grid shape, pixel count, batch, dtype; no tracing, no allocation) with a budget and raises a
one-line `MemoryBudgetError` naming the estimate, the budget and the knob to turn.

The budget (bytes) is, by priority: the `budget=` argument, the environment variable
`DIFFSCAT_MEMORY_BUDGET` ("8GiB", "500MB", "2e9", "75%" of the available memory, or "off"), else
`DEFAULT_FRACTION` (50 %) of the memory available now (`MemAvailable` of /proc/meminfo, else
`os.sysconf`). docs/errors.md.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

__all__ = [
    "MemoryBudgetError",
    "available_memory",
    "memory_budget",
    "parse_bytes",
    "estimate_bytes",
    "check_memory",
    "format_bytes",
    "ENV_VAR",
    "DEFAULT_FRACTION",
]

ENV_VAR = "DIFFSCAT_MEMORY_BUDGET"
DEFAULT_FRACTION = 0.5

# Real-dtype words held per voxel at the peak of one forward pass: voxel centres (3), signed distance and
# its gradient (4), filled fraction (1), dn and the slice sources U (2 complex = 4), the phase-shifted
# sources and the compressed planes (<= 2 complex = 4). A gradient keeps the forward's residuals: x 3.
_WORDS_PER_VOXEL = 16
_WORDS_PER_PIXEL = 24  # pixel directions, q, qz, weights, Psi (complex), the image, chunk carries
_GRAD_FACTOR = 3
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


class MemoryBudgetError(MemoryError):
    """A planned computation would need more memory than the budget (raised before any allocation)."""


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (`MemAvailable`), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def parse_bytes(text: str | float | int, name: str = ENV_VAR) -> float | None:
    """A size in bytes from a number or text ("8GiB", "500 MB", "2e9", "75%" of the available memory);
    "off"/"none"/"inf" -> None (no limit). Raises ValueError naming `name` otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"{name} must be a size in bytes (e.g. '8GiB'), got {text!r}")
    if isinstance(text, int | float | np.integer | np.floating):
        v = float(text)
        if not v > 0:
            raise ValueError(f"{name} must be a positive size in bytes, got {text!r}")
        return None if math.isinf(v) else v
    s = str(text).strip().lower()
    if s in ("off", "none", "inf", "unlimited"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(%|[kmgt]?i?b?)", s)
    if m is None or (m.group(2) not in _UNITS and m.group(2) != "%"):
        raise ValueError(
            f"{name} must be a size like '8GiB', '500MB', '2e9' or '75%' (or 'off'), got {text!r}"
        )
    v = float(m.group(1))
    if m.group(2) == "%":
        avail = available_memory()
        if not 0 < v <= 100:
            raise ValueError(f"{name}: a percentage must be in (0, 100], got {text!r}")
        return None if avail is None else avail * v / 100.0
    v *= _UNITS[m.group(2)]
    if not v > 0:
        raise ValueError(f"{name} must be a positive size, got {text!r}")
    return v


def memory_budget(budget: str | float | int | None = None) -> float | None:
    """The memory budget in bytes (None: no limit): `budget`, else $DIFFSCAT_MEMORY_BUDGET, else 50 % of the
    available memory (None when that is unknown)."""
    if budget is not None:
        return parse_bytes(budget, "memory_budget")
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env, ENV_VAR)
    avail = available_memory()
    return None if avail is None else DEFAULT_FRACTION * avail


def format_bytes(n: float) -> str:
    for unit, f in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n:.0f} B"


def estimate_bytes(
    grid_shape: tuple[int, ...] | None,
    n_pixels: int,
    *,
    batch: int = 1,
    itemsize: int = 4,
    grad: bool = False,
    extra: float = 0.0,
) -> float:
    """Estimated peak bytes of `batch` simulations on a voxel grid `grid_shape` (nx, ny, nz) and `n_pixels`
    pixels in a real dtype of `itemsize` bytes (4: float32, 8: float64); `grad`: with a gradient (a fit);
    `extra`: bytes held besides (data, results). An estimate from sizes only (no allocation): the engines'
    own chunking bounds the transform's temporaries, so the voxel arrays dominate at large sizes."""
    nvox = float(np.prod(grid_shape, dtype=float)) if grid_shape is not None else 0.0
    words = _WORDS_PER_VOXEL * nvox + _WORDS_PER_PIXEL * float(n_pixels)
    total = words * itemsize * max(int(batch), 1) * (_GRAD_FACTOR if grad else 1)
    return total + float(extra)


def check_memory(
    grid_shape: tuple[int, ...] | None,
    n_pixels: int,
    *,
    batch: int = 1,
    itemsize: int = 4,
    grad: bool = False,
    extra: float = 0.0,
    budget: str | float | int | None = None,
    what: str = "this simulation",
    knobs: str | None = None,
) -> float:
    """Raise `MemoryBudgetError` (one line: estimate, budget, the knobs to turn) when `estimate_bytes(...)`
    exceeds `memory_budget(budget)`. Returns the estimate in bytes. Cheap: call it before any work."""
    est = estimate_bytes(grid_shape, n_pixels, batch=batch, itemsize=itemsize, grad=grad, extra=extra)
    lim = memory_budget(budget)
    if lim is not None and est > lim:
        grid_txt = (
            f"a voxel grid of {' x '.join(str(int(n)) for n in grid_shape)}"
            if grid_shape is not None
            else "no voxel grid"
        )
        batch_txt = f" x {int(batch)} in a batch" if int(batch) > 1 else ""
        knobs = knobs or (
            "a coarser pitch, a smaller shape or grid, fewer detector pixels or a smaller chunk"
        )
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(est)} ({grid_txt}{batch_txt}, {int(n_pixels)} pixels), more "
            f"than the memory budget of {format_bytes(lim)}: use {knobs}, or raise the budget with "
            f"{ENV_VAR} (e.g. '16GiB' or 'off')"
        )
    return est
