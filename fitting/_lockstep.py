"""`lockstep_map`: run a per-pattern driver (e.g. `fitting.fit_auto`) on many patterns at once, with the
`fitting.fit` calls of all patterns merged into vmapped batches.

Each pattern's driver runs in its own Python thread. Its `fit` calls do not run at once: they wait until every
pattern still running is waiting too, then the waiting calls that can share one compiled step (the same
experiment, shape class and structure, free parameters, loss, optimiser settings, regulariser, active masks
and voxel pitch) run as ONE call of `fit`'s core (`fitting.fit_batch`'s vmapped optimisation, sharded over
the local devices), each pattern with its own data, starts and stopping. So the control flow of the driver
(ladders, class selection, refits) stays the per-pattern code, while the arithmetic is batched across the
patterns: on an accelerator a batch of B patterns costs about what one does; on a CPU it does not pay (its
cores are already busy inside one pattern's transforms, docs/fitting.md "fit_batch").

The voxel grid: with `merge_grids` (default) the merged calls run on the smallest grid that contains every
pattern's own grid (same pitch, per-axis maximum of the voxel counts): fewer, larger batches, and each
pattern's result differs from its own-grid fit only by the discretisation (the voxel centres move by up to
half a pitch where the voxel count changes parity). `merge_grids=False` merges only calls whose grids are
equal, so each pattern gets exactly its per-pattern fit (up to float round-off of the batched arithmetic).

Scheduling: a decision is taken only when every running pattern waits (so it does not depend on thread timing
and a rerun gives the same results): the largest group of compatible calls runs (ties: the group holding the
first item); the others keep waiting and may join later calls of the same kind.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["lockstep_map", "current_batcher"]

_local = threading.local()


def current_batcher():
    """The `_Batcher` of the `lockstep_map` this thread runs a pattern for, else None (`fit` runs at once)."""
    return getattr(_local, "batcher", None)


def _fingerprint(x) -> tuple:
    """A hashable summary of a pytree's VALUES (not identities): treedef (static fields included), and per
    leaf dtype, shape and a hash of the bytes for arrays / numbers, identity for other callables, repr else."""
    leaves, treedef = jax.tree.flatten(x, is_leaf=lambda v: v is None)
    parts: list[Any] = [str(treedef)]
    for v in leaves:
        if v is None or isinstance(v, bool | int | float | complex | str):
            parts.append(repr(v))
        elif isinstance(v, np.ndarray | np.generic | jax.Array):
            a = np.asarray(v)
            parts.append((a.dtype.str, a.shape, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()))
        elif callable(v):
            parts.append(("callable", id(v)))
        else:
            parts.append(repr(v))
    return tuple(parts)


def _structure(models) -> tuple:
    """Class and leaf shapes/dtypes of a list of starts (what the stacked parametrisation's shape depends on)."""
    m = models[0]
    return (type(m).__name__,) + tuple((np.shape(v), str(np.asarray(v).dtype)) for v in jax.tree.leaves(m))


class _Request:
    __slots__ = ("data", "mask", "experiment", "models", "loss", "polarisation", "grid",
                 "memory_budget", "progress", "options", "key", "item", "done", "result", "error")  # fmt: skip

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)
        self.done, self.result, self.error = False, None, None


