"""What a fit's compiled programs cost: optimised HLO instructions and resident memory, per model.

python benchmarks/bench_programs.py [--size 64] [--models ellipsoid,harmonics,cube] [--steps 20]

For each model: one `fitting.fit` (L-BFGS, `--steps` steps, float32, QGrid `--size`² at 30°, 1e6 photons, the
truth's own class from a start 3 % off) in a process whose XLA dumps the optimised HLO of the fit's jitted step
and finalisation (`_step`, `_finalize`) to a temporary folder. Prints, per program, the number of instructions
after optimisation, and the process's resident set after `malloc_trim` before and after the fit (what its
compiled programs keep: on the CPU ~3-5 KiB per optimised instruction, docs/performance.md "Compiled
programs"). Then `jax.clear_caches()` and the resident set again (what the caches freed).

No persistent compilation cache (every program compiles here). Numbers from an idle 2-core CPU are in
docs/performance.md (session 30).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import tempfile
import time


def _instructions(path: str) -> int:
    """Instructions of an optimised HLO text dump: lines defining a value (`%name = ...`)."""
    pat = re.compile(r"^\s*(ROOT )?%\S+ = ")
    with open(path) as f:
        return sum(1 for line in f if pat.match(line))


def _truth(model: str):
    import numpy as np

    import diffscat as ds
    import fitting

    rot = fitting.random_rotations(1, 5)[0]
    if model == "ellipsoid":
        return ds.Ellipsoid(5.0 * np.array([1.15, 1.0, 0.85]), -0.01, 0.002, rotation=rot)
    if model == "harmonics":
        c = np.zeros(25)
        c[0] = 5.0 * np.sqrt(4 * np.pi)
        c[1:] = np.random.default_rng(3).normal(size=24) * 0.1 * c[0] / np.sqrt(24)
        return ds.SphericalHarmonics(c, -0.01, 0.002, rotation=rot)
    if model == "cube":
        return ds.Cube(8.0, -0.01, 0.002, rotation=rot)
    raise ValueError(f"unknown model {model!r}; choose from ellipsoid, harmonics, cube")


def _start(truth):
    import jax

    return jax.tree.map(lambda x: x * 1.03 if x.dtype.kind == "f" and x.ndim <= 1 else x, truth)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="detector pixels per side")
    ap.add_argument("--models", default="ellipsoid,harmonics,cube")
    ap.add_argument("--steps", type=int, default=20, help="L-BFGS steps per fit")
    a = ap.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]

    dump = tempfile.mkdtemp(prefix="bench_programs_")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*_step.*|.*_finalize.*"
    )
    import jax  # after XLA_FLAGS

    import diffscat as ds
    import fitting
    from fitting._jitmem import rss_mib, trim_heap

    if jax.config.jax_compilation_cache_dir:
        print(
            "note: a persistent compilation cache is set; programs found there are not dumped",
            file=sys.stderr,
        )
    exp = ds.Experiment(1.0, ds.QGrid(n=a.size, theta_max_deg=30.0))
    print(f"devices: {jax.devices()}, {a.size}^2, {a.steps} L-BFGS steps per fit")
    import numpy as np

    for model in models:
        truth = _truth(model)
        grid = ds.VoxelGrid.around(float(np.asarray(truth.bounding_radius())) + 0.5, 1 / 6)
        mean = np.asarray(fitting.expected_signal(truth, exp, grid))
        data = np.random.default_rng(0).poisson(mean / mean.sum() * 1e6).astype(np.float32)
        before = set(os.listdir(dump))
        gc.collect()
        trim_heap()
        r0 = rss_mib()
        t = time.perf_counter()
        res = fitting.fit(data, exp, _start(truth), max_steps=a.steps, uncertainties=True)
        dt = time.perf_counter() - t
        gc.collect()
        trim_heap()
        r1 = rss_mib()
        jax.clear_caches()
        gc.collect()
        trim_heap()
        r2 = rss_mib()
        # "<module>.<name>.<backend>_after_optimizations.txt": the optimised HLO (not its -buffer-assignment etc.)
        new = sorted(f for f in set(os.listdir(dump)) - before if f.endswith("after_optimizations.txt"))
        counts = [(f.split(".")[1], _instructions(os.path.join(dump, f))) for f in new]
        progs = ", ".join(f"{n} {c}" for n, c in counts)
        print(
            f"{model:10s} fit {dt:6.1f} s (loss {float(res.loss):.1f}) | optimised HLO instructions: {progs} "
            f"(total {sum(c for _, c in counts)}) | RSS {r0:.0f} -> {r1:.0f} MiB (+{r1 - r0:.0f}), "
            f"after clear_caches {r2:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
