"""Demo: simulate the wide-angle pattern of a prolate helium droplet and write a figure.

python examples/demo.py --out out            # 256 x 256 pixels, theta_max 30 deg
python examples/demo.py --n 32 --out /tmp/x  # tiny, as the test suite runs it
"""

from __future__ import annotations

import argparse
import os
import time

import jax.numpy as jnp
import numpy as np

import diffscat as ds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out", help="output folder (created)")
    ap.add_argument("--n", type=int, default=256, help="detector pixels per side")
    ap.add_argument("--theta-max", type=float, default=30.0, help="largest angle along the axes, deg")
    args = ap.parse_args(argv)

    wavelength = 13.5  # nm (91.8 eV, an HHG / FEL line)
    # A prolate helium droplet, 90 x 90 x 120 nm semi-axes, long axis tilted 35 deg out of the beam axis.
    # delta, beta: illustrative weakly absorbing values in the MSFT's quantitative range.
    rot = ds.rotation_from_euler(jnp.array([30.0, 35.0, 0.0]), "ZYZ", degrees=True)
    droplet = ds.Ellipsoid((90.0, 90.0, 120.0), delta=0.003, beta=0.001, rotation=rot)
    exp = ds.Experiment(wavelength, ds.QGrid(n=args.n, theta_max_deg=args.theta_max))

    t0 = time.perf_counter()
    image = ds.simulate(droplet, exp).block_until_ready()
    t1 = time.perf_counter()
    image = ds.simulate(droplet, exp).block_until_ready()
    t2 = time.perf_counter()
    grid = ds.default_grid(droplet, exp)
    print(
        f"grid {grid.shape} voxels at pitch {grid.pitch[0]:.2f} nm; first call {t1 - t0:.2f} s, then {t2 - t1:.3f} s"
    )

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "demo_pattern.png")
    ds.plot.plot_pattern(
        image,
        exp,
        path,
        title=f"He droplet 90x90x120 nm, lambda {wavelength} nm (MSFT)",
    )
    print(f"total dsigma/dOmega max {float(np.max(image)):.4g} nm^2/sr; wrote {path}")
    return path


if __name__ == "__main__":
    main()