class _Batcher:
    """Collects the `fit` calls of the threads of one `lockstep_map` and runs them in merged batches."""

    def __init__(self, n_live: int, merge_grids: bool, max_batch: int | None):
        self.cond = threading.Condition()
        self.live = n_live
        self.pending: list[_Request] = []
        self.merge_grids = bool(merge_grids)
        self.max_batch = max_batch
        self.calls: list[int] = []  # patterns per merged call, in order (for tests and reports)

    # --- worker side -----------------------------------------------------------------------------------
    def submit(self, data, mask, experiment, models, loss, polarisation, *, grid, memory_budget,
               progress, options: dict):  # fmt: skip
        """Called by `fit` in a worker thread: queue the call, wait for its batch, return its `FitResult`."""
        exp_fp = _fingerprint(experiment)
        opts_fp = _fingerprint(options)
        key = (
            exp_fp,
            _structure(models),
            _fingerprint(loss),
            polarisation,
            opts_fp,
            repr(memory_budget),
            repr(progress),
            grid.pitch,
            None if self.merge_grids else grid.shape,
        )
        req = _Request(
            data=data, mask=mask, experiment=experiment, models=list(models), loss=loss,
            polarisation=polarisation, grid=grid, memory_budget=memory_budget,
            progress=progress, options=options, key=key,
        )  # fmt: skip
        req.item = getattr(_local, "index", 0)
        with self.cond:
            self.pending.append(req)
            self.cond.notify_all()
            self.cond.wait_for(lambda: req.done)
        if req.error is not None:
            raise req.error
        return req.result

    def finish(self) -> None:
        with self.cond:
            self.live -= 1
            self.cond.notify_all()

    # --- serving side (the thread that called lockstep_map) ---------------------------------------------
    def serve(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.live == 0 or len(self.pending) >= self.live)
                if self.live == 0:
                    return
                groups: dict[tuple, list[_Request]] = {}
                for r in self.pending:
                    groups.setdefault(r.key, []).append(r)
                # the largest group first (ties: the one with the first item), so the choice depends on the
                # calls alone, never on thread timing (results are reproducible)
                group = max(groups.values(), key=lambda g: (len(g), -min(r.item for r in g)))
                for r in group:
                    self.pending.remove(r)
                group.sort(key=lambda r: r.item)  # rows in item order, whatever order the threads came in
            self._run_group(group)
            with self.cond:
                for r in group:
                    r.done = True
                self.cond.notify_all()

    def _run_group(self, group: list[_Request]) -> None:
        from diffscat import MemoryBudgetError

        if self.max_batch is not None and len(group) > self.max_batch:
            for i in range(0, len(group), self.max_batch):
                self._run_group(group[i : i + self.max_batch])
            return
        try:
            results = self._run(group)
        except MemoryBudgetError as e:
            if len(group) == 1:
                group[0].error = e
                return
            half = len(group) // 2
            self._run_group(group[:half])
            self._run_group(group[half:])
            return
        except Exception as e:  # noqa: BLE001 - one bad pattern must not fail the others: run them alone
            if len(group) == 1:
                group[0].error = e
                return
            for r in group:
                self._run_group([r])
            return
        for r, res in zip(group, results, strict=True):
            r.result = res

    def _run(self, group: list[_Request]):
        import diffscat as ds

        from ._fit import _run

        t0 = time.perf_counter()
        r0 = group[0]
        shapes = np.array([r.grid.shape for r in group])
        grid = r0.grid if len(group) == 1 else ds.VoxelGrid(tuple(shapes.max(axis=0)), r0.grid.pitch)
        results = _run(
            [r.data for r in group], [r.mask for r in group], r0.experiment, [r.models for r in group],
            r0.loss, r0.polarisation, t0, grid=grid, pitch=None, grid_margin=None,
            memory_budget=r0.memory_budget, progress=r0.progress,
            what=f"lockstep fit of {len(group)} pattern(s) x up to {max(len(r.models) for r in group)} start(s)",
            knobs="a smaller max_batch (patterns per merged fit), a coarser pitch= or fewer starts",
            **r0.options,
        )  # fmt: skip
        self.calls.append(len(group))
        dt = time.perf_counter() - t0
        for res in results:
            res.time_s = dt / len(group)
        return results


def lockstep_map(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    merge_grids: bool = True,
    max_batch: int | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    stats: dict | None = None,
) -> list:
    """`[fn(x) for x in items]`, each in its own thread, with every `fitting.fit` call made inside `fn` merged
    with the other items' compatible calls into one vmapped optimisation (module doc).

    **Arguments:**
    - `fn`: a per-pattern driver, e.g. `lambda i: fitting.fit_auto(data[i], exp, ..., mask[i])`. It must not
      wait on the other items (they wait for it); anything but `fit` runs concurrently in its thread.
    - `items`: the patterns (any objects `fn` takes).
    - `merge_grids`: run merged fits on the smallest grid holding every member's grid (default), or merge
      only equal grids (each result then equals its per-pattern fit).
    - `max_batch`: at most this many patterns per merged call (None: no limit; a call over the memory
      budget is split in halves anyway).
    - `on_done(i, result)`: called in item i's thread when its `fn` returns or raises (e.g. a progress bar).
    - `stats`: a dict that receives "calls" (the number of patterns of every merged call, in order).

    **Returns:** the list of `fn`'s results in the order of `items`; where `fn` raised an `Exception`, that
    exception object is in its place (the other items go on)."""
    items = list(items)
    if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) < 1):
        raise ValueError(f"max_batch must be None or an integer >= 1, got {max_batch!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    out: list[Any] = [None] * len(items)
    if not items:
        return out
    if current_batcher() is not None:
        raise RuntimeError("lockstep_map cannot be nested inside another lockstep_map")
    b = _Batcher(len(items), merge_grids, None if max_batch is None else int(max_batch))

    def work(i: int) -> None:
        _local.batcher, _local.index = b, i
        try:
            out[i] = fn(items[i])
        except Exception as e:  # noqa: BLE001 - returned in its place, as documented
            out[i] = e
        finally:
            _local.batcher = None
            try:
                if on_done is not None:
                    on_done(i, out[i])
            finally:
                b.finish()

    threads = [
        threading.Thread(target=work, args=(i,), daemon=True, name=f"lockstep-{i}") for i in range(len(items))
    ]
    for t in threads:
        t.start()
    b.serve()
    for t in threads:
        t.join()
    if stats is not None:
        stats["calls"] = list(b.calls)
    return out
