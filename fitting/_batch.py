"""Batch inversion of whole datasets: chunked, vmapped, sharded over devices and hosts, resumable.

Data flow: a `PatternSource` (lazy reader of N patterns) -> chunks of `chunk_size` patterns -> input checks in
NumPy (bad patterns flagged and skipped) -> one jit-compiled, vmapped `fitter` call per chunk whose batch axis is
sharded over the local devices (`NamedSharding` over a 1-D "batch" mesh) -> one small part file per chunk, written
atomically -> the results file rebuilt atomically from all parts.

Crash safety: a part file appears only complete (temporary name + `os.replace`), and so does the results file,
so a kill at any moment leaves a valid results file (possibly missing the last chunks) and the parts on disk say
exactly which patterns are done. `resume=True` fits only patterns without a part; rerunning a finished job is a
no-op. Multi-host: every process takes a contiguous slice of the chunks (`jax.process_index()`), writes its own
parts into the shared parts folder and then merges what exists; the last process to finish writes the complete
file (`merge_parts` can also be called on its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import h5py
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffscat._files import atomic_output, clean_stale_temporaries

__all__ = [
    "STATUS",
    "ArraySource",
    "BatchSummary",
    "batch_fit",
    "merge_parts",
    "read_results",
    "screen_patterns",
]

# Status codes stored in /results/status (names in its attribute "codes").
# "ok" = converged and (for fitters that check it: `AutoBatchFitter`) the loss consistent with the noise model;
# "misfit": converged, but the loss lies > threshold sd above Poisson realisations of the fit (docs/batch.md);
# "out-of-range": the fitted size lies outside the configured [radius_min, radius_max].
STATUS = {
    "pending": -1,
    "ok": 0,
    "failed": 1,
    "skipped-bad-input": 2,
    "not-converged": 3,
    "misfit": 4,
    "out-of-range": 5,
}
_STATUS_NAMES = {v: k for k, v in STATUS.items()}


class ArraySource:
    """Patterns held in memory (or any array-like with `shape` and slicing, e.g. an h5py dataset, which is then
    read chunk by chunk): `data` (N, ny, nx), optional per-pattern masks (N, ny, nx) or one mask (ny, nx),
    True = use the pixel."""

    def __init__(self, data, mask=None):
        if len(data.shape) != 3:
            raise ValueError(f"data must be a stack (N, ny, nx), got shape {data.shape}")
        self.data = data
        self.mask = mask
        if mask is not None and tuple(mask.shape) not in (tuple(data.shape), tuple(data.shape[1:])):
            raise ValueError(f"mask shape {mask.shape} matches neither the stack {data.shape} nor one image")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.data.shape[1:])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(self.data[start:stop], dtype=np.float64)
        if self.mask is None:
            m = np.ones(d.shape, bool)
        elif len(self.mask.shape) == 2:
            m = np.broadcast_to(np.asarray(self.mask, bool), d.shape).copy()
        else:
            m = np.asarray(self.mask[start:stop], bool)
        return d, m


def screen_patterns(data: np.ndarray, mask: np.ndarray, image_shape) -> np.ndarray:
    """Boolean (B,) array: True where a pattern is fit for fitting. A pattern is bad (flagged
    "skipped-bad-input") when it has the wrong shape, any NaN/inf or negative pixel among the used pixels,
    or fewer than 16 used pixels."""
    if tuple(data.shape[1:]) != tuple(image_shape):
        return np.zeros(data.shape[0], bool)
    used = mask
    finite = np.all(np.isfinite(data) | ~used, axis=(1, 2))
    nonneg = np.all((np.nan_to_num(data, nan=0.0) >= 0) | ~used, axis=(1, 2))
    enough = used.sum(axis=(1, 2)) >= 16
    return finite & nonneg & enough


@dataclasses.dataclass
class BatchSummary:
    """What a `batch_fit` call did: counts per status over the whole dataset, chunks fitted now, timing."""

    n_patterns: int
    counts: dict
    fitted_now: int
    seconds: float
    path: str

    @property
    def rate(self) -> float:
        """Patterns fitted per second in this call."""
        return self.fitted_now / self.seconds if self.seconds > 0 else float("nan")


_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _atomic_h5(path: str, write: Callable[[h5py.File], None]) -> None:
    with atomic_output(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        write(f)


class JobLock:
    """An exclusive lock on one process's share of a batch job: `OUT.parts/lock-<process index>.json` holding the
    holder's pid, host and start time. A second writer is refused with a message naming the holder; a lock left by
    a dead process on this host is taken over (with a note on stderr). Released on exit."""

    def __init__(self, parts: str, process_index: int = 0):
        self.path = os.path.join(parts, f"lock-{int(process_index)}.json")
        self.taken_over: dict | None = None

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def __enter__(self) -> JobLock:
        me = {"pid": os.getpid(), "host": _HOST, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # half-written or vanished: a writer died while taking it
                    os.remove(self.path)
                    continue
                if holder.get("host") == _HOST and not _pid_alive(int(holder.get("pid", -1))):
                    self.taken_over = holder
                    os.remove(self.path)
                    continue
                raise ValueError(
                    f"another batch-fit (pid {holder.get('pid')} on {holder.get('host')}, started "
                    f"{holder.get('started')}) is writing this job ({self.path}); wait for it to finish, or delete "
                    "the lock file if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise ValueError(f"could not take the job lock {self.path}")

    def __exit__(self, *exc) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == _HOST:
            os.remove(self.path)


def _parts_dir(out: str) -> str:
    return os.fspath(out) + ".parts"


def _manifest(
    n: int,
    image_shape,
    names: Sequence[str],
    config: Mapping | None,
    units: Mapping | None = None,
    column_attrs: Mapping | None = None,
) -> dict:
    cfg = json.dumps(config or {}, sort_keys=True, default=str)
    out = {
        "n_patterns": int(n),
        "image_shape": list(image_shape),
        "parameters": list(names),
        "config_sha256": hashlib.sha256(cfg.encode()).hexdigest(),
        "config": cfg,
    }
    # stored (not compared on resume) so that `merge_parts` alone (--merge-only) writes the same attributes
    if units:
        out["units"] = dict(units)
    if column_attrs:
        out["column_attrs"] = json.loads(json.dumps(column_attrs, default=str))
    return out


def _write_manifest(parts: str, manifest: dict, resume: bool) -> None:
    path = os.path.join(parts, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        for key in ("n_patterns", "image_shape", "parameters", "config_sha256"):
            if old.get(key) != manifest[key]:
                raise ValueError(
                    f"{parts} holds results of a different job ({key} differs: {old.get(key)} vs "
                    f"{manifest[key]}); use another output path"
                )
        return
    with atomic_output(path, suffix=".json") as tmp, open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)


def _done_ranges(parts: str) -> list[tuple[int, int, str]]:
    out = []
    for name in os.listdir(parts):
        if name.startswith("part-") and name.endswith(".h5"):
            a, b = name[5:-3].split("-")
            out.append((int(a), int(b), os.path.join(parts, name)))
    return sorted(out)


def merge_parts(
    out: str,
    units: Mapping[str, str] | None = None,
    extra_attrs: Mapping | None = None,
    column_attrs: Mapping[str, Mapping] | None = None,
) -> dict:
    """Rebuild the results file `out` atomically from the part files in `out + '.parts'`.

    Layout: `/results/<name>` datasets of length N (row i = input pattern i; NaN where not fitted, -1 for
    integer columns), `/results/status` (int8, codes in its attribute `codes`), units as attributes `unit`,
    `column_attrs` ({column: {attribute: value}}, e.g. `class: {names: [...]}`, `coefficients: {lmax: 4}`) as
    attributes of those datasets (a list of strings as an HDF5 string array), and the job's manifest (config,
    N, image shape) as attributes of `/results`. An integer column with a `names` attribute (class codes) also
    gets `<name>_name`, the names as fixed-length byte strings ("" where not fitted). `units` and
    `column_attrs` default to those stored in the manifest by `batch_fit`. Returns counts per status.
    """
    parts = _parts_dir(out)
    with open(os.path.join(parts, "manifest.json")) as f:
        manifest = json.load(f)
    n = manifest["n_patterns"]
    columns: dict[str, np.ndarray] = {}
    status = np.full(n, STATUS["pending"], np.int8)
    merged = []
    for a, b, path in _done_ranges(parts):
        try:
            with h5py.File(path, "r") as f:
                status[a:b] = f["status"][...]
                for key in f:
                    if key == "status":
                        continue
                    v = f[key][...]
                    col = columns.get(key)
                    if col is None:  # (N,) for scalars, (N, k) for vector parameters (e.g. semi_axes)
                        if v.dtype.kind in "iu":  # integer columns (class codes, counts): -1 = not fitted
                            col = columns[key] = np.full((n,) + v.shape[1:], -1, np.int64)
                        else:
                            col = columns[key] = np.full((n,) + v.shape[1:], np.nan)
                    col[a:b] = v
            merged.append(os.path.basename(path))
        except OSError:  # a part being written by another process right now is not there yet
            continue
    units = dict(manifest.get("units", {}) if units is None else units)
    cattrs = dict(manifest.get("column_attrs", {}) if column_attrs is None else column_attrs)

    def write(f):
        g = f.create_group("results")
        for key, col in sorted(columns.items()):
            ds_ = g.create_dataset(key, data=col)
            base = key[:-6] if key.endswith("_sigma") else key
            if base in units:
                ds_.attrs["unit"] = units[base]
            for k, v in cattrs.get(key, {}).items():
                ds_.attrs[k] = v
            names = cattrs.get(key, {}).get("names")
            if names is not None and col.dtype.kind in "iu" and col.ndim == 1:
                width = max([len(x) for x in names] + [1])
                lookup = np.array([x.encode() for x in names] + [b""], dtype=f"S{width}")
                g.create_dataset(key + "_name", data=lookup[np.where(col >= 0, col, len(names))])
        s = g.create_dataset("status", data=status)
        s.attrs["codes"] = json.dumps(STATUS)
        for k, v in manifest.items():
            g.attrs[k] = json.dumps(v) if not isinstance(v, str) else v
        for k, v in (extra_attrs or {}).items():
            g.attrs[k] = v
        g.attrs["parts"] = json.dumps(merged)  # which parts this file holds (a later run merges when stale)

    _atomic_h5(out, write)
    return {name: int(np.sum(status == code)) for name, code in STATUS.items()}


def read_results(path: str) -> dict[str, np.ndarray]:
    """Read a results file into a dict of arrays (plus `status_names`, a list of strings)."""
    with h5py.File(path, "r") as f:
        g = f["results"]
        res = {k: g[k][...] for k in g}
    for k in [k for k in res if res[k].dtype.kind == "S"]:
        res[k] = res[k].astype(str)
    res["status_names"] = [_STATUS_NAMES[int(c)] for c in res["status"]]
    return res


def _merged_parts(out: str) -> list[str] | None:
    """The part names recorded in an existing results file (None when missing, unreadable or older)."""
    try:
        with h5py.File(out, "r") as f:
            return json.loads(f["results"].attrs["parts"])
    except (OSError, KeyError, ValueError):
        return None


def _is_stale(out: str) -> bool:
    """True when the results file does not hold exactly the parts on disk (a kill landed between a part's
    rename and the merge, or another process added parts)."""
    on_disk = sorted(os.path.basename(p) for _, _, p in _done_ranges(_parts_dir(out)))
    merged = _merged_parts(out)
    return merged is None or sorted(merged) != on_disk


def _plan(n: int, chunk: int, pidx: int, pcount: int, done: np.ndarray) -> list[tuple[int, int]]:
    """This process's work: the chunk grid [0, chunk), [chunk, 2 chunk), ... is split evenly over the processes
    (the same split on every process, whatever is done), and within each of its chunks the maximal runs of
    not-yet-fitted patterns become the ranges to fit. So a resume with another chunk size fits every pattern
    exactly once and parts never overlap."""
    starts = list(range(0, n, chunk))
    per = int(math.ceil(len(starts) / pcount))
    ranges = []
    for s in starts[pidx * per : (pidx + 1) * per]:
        e = min(s + chunk, n)
        i = s
        while i < e:
            if done[i]:
                i += 1
                continue
            j = i
            while j < e and not done[j]:
                j += 1
            ranges.append((i, j))
            i = j
    return ranges


def _status_of(ok: np.ndarray, res: dict) -> np.ndarray:
    """Status codes from the screen (`ok`) and the fitter's flags, popped from `res`: "converged" (default
    True), "misfit" and "out_of_range" (default False). Precedence: skipped-bad-input, failed (non-finite loss),
    out-of-range, not-converged, misfit, ok."""
    b = ok.shape[0]
    conv = res.pop("converged", np.ones(b)).astype(bool)
    misfit = res.pop("misfit", np.zeros(b)).astype(bool)
    out_of_range = res.pop("out_of_range", np.zeros(b)).astype(bool)
    finite = np.isfinite(res["loss"])
    st = np.full(b, STATUS["ok"], np.int8)
    for flag, name in (
        (misfit, "misfit"),
        (~conv, "not-converged"),
        (out_of_range, "out-of-range"),
        (~finite, "failed"),
        (~ok, "skipped-bad-input"),
    ):  # later rules win
        st = np.where(flag, STATUS[name], st).astype(np.int8)
    return st


def _fit_range(source, fitter, s: int, e: int, chunk: int, image_shape, sharding, on_pattern=None):
    """Fit patterns [s, e) in one fitter call padded to `chunk` rows; returns (results, status, n fitted).

    A fitter with `per_pattern = True` (fits pattern by pattern, e.g. `AutoBatchFitter`) gets only the good
    patterns, as NumPy arrays, no padding, and `on_pattern` (called after each pattern); its integer columns
    stay integer (-1 where not fitted)."""
    data, mask = source.read(s, e)
    ok = screen_patterns(data, mask, image_shape) if data.ndim == 3 else np.zeros(e - s, bool)
    b = e - s
    res: dict[str, np.ndarray] = {}
    status = np.where(ok, STATUS["ok"], STATUS["skipped-bad-input"]).astype(np.int8)
    if not ok.any():
        return res, status, 0
    if getattr(fitter, "per_pattern", False):
        idx = np.flatnonzero(ok)
        out = fitter(np.nan_to_num(data[idx], nan=0.0), mask[idx], on_pattern=on_pattern)
        for k, v in out.items():
            v = np.asarray(v)
            if v.dtype.kind in "iu":
                col = np.full((b,) + v.shape[1:], -1, np.int64)
            elif v.dtype.kind == "b":
                col = np.zeros((b,) + v.shape[1:], bool)
            else:
                col = np.full((b,) + v.shape[1:], np.nan)
            col[idx] = v
            res[k] = col
        return res, _status_of(ok, res), int(ok.sum())
    # Pad to the full chunk (bad and missing rows get a harmless dummy pattern: the first good one).
    first = int(np.argmax(ok))
    dd = np.empty((chunk,) + image_shape)
    mm = np.empty((chunk,) + image_shape, bool)
    dd[:b] = np.where(ok[:, None, None], np.nan_to_num(data, nan=0.0), data[first])
    mm[:b] = np.where(ok[:, None, None], mask, mask[first])
    dd[b:] = data[first]
    mm[b:] = mask[first]
    out_dev = fitter(jax.device_put(dd, sharding), jax.device_put(mm, sharding))
    res = {k: np.asarray(v)[:b].astype(np.float64) for k, v in out_dev.items()}
    status = _status_of(ok, res)
    for k in res:
        keep = ok.reshape((-1,) + (1,) * (res[k].ndim - 1))
        res[k] = np.where(keep, res[k], np.nan)
    return res, status, int(ok.sum())


def _write_part(parts: str, s: int, e: int, res: dict, status: np.ndarray) -> None:
    def write(f):
        f.create_dataset("status", data=status)
        for k, v in res.items():
            f.create_dataset(k, data=v)

    _atomic_h5(os.path.join(parts, f"part-{s:09d}-{e:09d}.h5"), write)


def _local_mesh():
    devices = jax.local_devices()
    return Mesh(np.asarray(devices), ("batch",)), len(devices)


def batch_fit(
    source,
    fitter: Callable,
    out: str | os.PathLike,
    *,
    chunk_size: int = 16,
    resume: bool = False,
    config: Mapping | None = None,
    units: Mapping[str, str] | None = None,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    max_chunks: int | None = None,
) -> BatchSummary:
    """Fit every pattern of `source` with `fitter` and write `/results/...` to `out` (HDF5).

    **Arguments:**
    - `source`: an `ArraySource`-like object (`len`, `image_shape`, `read(start, stop) -> (data, mask)`).
    - `fitter`: a `BatchFitter` (or any callable `(data[B, ny, nx], mask[B, ny, nx]) -> dict of (B,) arrays`
      that includes "loss" and "converged"; it is jit-compiled and vmapped by the caller's design and called on
      device-sharded arrays). Optional attributes: `names` (stored in the manifest), `column_attrs`
      ({column: {attribute: value}} written on the merged datasets), and `per_pattern = True` for a fitter
      that fits pattern by pattern (`AutoBatchFitter`): it is called as `fitter(data, mask,
      on_pattern=callback)` on the good patterns only (NumPy, unpadded) and the progress bar advances per
      pattern (rate and ETA per pattern); vmapped fitters advance it per chunk. Optional boolean outputs
      "misfit" and "out_of_range" set those statuses.
    - `out`: results file; parts go to `out + ".parts/"`. Never overwritten by a different job.
    - `chunk_size`: patterns per fitter call (rounded up to a multiple of the local device count).
    - `resume`: continue an interrupted job. Without it, an existing unfinished job is an error (nothing is
      overwritten); a finished job with the same configuration is a no-op either way.
    - `config`: JSON-able description of the job, stored and compared on resume.
    - `process_index`, `process_count`: multi-host slice (default from `jax.process_index()/process_count()`).
    - `max_chunks`: stop after this many chunks (for tests and trial runs).
    """
    out = os.fspath(out)
    if os.path.abspath(out) == os.path.abspath(getattr(source, "path", "") or ""):
        raise ValueError("out must not be the input data file")
    n = len(source)
    image_shape = tuple(source.image_shape)
    names = list(getattr(fitter, "names", []))
    parts = _parts_dir(out)
    column_attrs = getattr(fitter, "column_attrs", None)
    manifest = _manifest(n, image_shape, names, config, units, column_attrs)
    pidx = jax.process_index() if process_index is None else int(process_index)
    pcount = jax.process_count() if process_count is None else int(process_count)

    existed = os.path.exists(os.path.join(parts, "manifest.json"))
    os.makedirs(parts, exist_ok=True)
    with JobLock(parts, pidx) as lock:
        if lock.taken_over:
            print(
                f"batch-fit: took over the lock of a dead run (pid {lock.taken_over.get('pid')})",
                file=sys.stderr,
            )
        for folder in (parts, os.path.dirname(os.path.abspath(out))):
            clean_stale_temporaries(folder)
        _write_manifest(parts, manifest, resume)
        done = np.zeros(n, bool)
        for a, b, _ in _done_ranges(parts):
            done[a:b] = True
        mesh, ndev = _local_mesh()
        chunk = int(math.ceil(max(1, chunk_size) / ndev) * ndev)
        todo = _plan(n, chunk, pidx, pcount, done)
        if existed and todo and not resume and done.any():
            raise ValueError(f"{out}: an unfinished job exists; pass resume=True (--resume) to continue it")
        if max_chunks is not None:
            todo = todo[:max_chunks]

        sharding = NamedSharding(mesh, P("batch"))
        t0 = time.perf_counter()
        fitted = 0
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(e - s for s, e in todo), unit="pattern", desc="batch-fit")
        per_pattern = bool(getattr(fitter, "per_pattern", False))
        on_pattern = (lambda: bar.update(1)) if (bar is not None and per_pattern) else None
        for s, e in todo:
            res, status, k = _fit_range(source, fitter, s, e, chunk, image_shape, sharding, on_pattern)
            fitted += k
            _write_part(parts, s, e, res, status)
            merge_parts(out, units, column_attrs=column_attrs)
            if bar is not None:  # per-pattern fitters advanced it already for the patterns they fitted
                bar.update(e - s - (k if per_pattern else 0))
        if bar is not None:
            bar.close()
        if _done_ranges(parts) and (todo or not os.path.exists(out) or _is_stale(out)):
            counts = merge_parts(out, units, column_attrs=column_attrs)
        elif os.path.exists(out):  # nothing to do and the file is current: leave it untouched
            st = read_results(out)["status"]
            counts = {name: int(np.sum(st == code)) for name, code in STATUS.items()}
        else:  # nothing fitted yet (e.g. max_chunks=0)
            counts = {name: (n if name == "pending" else 0) for name in STATUS}
    return BatchSummary(n, counts, fitted, time.perf_counter() - t0, out)
