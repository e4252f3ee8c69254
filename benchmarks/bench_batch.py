"""Batch-inversion throughput: patterns/s of `fitting.SphereBatchFitter` (sphere fits, 128 x 128 flat detector).

    python benchmarks/bench_batch.py [--n 32] [--size 128] [--chunk 16]

Simulates N Poisson sphere patterns (radius 3-6 wavelengths, ~1e6 photons), then times the jit-compiled, vmapped
fitter per chunk after warm-up (compile time reported separately). Prints a table and writes
benchmarks/results/bench_batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffscat as ds
from diffscat.detectors import polarisation_factor
from fitting._batch_fitters import SphereBatchFitter


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=16)
    a = ap.parse_args(argv)
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
    row = {
        "device": jax.devices()[0].device_kind,
        "platform": platform.processor() or platform.machine(),
        "patterns": a.n,
        "size": a.size,
        "chunk": a.chunk,
        "build_s": t1 - t0,
        "compile_first_chunk_s": t2 - t1,
        "fit_s": t3 - t2,
        "patterns_per_s": a.n / (t3 - t2),
        "median_rel_err": float(np.median(err)),
        "max_rel_err": float(np.max(err)),
    }
    for k, v in row.items():
        print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/bench_batch.json", "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
