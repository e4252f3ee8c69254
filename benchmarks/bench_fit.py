"""Fit speed: a sphere fit (after compilation) and a spherical-harmonic (lmax 3) ladder fit of a 128^2 pattern.

python benchmarks/bench_fit.py [--sphere-n 64] [--sh-n 128] [--skip-sh] [--x64]

Prints wall times: the first call (including compilation) and repeated calls (compiled), per stage.
Targets (issue 6): sphere fit < 1 s after compilation on CPU; SH lmax 3 at 128^2 < 60 s on CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sphere-n", type=int, default=64)
    ap.add_argument("--sh-n", type=int, default=128)
    ap.add_argument("--sh-lmax", type=int, default=3)
    ap.add_argument("--skip-sh", action="store_true")
    ap.add_argument("--x64", action="store_true", help="float64 (default float32)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import diffscat as ds
    import fitting

    print(f"devices: {jax.devices()}, x64={args.x64}")
    # --- sphere: 64^2 QGrid, R = 5 lambda, start 10 % off, Poisson 1e6 photons, beamstop 2.5 deg
    R = 5.0
    exp = ds.Experiment(1.0, ds.QGrid(n=args.sphere_n, theta_max_deg=30.0))
    truth = ds.Sphere(R, -0.01, 0.001)
    mean = np.asarray(fitting.expected_signal(truth, exp, ds.VoxelGrid.around(R + 0.5, 1 / 7)))
    data = np.random.default_rng(0).poisson(mean / mean.sum() * 1e6).astype(float)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    t = time.perf_counter()
    res = fitting.fit(data, exp, ds.Sphere(1.1 * R, -0.01, 0.001), mask)
    first = time.perf_counter() - t
    times = []
    for k in range(args.repeat):
        t = time.perf_counter()
        r2 = fitting.fit(data, exp, ds.Sphere((1.1 - 0.02 * k) * R, -0.01, 0.001), mask, grid=res.grid)
        times.append(time.perf_counter() - t)
    print(
        f"sphere {args.sphere_n}^2, grid {res.grid.shape}: first fit {first:.2f} s (incl. compile), "
        f"compiled fits {np.round(times, 3)} s (median {np.median(times):.3f} s, {r2.n_steps} steps); "
        f"radius {float(r2.model.radius):.4f} +- {float(r2.sigmas['radius']):.4f} (true {R})"
    )
    if args.skip_sh:
        return
    # --- spherical harmonics lmax 3, 128^2, no initial guess (the full ladder)
    n, lmax = args.sh_n, args.sh_lmax
    exp = ds.Experiment(1.0, ds.QGrid(n=n, theta_max_deg=30.0))
    rng = np.random.default_rng(3)
    c = np.zeros((lmax + 1) ** 2)
    R = 7.0
    c[0] = R * np.sqrt(4 * np.pi)
    c[1:] = rng.normal(size=c.size - 1) * 0.1 * c[0] / np.sqrt(c.size - 1)
    truth = ds.SphericalHarmonics(c, -0.01, 0.001, rotation=fitting.random_rotations(1, 5)[0])
    mean = np.asarray(
        fitting.expected_signal(truth, exp, ds.VoxelGrid.around(float(truth.bounding_radius()) + 0.5, 1 / 6))
    )
    data = np.random.default_rng(4).poisson(mean / mean.sum() * 1e7).astype(float)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    for label in ("first (incl. compile)", "again (compiled)")[: max(1, min(2, args.repeat))]:
        t = time.perf_counter()
        res = fitting.fit_spherical_harmonics(data, exp, lmax, mask, delta=-0.01, beta=0.001)
        tot = time.perf_counter() - t
        stages = ", ".join(f"{s.time_s:.1f} s/{s.n_steps} steps" for s in res.stages)
        pts = ds.VoxelGrid.around(1.3 * float(truth.bounding_radius()), 0.15).points()
        A = np.asarray(truth.occupancy(pts)) > 0.5
        iou = max(
            float((A & (B := np.asarray(res.model.occupancy(p)) > 0.5)).sum() / (A | B).sum())
            for p in (pts, -pts)
        )
        print(f"SH lmax {lmax} at {n}^2, {label}: {tot:.1f} s (stages {stages}), IoU {iou:.3f}")


if __name__ == "__main__":
    main()
