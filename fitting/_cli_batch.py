"""`diffscat batch-fit CONFIG --data FILE.cxi -o RESULTS.h5 [--resume] [--set k=v]`: fit every pattern.

Config (TOML; see configs/batch-sphere.toml):

    [data]
    length_unit = "nm"        # unit of every length in the config and the results
    entry = 1                 # CXI entry holding a stack (N, ny, nx); multi-entry files (one image per
                              # /entry_N, as CXIDB id-94) are read entry by entry when entry = "all"

    [model]
    type = "Sphere"           # Sphere | Ellipsoid (semi-axes + orientation, configs/batch-ellipsoid.toml)
    delta = 0.0
    beta = 0.001
    radius_min = 20.0         # range searched by the automatic initialisation (length unit)
    radius_max = 200.0

    [fit]
    loss = "poisson"          # a name in fitting.LOSSES: poisson | anscombe | log
    polarisation = "unpolarised"
    beamstop_deg = 2.5        # pixels below this angle are not used (combined with the file's mask)
    n_steps = 8
    n_candidates = 64

    [batch]
    chunk_size = 16           # patterns per vmapped call, rounded up to a multiple of the local devices

Geometry comes from the data file. Results: RESULTS.h5 `/results/<name>` (row i = pattern i), status codes,
the config; parts in RESULTS.h5.parts/ make `--resume` exact. Multi-host: start one process per host with
`--distributed` (jax.distributed.initialize auto-detects SLURM / Open MPI; `--coordinator`,
`--num-processes`, `--process-id` for manual setups); each process fits its slice, the last one to finish
writes the merged file (`--merge-only` rebuilds it from the parts).
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

__all__ = ["add_arguments", "run", "load_batch_config", "CXISource"]

SECTIONS = {
    "data": {"length_unit", "entry"},
    "model": {"type", "delta", "beta", "radius_min", "radius_max", "max_aspect"},
    "fit": {
        "loss",
        "polarisation",
        "beamstop_deg",
        "n_steps",
        "n_candidates",
        "n_theta",
        "pitch",
        "n_starts",
        "learning_rate",
    },
    "batch": {"chunk_size"},
}
DEFAULTS = {
    "data": {"entry": 1},
    "model": {"type": "Sphere", "delta": 0.0, "beta": 0.0},
    "fit": {
        "loss": "poisson",
        "polarisation": "unpolarised",
        "beamstop_deg": 0.0,
        "n_candidates": 64,
        "n_theta": 512,
    },
    "batch": {"chunk_size": 16},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML config with [data], [model], [fit], [batch] sections")
    parser.add_argument("--data", required=True, help="CXI / HDF5 file with the patterns")
    parser.add_argument("-o", "--out", required=True, help="results file (HDF5); parts go to OUT.parts/")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted job")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--chunk-size", type=int, help="patterns per vmapped call (overrides [batch])")
    parser.add_argument("--max-chunks", type=int, help="stop after this many chunks (trial runs)")
    parser.add_argument("--merge-only", action="store_true", help="only rebuild OUT from OUT.parts/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--distributed", action="store_true", help="multi-host: jax.distributed.initialize()")
    parser.add_argument("--coordinator", help="coordinator address host:port (with --distributed)")
    parser.add_argument("--num-processes", type=int, help="number of processes (with --distributed)")
    parser.add_argument("--process-id", type=int, help="this process's index (with --distributed)")
    parser.add_argument(
        "--allow-external-links",
        action="store_true",
        help="follow HDF5 external links of the data file to other files (refused by default)",
    )


def load_batch_config(path, overrides=()) -> dict:
    """Read and validate a batch-fit config; unknown sections/keys and wrong types are errors naming them."""
    from diffscat.io import ConfigError, read_toml

    from ._losses import as_loss

    cfg = read_toml(path, overrides)
    for sec, keys in cfg.items():
        if sec not in SECTIONS:
            raise ConfigError(f"unknown section [{sec}]; valid: {sorted(SECTIONS)}")
        if not isinstance(keys, dict):
            raise ConfigError(f"[{sec}] must be a table")
        for k in keys:
            if k not in SECTIONS[sec]:
                raise ConfigError(f"unknown key {sec}.{k}; valid: {sorted(SECTIONS[sec])}")
    out = {s: {**DEFAULTS.get(s, {}), **cfg.get(s, {})} for s in SECTIONS}
    if "length_unit" not in out["data"]:
        raise ConfigError("missing key data.length_unit (the unit of lengths in the config and results)")
    m = out["model"]
    if m["type"] not in ("Sphere", "Ellipsoid"):
        raise ConfigError(f"model.type = {m['type']!r}: batch-fit supports 'Sphere' and 'Ellipsoid'")
    for k in ("radius_min", "radius_max"):
        if k not in m:
            raise ConfigError(f"missing key model.{k}")
        if not isinstance(m[k], int | float) or m[k] <= 0:
            raise ConfigError(f"model.{k} must be a positive number, got {m[k]!r}")
    if m["radius_min"] >= m["radius_max"]:
        raise ConfigError("model.radius_min must be below model.radius_max")
    try:
        as_loss(out["fit"]["loss"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"fit.loss = {out['fit']['loss']!r}: {e}") from None
    out["fit"].setdefault("n_steps", 8 if m["type"] == "Sphere" else 200)
    for k in ("n_steps", "n_candidates", "n_theta"):
        if not isinstance(out["fit"][k], int) or out["fit"][k] < 1:
            raise ConfigError(f"fit.{k} must be a positive integer, got {out['fit'][k]!r}")
    cs = out["batch"]["chunk_size"]
    if not isinstance(cs, int) or cs < 1:
        raise ConfigError(f"batch.chunk_size must be a positive integer, got {cs!r}")
    return out


class CXISource:
    """Patterns of a CXI file, read lazily chunk by chunk: a stack (N, ny, nx) in one entry, or one image per
    entry (`entry="all"`, CXIDB id-94 style). Masks: the file's mask, finite pixels and `extra_mask`."""

    def __init__(self, path, length_unit: str, entry=1, extra_mask=None, *, allow_external: bool = False):
        from diffscat.io import list_entries, read_cxi

        self.path = os.fspath(path)
        self.length_unit = length_unit
        self.allow_external = bool(allow_external)
        ext = dict(allow_external=self.allow_external)
        if entry == "all":
            self.entries = list_entries(self.path, **ext)
            if not self.entries:
                raise ValueError(f"{self.path}: no /entry_N groups")
            first = read_cxi(self.path, length_unit=length_unit, entry=self.entries[0], **ext)
            self._n = len(self.entries)
            self._stack = None
        else:
            first = read_cxi(self.path, length_unit=length_unit, entry=entry, **ext)
            self.entries = None
            if isinstance(first.data, np.ndarray) and first.data.ndim == 2:
                self._stack = None
                self.entries = [entry]
                self._n = 1
            else:
                self._stack = first.data
                self._n = len(first.data)
        if first.experiment is None:
            raise ValueError(f"{self.path}: no detector geometry in the file (distance, pixel size, energy)")
        self.experiment = first.experiment
        self.image_shape = tuple(first.experiment.shape)
        self.file_mask = first.mask
        self.extra_mask = extra_mask

    def __len__(self) -> int:
        return self._n

    def _mask(self, m):
        if self.file_mask is not None and self.file_mask.shape == m.shape[-2:]:
            m = m & self.file_mask
        if self.extra_mask is not None:
            m = m & self.extra_mask
        return m

    def read(self, start: int, stop: int):
        import warnings

        from diffscat.io import NaNPixelWarning, read_cxi

        if self._stack is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NaNPixelWarning)  # bad pixels are masked and reported
                d = np.asarray(self._stack[start:stop], float)
                m = np.asarray(self._stack.masks_for(slice(start, stop)), bool)
            return d, self._mask(m)
        ds_, ms = [], []
        for e in self.entries[start:stop]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NaNPixelWarning)
                c = read_cxi(
                    self.path, length_unit=self.length_unit, entry=e, allow_external=self.allow_external
                )
            d = np.asarray(c.data, float)
            if d.shape != self.image_shape:  # flagged as bad by the screen (wrong shape)
                d = np.full(self.image_shape, np.nan)
            m = np.isfinite(d) if c.mask is None or c.mask.shape != d.shape else c.mask & np.isfinite(d)
            ds_.append(d)
            ms.append(self._mask(m))
        return np.stack(ds_), np.stack(ms)


