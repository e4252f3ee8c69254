"""Batch-inversion throughput: patterns/s and peak memory of the batch fitters.

    python benchmarks/bench_batch.py [--model sphere] [--n 32] [--size 128] [--chunk 16]
    python benchmarks/bench_batch.py --model ellipsoid --n 3 --size 64 --chunk 3      # EllipsoidBatchFitter
    python benchmarks/bench_batch.py --model ellipsoid-auto --n 3 --size 64           # same data, fit_auto path
    python benchmarks/bench_batch.py --model harmonics --lmax 4 --n 3 --size 64       # AutoBatchFitter, SH
    python benchmarks/bench_batch.py --model Cube --n 3 --size 64                     # any fit_auto class
    python benchmarks/bench_batch.py --model ellipsoid-auto --init default --n 12 --size 64 --chunk 4
    python benchmarks/bench_batch.py --model ellipsoid-auto --init default --ellipsoid-start network --n 12 --size 64 --chunk 4
    python benchmarks/bench_batch.py --model harmonics --n 16 --size 128 --chunk 8 --lockstep on  # GPU path
                                                                  # network-started (the shipped model)

`sphere` (the original benchmark): N Poisson sphere patterns (radius 3-6 wavelengths, ~1e6 photons) on a
`size`^2 flat detector, timed through the jit-compiled, vmapped `SphereBatchFitter` per chunk after warm-up.
The other models: N Poisson patterns of random ellipsoids (equal-volume radius 4-6 nm, axis ratios 0.7-1,
lambda 1 nm, ~1e5 photons, `size`^2 QGrid to 30 deg; `Cube` etc.: that polyhedron of the same volume) fitted by
the vmapped `EllipsoidBatchFitter` (`ellipsoid`) or by `AutoBatchFitter` (per-pattern `fitting.fit_auto`:
`ellipsoid-auto`, `harmonics`, any class of `fitting.CANDIDATES`). The first chunk (`--chunk` patterns) is the
warm-up (it compiles); patterns/s are over the remaining patterns, or, when N <= chunk, over patterns 2..N of
a one-pattern-at-a-time run after the first (per-pattern fitters; the vmapped one then times nothing and the
run measures its peak memory for a chunk of N; `--steps` does not change that memory: the steps are a scan). Peak RSS of the process (`resource.getrusage`) is reported.
Prints a table and writes benchmarks/results/bench_batch[_MODEL].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffscat as ds
from diffscat.detectors import expected_photons, polarisation_factor
from fitting import POLYHEDRA
from fitting._batch_fitters import EllipsoidBatchFitter, SphereBatchFitter

OPT = dict(delta=0.01, beta=0.002)


def _peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _sphere(a):
    rng = np.random.default_rng(0)
    exp = ds.Experiment(1.0, ds.FlatDetector(60.0, 0.3 * 128 / a.size, (a.size, a.size)))
    pix = exp.pixels()
    w = np.asarray(pix.solid_angle * polarisation_factor(pix, "unpolarised"))
    radii = rng.uniform(3.0, 6.0, a.n)
    data = []
    for r in radii:
        mu = np.asarray(ds.simulate(ds.Sphere(float(r), 0.0, 0.001), exp)) * w
        data.append(rng.poisson(mu / mu.sum() * 1e6))
    data = jnp.asarray(np.stack(data), jnp.float32)
    mask = jnp.ones(data.shape, bool)
    t0 = time.perf_counter()
    fitter = SphereBatchFitter(exp, delta=0.0, beta=0.001, radius_range=(2.5, 7.0))
    t1 = time.perf_counter()
    jax.block_until_ready(fitter(data[: a.chunk], mask[: a.chunk]))
    t2 = time.perf_counter()
    out = []
    for s in range(0, a.n, a.chunk):
        out.append(jax.block_until_ready(fitter(data[s : s + a.chunk], mask[s : s + a.chunk]))["radius"])
    t3 = time.perf_counter()
    r = np.concatenate([np.asarray(o) for o in out])
    err = np.abs(r / radii - 1)
    return {
        "build_s": t1 - t0,
        "compile_first_chunk_s": t2 - t1,
        "fit_s": t3 - t2,
        "patterns_timed": a.n,
        "patterns_per_s": a.n / (t3 - t2),
        "median_rel_err": float(np.median(err)),
        "max_rel_err": float(np.max(err)),
    }


def _shapes(a):
    """Random ellipsoids (or polyhedra of the same volume) and their true volume-equivalent radii."""
    rng = np.random.default_rng(0)
    shapes, radii = [], []
    for _ in range(a.n):
        r = rng.uniform(4.0, 6.0)
        q = rng.uniform(0.7, 1.0, 2)
        k = r / np.cbrt(q[0] * q[1])
        R = np.asarray(ds.rotation_from_euler(rng.uniform(0, np.pi, 3)))
        if a.model in POLYHEDRA:
            cls = getattr(ds, a.model)
            edge = (4 / 3 * np.pi * r**3 / float(np.asarray(cls(1.0).volume()))) ** (1 / 3)
            shapes.append(cls(edge, rotation=R, **OPT))
        else:
            shapes.append(ds.Ellipsoid(np.array([k, k * q[0], k * q[1]]), rotation=R, **OPT))
        radii.append(r)
    return shapes, np.asarray(radii)


def _general(a):
    exp = ds.Experiment(1.0, ds.QGrid(a.size, 30.0))
    shapes, radii = _shapes(a)
    rng = np.random.default_rng(1)
    grid = ds.VoxelGrid.around(1.1 * max(float(np.asarray(s.bounding_radius())) for s in shapes), 0.25)
    data = []
    for s in shapes:
        mu = np.asarray(expected_photons(ds.simulate(s, exp, grid=grid), exp, 1.0))
        data.append(rng.poisson(mu / mu.sum() * 1e5).astype(float))
    data = np.stack(data)
    mask = np.ones(data.shape, bool)
    t0 = time.perf_counter()
    if a.model == "ellipsoid":
        fitter = EllipsoidBatchFitter(
            exp, radius_range=(3.0, 7.5), polarisation="none", n_steps=a.steps or 200, **OPT
        )
        call = lambda d, m: jax.block_until_ready(fitter(jnp.asarray(d), jnp.asarray(m)))  # noqa: E731
    else:
        from fitting._batch_auto import AutoBatchFitter

        cands = {"ellipsoid-auto": "Ellipsoid", "harmonics": "SphericalHarmonics"}.get(a.model, a.model)
        lockstep = {"auto": "auto", "on": True, "off": False}[a.lockstep]
        fitter = AutoBatchFitter(
            exp, (cands,), lmax=a.lmax, polarisation="none", max_steps=a.steps or 200, init=a.init,
            lockstep=lockstep, **OPT, **({"ellipsoid_start": a.ellipsoid_start} if a.ellipsoid_start else {}),
        )  # fmt: skip
        t_last = [time.perf_counter()]

        def tick():  # per-pattern times as they come (a killed run still reports)
            now = time.perf_counter()
            print(f"pattern done in {now - t_last[0]:.1f} s, peak RSS {_peak_rss_mib():.0f} MiB", flush=True)
            t_last[0] = now

        call = lambda d, m: fitter(d, m, on_pattern=tick)  # noqa: E731
    t1 = time.perf_counter()
    # warm-up: the first chunk; with N <= chunk the per-pattern fitter warms up on one pattern, the vmapped one
    # on all N (one compilation per chunk size; nothing left to time: use it for the peak memory)
    # (lockstep: a whole chunk, as the vmapped fitter: its merged fits compile for the chunk's batch size)
    batched = a.model == "ellipsoid" or (a.model != "sphere" and fitter.uses_lockstep())
    warm = a.chunk if a.n > a.chunk else (a.n if batched else 1)
    first = call(data[:warm], mask[:warm])
    t2 = time.perf_counter()
    outs = [first]
    for s in range(warm, a.n, a.chunk):
        outs.append(call(data[s : s + a.chunk], mask[s : s + a.chunk]))
    t3 = time.perf_counter()
    out = {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}
    if "radius" in out:
        r = out["radius"]
    else:
        r = np.cbrt(np.prod(out["semi_axes"], axis=1))
    err = np.abs(r / radii - 1)
    timed = a.n - warm
    row = {
        "build_s": t1 - t0,
        "first_chunk_s (compiles)": t2 - t1,
        "patterns_in_first_chunk": warm,
        "fit_s": t3 - t2,
        "patterns_timed": timed,
        "patterns_per_s": timed / (t3 - t2) if timed else float("nan"),
        "median_rel_err_radius": float(np.median(err)),
        "max_rel_err_radius": float(np.max(err)),
    }
    if "converged" in out:
        row["converged"] = int(np.sum(out["converged"]))
    if "misfit" in out:
        row["misfit"] = int(np.sum(out["misfit"]))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model", default="sphere", help="sphere | ellipsoid | ellipsoid-auto | harmonics | a class"
    )
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default 200; sphere: fixed 8)")
    ap.add_argument(
        "--init",
        default=None,
        help='per-pattern path: fit_auto(init=...), e.g. "default" (the shipped network)',
    )
    ap.add_argument(
        "--ellipsoid-start",
        default=None,
        choices=("robust", "network"),
        help="with --init: the network-started ellipsoid's route (fit_auto(ellipsoid_start=...); default robust)",
    )
    ap.add_argument(
        "--lockstep",
        default="auto",
        choices=("auto", "on", "off"),
        help="per-pattern path: a chunk's fits merged into vmapped batches (fitting.lockstep_map); "
        "auto = on an accelerator",
    )
    a = ap.parse_args(argv)
    row = {
        "model": a.model,
        "device": jax.devices()[0].device_kind,
        "platform": platform.processor() or platform.machine(),
        "load_avg_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "patterns": a.n,
        "size": a.size,
        "chunk": a.chunk,
    }
    if a.model == "harmonics":
        row["lmax"] = a.lmax
    if a.init is not None:
        row["init"] = a.init
    if a.ellipsoid_start is not None:
        row["ellipsoid_start"] = a.ellipsoid_start
    if a.model not in ("sphere", "ellipsoid"):
        row["lockstep"] = a.lockstep
    row.update(_sphere(a) if a.model == "sphere" else _general(a))
    row["peak_rss_MiB"] = _peak_rss_mib()
    row["load_avg_1min_end"] = os.getloadavg()[0]
    for k, v in row.items():
        print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
    os.makedirs("benchmarks/results", exist_ok=True)
    name = "bench_batch.json" if a.model == "sphere" else f"bench_batch_{a.model}.json"
    if a.init is not None:
        name = name.replace(".json", "_network.json")
    if a.ellipsoid_start is not None:
        name = name.replace(".json", f"_{a.ellipsoid_start}.json")
    with open(os.path.join("benchmarks/results", name), "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
