"""Fit a sphere to an exact Mie pattern (miepython) with Poisson noise, a beamstop and an unknown fluence.

The pattern is the unpolarised Mie cross-section (|S1|^2 + |S2|^2) / (2 k0^2) times the pixel solid angle,
scaled to `--photons` and drawn with Poisson noise; the fit starts 15 % off and knows only delta and beta.
miepython is a test-only dependency (pip install miepython).

python examples/fit_sphere_mie.py [--n 128] [--small] [--out out]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import diffscat as ds
import fitting


def mie_pattern(exp, radius, delta, beta, photons, seed=0):
    import miepython

    lam = float(exp.wavelength)
    k0 = 2 * np.pi / lam
    th = np.asarray(exp.theta)
    fine = np.linspace(0, th.max(), 4000)
    s1, s2 = miepython.S1_S2(complex(1 - delta, beta), k0 * radius, np.cos(fine), norm="wiscombe")
    dcs = np.interp(th, fine, (np.abs(s1) ** 2 + np.abs(s2) ** 2) / (2 * k0**2))
    mean = dcs * np.asarray(exp.solid_angle)
    return np.random.default_rng(seed).poisson(mean / mean.sum() * photons).astype(float)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128, help="pixels per side")
    ap.add_argument("--small", action="store_true", help="tiny run (24 pixels, R = 2.5 lambda)")
    ap.add_argument("--radius", type=float, default=7.0, help="true radius, wavelengths")
    ap.add_argument("--delta", type=float, default=-0.01)
    ap.add_argument("--photons", type=float, default=1e6)
    ap.add_argument("--out", default="out")
    args = ap.parse_args(argv)
    n, R = (24, 2.5) if args.small else (args.n, args.radius)

    exp = ds.Experiment(1.0, ds.QGrid(n=n, theta_max_deg=30.0))
    data = mie_pattern(exp, R, args.delta, 0.001, args.photons)
    mask = np.asarray(exp.theta) > np.radians(2.5)
    t = time.perf_counter()
    res = fitting.fit(data, exp, ds.Sphere(1.15 * R, args.delta, 0.001), mask, polarisation="unpolarised")
    r, s = float(res.model.radius), float(res.sigmas["radius"])
    print(
        f"radius {r:.4f} +- {s:.4f} (true {R}, error {100 * (r - R) / R:+.2f} %), {res.n_steps} steps, "
        f"{time.perf_counter() - t:.1f} s"
    )
    os.makedirs(args.out, exist_ok=True)
    import matplotlib.pyplot as plt

    plt.close(fitting.plot_report(res, os.path.join(args.out, "fit_sphere_mie.png"), title="sphere vs Mie"))
    return res


if __name__ == "__main__":
    main()
