"""Fit a spherical-harmonic shape (lmax 3, ~10 % deformations) with no initial guess.

The pattern comes from a simulation on a finer voxel grid, with Poisson noise and a beamstop;
`fitting.fit_spherical_harmonics` climbs sphere -> ellipsoid -> harmonics (every degree <= lmax at once from
the ellipsoid made compact along the beam; other routes if that ends as a misfit). Prints the volume IoU with
the truth (up to the point-inversion twin).

python examples/fit_harmonics.py [--n 48] [--lmax 3] [--small] [--out out]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import diffscat as ds
import fitting


def iou(a, b, pts):
    A = np.asarray(a.occupancy(pts)) > 0.5
    B = np.asarray(b.occupancy(pts)) > 0.5
    return float((A & B).sum() / (A | B).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--lmax", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="tiny run (16 pixels, lmax 2, 2 starts)")
    ap.add_argument("--out", default="out")
    args = ap.parse_args(argv)
    n, lmax, starts, R = (16, 2, 2, 2.0) if args.small else (args.n, args.lmax, 12, 4.0)

    exp = ds.Experiment(1.0, ds.QGrid(n=n, theta_max_deg=30.0))
    rng = np.random.default_rng(3)
    c = np.zeros((lmax + 1) ** 2)
    c[0] = R * np.sqrt(4 * np.pi)
    c[1:] = rng.normal(size=c.size - 1) * 0.1 * c[0] / np.sqrt(c.size - 1)
    truth = ds.SphericalHarmonics(c, -0.01, 0.001, rotation=fitting.random_rotations(1, 5)[0])
    fine = ds.VoxelGrid.around(float(truth.bounding_radius()) + 0.5, 1 / 6)
    mean = np.asarray(fitting.expected_signal(truth, exp, fine))
    data = np.random.default_rng(4).poisson(mean / mean.sum() * 1e6).astype(float)
    mask = np.asarray(exp.theta) > np.radians(2.5)

    t = time.perf_counter()
    res = fitting.fit_spherical_harmonics(data, exp, lmax, mask, delta=-0.01, beta=0.001, n_starts=starts)
    pts = ds.VoxelGrid.around(1.3 * float(truth.bounding_radius()), R / 40).points()
    score = max(iou(truth, res.model, pts), iou(truth, res.model, -pts))
    print(f"IoU with the truth {score:.3f}; {time.perf_counter() - t:.1f} s over {len(res.stages)} stages")
    os.makedirs(args.out, exist_ok=True)
    import matplotlib.pyplot as plt

    plt.close(
        fitting.plot_report(res, os.path.join(args.out, "fit_harmonics.png"), title=f"harmonics lmax {lmax}")
    )
    return res


if __name__ == "__main__":
    main()