def run(args) -> int:
    import jax

    if args.distributed:
        kw = {}
        if args.coordinator:
            kw = dict(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
            )
        jax.distributed.initialize(**kw)

    from diffscat._files import check_input_file, check_output
    from diffscat._preflight import check_memory
    from diffscat.detectors import angular_mask

    from ._batch import batch_fit, merge_parts
    from ._batch_fitters import EllipsoidBatchFitter, SphereBatchFitter

    check_input_file(args.config, "config")
    check_input_file(args.data, "data")
    check_output(args.out, inputs=[args.data, args.config], name="-o")
    check_output(args.out + ".parts", inputs=[args.data, args.config], folder=True, name="-o parts folder")
    cfg = load_batch_config(args.config, args.set)
    if args.merge_only:
        counts = merge_parts(args.out)
        print(json.dumps(counts))
        return 0
    src = CXISource(
        args.data,
        cfg["data"]["length_unit"],
        cfg["data"]["entry"],
        allow_external=args.allow_external_links,
    )
    fit = cfg["fit"]
    if fit["beamstop_deg"] > 0:
        src.extra_mask = np.asarray(angular_mask(src.experiment, theta_min_deg=fit["beamstop_deg"]))
    m = cfg["model"]
    common = dict(
        delta=m["delta"],
        beta=m["beta"],
        radius_range=(m["radius_min"], m["radius_max"]),
        n_candidates=fit["n_candidates"],
        loss=fit["loss"],
        polarisation=fit["polarisation"],
        pitch=fit.get("pitch"),
    )
    if m["type"] == "Sphere":
        fitter = SphereBatchFitter(src.experiment, n_steps=fit["n_steps"], n_theta=fit["n_theta"], **common)
        units = {"radius": cfg["data"]["length_unit"]}
    else:
        extra = {k: fit[k] for k in ("n_starts", "learning_rate") if k in fit}
        if "max_aspect" in m:
            extra["max_aspect"] = m["max_aspect"]
        fitter = EllipsoidBatchFitter(src.experiment, n_steps=fit["n_steps"], **extra, **common)
        units = {"semi_axes": cfg["data"]["length_unit"]}
    chunk = args.chunk_size or cfg["batch"]["chunk_size"]
    if chunk < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {chunk}")
    check_memory(
        fitter.grid.shape,
        math.prod(src.image_shape),
        batch=chunk,
        grad=True,
        what=f"batch-fit of {chunk} patterns per chunk",
        knobs="a smaller --chunk-size / [batch] chunk_size, a smaller [model] radius_max or a coarser pitch",
    )
    job = {"config": cfg, "data": os.path.abspath(args.data), "n": len(src)}
    summary = batch_fit(
        src,
        fitter,
        args.out,
        chunk_size=chunk,
        resume=args.resume,
        config=job,
        units=units,
        progress=not args.no_progress,
        max_chunks=args.max_chunks,
    )
    print(
        f"{summary.fitted_now} pattern(s) fitted now in {summary.seconds:.1f} s "
        f"({summary.rate:.2f}/s); totals: {json.dumps(summary.counts)}; results: {summary.path}"
    )
    if summary.fitted_now and summary.counts.get("pending", 0) == 0:
        _histograms(args.out)
    return 0


def _histograms(out: str) -> None:
    """Parameter histograms of the finished job next to the results file (PNG)."""
    from diffscat.plot import pyplot as _plt, save_figure

    from ._batch import read_results

    res = read_results(out)
    names = [k for k in ("radius", "scale", "loss") if k in res]
    ok = np.asarray(res["status"]) == 0
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), dpi=100)
    for ax, k in zip(np.atleast_1d(axes), names, strict=True):
        v = res[k][ok & np.isfinite(res[k])]
        ax.hist(v, bins=min(40, max(5, v.size // 3)) if v.size else 5)
        ax.set_xlabel(k)
    save_figure(fig, os.path.splitext(out)[0] + "_histograms.png")
    plt.close(fig)
