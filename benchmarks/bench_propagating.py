"""Cost of method="propagating" vs eq. 9 ("msft"): forward and value_and_grad, sphere on a QGrid at 30 deg.

Run: `PYTHONPATH=. .venv/bin/python benchmarks/bench_propagating.py [--radii 3,7] [--n 256] [--repeats 5]`.
Times are medians after a warm-up (compilation excluded), float32, whatever device jax picks; both methods
run in the same process, interleaved, so ratios are fair under load. Gradient: d/d(radius, delta) of a
weighted squared misfit. JSON goes to benchmarks/results/bench_propagating.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _timeit(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radii", default="3,7")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_propagating.json"))
    a = ap.parse_args()

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import diffscat as ds
    from diffscat.engines._propagate import padded_shape

    exp = ds.Experiment(1.0, ds.QGrid(a.n, 30.0))
    rows = []
    print(f"device: {jax.devices()[0]}")
    for R in (float(r) for r in a.radii.split(",")):
        p0 = jnp.array([R, a.delta], jnp.float32)
        grid = ds.default_grid(ds.Sphere(R, a.delta, 0.001), exp)
        row = dict(R=R, n=a.n, grid=grid.shape, padded=padded_shape(grid))
        for m in ("msft", "propagating"):
            target = ds.simulate(ds.Sphere(R * 1.01, a.delta, 0.001), exp, grid=grid, method=m)
            w = 1.0 / (target + 1e-3 * jnp.max(target))

            def loss(p, m=m, w=w, target=target):
                img = ds.simulate(ds.Sphere(p[0], p[1], 0.001), exp, grid=grid, method=m)
                return jnp.sum(w * (img - target) ** 2)

            fwd = eqx.filter_jit(loss)
            vg = eqx.filter_jit(jax.value_and_grad(loss))
            row[f"fwd_{m}"] = _timeit(lambda fwd=fwd: fwd(p0).block_until_ready(), a.repeats)
            row[f"vg_{m}"] = _timeit(lambda vg=vg: jax.block_until_ready(vg(p0)), a.repeats)
            row[f"finite_{m}"] = bool(np.all(np.isfinite(np.asarray(vg(p0)[1]))))
        row["fwd_ratio"] = row["fwd_propagating"] / row["fwd_msft"]
        row["grad_ratio"] = row["vg_propagating"] / row["fwd_propagating"]
        rows.append(row)
        print(
            f"R={R:g} n={a.n} grid={grid.shape[0]}^3 padded {row['padded'][0]}^2: forward eq9 "
            f"{row['fwd_msft'] * 1e3:.1f} ms, propagating {row['fwd_propagating'] * 1e3:.1f} ms "
            f"(x{row['fwd_ratio']:.2f}); value_and_grad eq9 {row['vg_msft'] * 1e3:.1f} ms, propagating "
            f"{row['vg_propagating'] * 1e3:.1f} ms (x{row['grad_ratio']:.2f} its forward); finite "
            f"{row['finite_msft'] and row['finite_propagating']}",
            flush=True,
        )
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(dict(device=str(jax.devices()[0]), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
