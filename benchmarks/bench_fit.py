"""Fit speed, compile and run times apart: sphere, ellipsoid and spherical harmonics (lmax 3 and 6), all
from no initial guess, on an n x n QGrid (30 deg) pattern.

python benchmarks/bench_fit.py [--size 128] [--cases sphere,ellipsoid,sh3,sh6] [--x64] [--patterns 2|1|3]
    [--coarse N] [--profile N] [--init default]

`--coarse N` passes `coarse=N` to the drivers (1: every stage at full resolution; 2 or 4: the early stages on
the central n/N x n/N low-q crop, docs/fitting.md "Multi-resolution"); left out, the drivers' default.
`--init MODEL` ("default": the shipped network) starts every fit from the network's prediction instead of the
no-guess searches (`fitting.fit_auto(..., [case's class], init=MODEL)`; the harmonic cases from the network's
own coefficients). `--patterns 1` fits only the first pattern (compile + run together); `--patterns 3` fits
the second pattern a second time ("again"): every step is compiled by then, whatever the size ladder did
between the first two (a second pattern whose search optima land on another grid rung compiles that rung's
steps), so "again" is the compiled run time.

Per case two patterns of similar size (true sizes 2 % apart, other noise; the number of new compilations of
the fit's jitted steps is printed): the first fit includes the
compilation; the second, of ANOTHER pattern, finds every step compiled (the voxel grid is on a coarse size
ladder, the start batch padded, the harmonic degrees a data mask), so compile ~ t(first) - t(second) and
run = t(second). Also prints the process CPU time (user + system, all threads: less sensitive to other jobs
on a shared machine than the wall time), the sum of the stages' first-step times (`FitResult.compile_s`) and the load
average (the machine may be shared: times scale with it).
Targets (idle 2-core CPU, 128^2): ellipsoid <= 20 s; SH lmax 3 <= 60 s including compilation and <= 20 s
compiled; SH lmax 6 <= 120 s.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import jax
import numpy as np


def _pattern(truth, exp, photons, seed):
    import diffscat as ds
    import fitting

    r = float(np.asarray(truth.bounding_radius()))
    mean = np.asarray(fitting.expected_signal(truth, exp, ds.VoxelGrid.around(r + 0.5, 1 / 6)))
    return np.random.default_rng(seed).poisson(mean / mean.sum() * photons).astype(float)


def _truth(case, scale, lmax):
    import diffscat as ds
    import fitting

    R = 7.0 * scale
    rot = fitting.random_rotations(1, 5)[0]
    if case == "sphere":
        return ds.Sphere(R, -0.01, 0.001)
    if case == "ellipsoid":
        return ds.Ellipsoid(R * np.array([1.15, 1.0, 0.85]), -0.01, 0.001, rotation=rot)
    rng = np.random.default_rng(3)
    c = np.zeros((lmax + 1) ** 2)
    c[0] = R * np.sqrt(4 * np.pi)
    c[1:] = rng.normal(size=c.size - 1) * 0.1 * c[0] / np.sqrt(c.size - 1)
    return ds.SphericalHarmonics(c, -0.01, 0.001, rotation=rot)


def _n_compiled():
    """Compiled variants held by the fit driver's jitted functions (a growth = a compilation)."""
    from fitting import _fit

    return sum(
        getattr(_fit, f)._cached._cache_size() for f in ("_step", "_gn_step", "_init_state", "_finalize")
    )


def _iou(truth, model):
    import fitting

    return float(fitting.iou(truth, model))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="detector pixels per side")
    ap.add_argument("--cases", default="sphere,ellipsoid,sh3,sh6")
    ap.add_argument("--photons", type=float, default=1e7)
    ap.add_argument("--x64", action="store_true", help="float64 (default float32)")
    ap.add_argument("--patterns", type=int, default=2, choices=(1, 2, 3), help="patterns per case")
    ap.add_argument("--coarse", type=int, default=None, help="coarse= for the drivers (default: theirs)")
    ap.add_argument("--init", default=None, help="network start: a model file or 'default' (the shipped one)")
    ap.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile the last pattern: its N slowest calls"
    )
    args = ap.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import diffscat as ds
    import fitting

    print(f"devices: {jax.devices()}, x64={args.x64}, {args.size}^2, load average {os.getloadavg()}")
    exp = ds.Experiment(1.0, ds.QGrid(n=args.size, theta_max_deg=30.0))
    mask = np.asarray(exp.theta) > np.radians(2.5)
    kw = dict(delta=-0.01, beta=0.001)
    if args.coarse is not None:
        kw["coarse"] = args.coarse
    for case in args.cases.split(","):
        lmax = int(case[2:]) if case.startswith("sh") else 0
        times, line = [], []
        for k, scale in enumerate((1.0, 0.98, 0.98)[: args.patterns]):
            n0 = _n_compiled()
            truth = _truth(case, scale, lmax)
            data = _pattern(truth, exp, args.photons, 10 + min(k, 1))  # the third: the second again
            prof = None
            if args.profile and k == args.patterns - 1:
                prof = cProfile.Profile()
                prof.enable()
            t, c = time.perf_counter(), time.process_time()
            if args.init is not None:
                cls = {"sphere": "Sphere", "ellipsoid": "Ellipsoid"}.get(case, "SphericalHarmonics")
                res = fitting.fit_auto(data, exp, [cls], mask, lmax=lmax or 4, init=args.init, **kw)
            elif case == "sphere":
                res = fitting.fit_sphere_auto(data, exp, mask, **kw)
            elif case == "ellipsoid":
                res = fitting.fit_ellipsoid_auto(data, exp, mask, **kw)
            else:
                res = fitting.fit_spherical_harmonics(data, exp, lmax, mask, **kw)
            times.append(time.perf_counter() - t)
            cpu = time.process_time() - c
            if prof is not None:  # where the wall time goes outside the compiled steps (host work)
                prof.disable()
                for key in ("cumulative", "tottime"):  # nested callers, then where the time itself is spent
                    pstats.Stats(prof).sort_stats(key).print_stats(args.profile)
            stages = res.stages or [res]
            first_steps = sum(s.compile_s for s in stages)
            steps = "/".join(str(s.n_steps) for s in stages)
            stage_s = "/".join(f"{s.time_s:.0f}" for s in stages)
            line.append(
                f"{('first', 'second pattern', 'again')[k]} {times[-1]:.1f} s, CPU {cpu:.1f} s "
                f"(first steps {first_steps:.1f} s, "
                f"steps {steps}, stage s {stage_s}, {_n_compiled() - n0} compilations, "
                f"NLL {res.loss:.1f}, IoU {_iou(truth, res.model):.3f})"
            )
        split = f"compile ~{times[0] - times[-1]:.1f} s, run {times[-1]:.1f} s" if len(times) > 1 else ""
        print(
            f"{case:9s} {args.size}^2: {split} | " + "; ".join(line) + f" | load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
