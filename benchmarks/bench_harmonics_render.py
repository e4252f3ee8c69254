"""Cost of a spherical-harmonics pattern and of its gradient in the coefficients (the harmonic fit stages).

    python benchmarks/bench_harmonics_render.py [--size 128] [--lmax 4] [--radius 7] [--repeat 3]

`fitting.expected_signal` of a random `ds.SphericalHarmonics` (radius varying ~10 %, random orientation,
delta -0.01, beta 0.001) on a QGrid `size`^2 at 30 deg, wavelength 1, voxel grid `fitting.ladder_grid` around
1.3 x its bounding radius at the default pitch (what the fits use). Prints the grid, the compiled forward
time and the compiled value_and_grad time of a squared-difference loss in the coefficients (orientation fixed,
as in the harmonic stages), the mean of `--repeat` calls after one warm-up, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time(fn, *args, repeat: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t) / repeat


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument("--radius", type=float, default=7.0, help="mean radius, wavelengths")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    import diffscat as ds
    import fitting
    from fitting._fit import ladder_grid

    exp = ds.Experiment(1.0, ds.QGrid(n=a.size, theta_max_deg=30.0))
    n = (a.lmax + 1) ** 2
    c = np.zeros(n)
    c[0] = a.radius * np.sqrt(4 * np.pi)
    c[1:] = np.random.default_rng(3).normal(size=n - 1) * 0.1 * c[0] / np.sqrt(max(n - 1, 1))
    rot = np.asarray(ds.rotation_from_euler(np.array([0.3, 0.7, 0.2])))
    truth = ds.SphericalHarmonics(c, -0.01, 0.001, rotation=rot)
    grid = ladder_grid(1.3 * float(truth.bounding_radius()), ds.default_pitch(*exp.sampling_hint))
    target = jnp.asarray(fitting.expected_signal(truth, exp, grid))

    def loss(cc):
        s = ds.SphericalHarmonics(cc, -0.01, 0.001, rotation=rot)
        return jnp.sum((fitting.expected_signal(s, exp, grid) - target) ** 2)

    c1 = jnp.asarray(c * 1.01, jnp.result_type(float))
    fwd = _time(jax.jit(loss), c1, repeat=a.repeat)
    vg = _time(jax.jit(jax.value_and_grad(loss)), c1, repeat=a.repeat)
    print(
        f"{a.size}^2 lmax {a.lmax} grid {grid.shape}: forward {fwd:.3f} s, value_and_grad {vg:.3f} s "
        f"(ratio {vg / fwd:.2f}); devices {jax.devices()}; load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
