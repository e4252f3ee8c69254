"""Accuracy map vs Mie: eq. 9 (method="msft"), the propagating multislice and pymsft's pMSFT.

For each sphere (radius R, n = 1 - delta + i beta) the 10-30 deg azimuthal profile of dsigma/dOmega is compared
with Mie |S1|^2 (miepython): rel-L2 with both profiles normalised to unit integral ("err"), and the ratio of
the integrals ("scale", absolute units; pMSFT has no absolute scale). QGrid n^2 at 30 deg, default voxel grid
(lambda/4 partial-volume voxels). pMSFT (pymsft 1.0.2, where importable) gets the same voxels; its image is
|FFT(exit wave - incident)|^2 on its own FFT q grid, converted to dsigma/dOmega up to a constant by
cos^2(theta) (far field of an exit wave, docs/accuracy.md) and divided by the voxel kernel's transfer like ours.

Run:
    PYTHONPATH=. .venv/bin/python benchmarks/accuracy_map.py --quick          # R = 3, 7; a few delta, beta
    PYTHONPATH=. .venv/bin/python benchmarks/accuracy_map.py                  # the full map (R = 3, 7, 12)
    ... --radii 3 --deltas 0.05,0.1 --betas 0 --no-pymsft
Prints a markdown table and writes JSON to benchmarks/results/accuracy_map.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # references.py: Mie, radial profile, rel_l2

LAM = 1.0
TMAX = 30.0
BINS = np.radians(np.linspace(10, 30, 81))


def _profile(img, theta):
    from references import radial_profile

    sel = (theta >= BINS[0]) & (theta <= BINS[-1])
    _, p = radial_profile(img[sel], theta[sel], BINS)
    return p


def _compare(p, r):
    from references import rel_l2

    w = np.diff(BINS)
    return rel_l2(p / np.sum(p * w), r / np.sum(r * w)), float(np.sum(p * w) / np.sum(r * w))


def _pmsft(sph, grid, k0, nfft):
    """pMSFT image of the same voxels -> (dsigma/dOmega up to a constant, theta) at its pixels below 31 deg."""
    import pyMSFT.simulation as pysim

    import diffscat as ds

    dn = np.asarray(sph.render(grid), np.complex128)
    if grid.shape[0] % 2:  # pymsft needs an even number of voxels: one empty plane on each high side
        dn = np.pad(dn, ((0, 1), (0, 1), (0, 1)))
    m = dn.shape[0]
    sim = pysim.PMSFTSimulation(
        npix_fft=nfft,
        npix_real=m,
        box_delta=grid.pitch[0],
        wavelength=LAM,
        pool_size=1,
        fftw_plan="FFTW_ESTIMATE",
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        img, (KX, KY) = sim.get_diffraction_image(dn, output_axes=True)
    img, KX, KY = (np.asarray(a) for a in (img, KX, KY))
    s2 = (KX**2 + KY**2) / k0**2
    ok = s2 < math.sin(math.radians(31)) ** 2
    theta = np.arcsin(np.sqrt(s2[ok]))
    phi = np.arctan2(KY[ok], KX[ok])
    exp = ds.Experiment(LAM, ds.Directions(theta, phi))
    transfer = sph.blur_transfer(grid, exp.pixels().q(k0))
    val = img[ok] * np.cos(theta) ** 2
    if transfer is not None:
        val = val / np.abs(np.asarray(transfer)) ** 2
    return val, theta


def run(radii, deltas, betas, n, use_pymsft, nfft):
    import equinox as eqx
    import jax
    from references import mie_dcs

    import diffscat as ds

    if use_pymsft:
        try:
            import pyMSFT.simulation  # noqa: F401
        except ImportError:
            print("pymsft not importable: pMSFT column skipped")
            use_pymsft = False
    exp = ds.Experiment(LAM, ds.QGrid(n, TMAX))
    theta = np.asarray(exp.theta)
    k0 = 2 * math.pi / LAM
    rows = []
    for R in radii:
        grid = ds.default_grid(ds.Sphere(R), exp)
        sims = {
            m: eqx.filter_jit(lambda s, m=m: ds.simulate(s, exp, method=m, grid=grid))
            for m in ("msft", "propagating")
        }
        for delta in deltas:
            for beta in betas:
                if delta == 0 and beta == 0:
                    beta = 1e-3  # n = 1 does not scatter: the team's weak reference case
                sph = ds.Sphere(R, delta, beta)
                ref = _profile_mie(R, delta, beta, theta, mie_dcs)
                row = dict(R=R, delta=delta, beta=beta)
                for m, f in sims.items():
                    t = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ds.ValidityWarning)
                        img = np.asarray(jax.block_until_ready(f(sph)))
                    row[f"t_{m}"] = time.perf_counter() - t
                    row[f"err_{m}"], row[f"scale_{m}"] = _compare(_profile(img, theta), ref)
                if use_pymsft:
                    t = time.perf_counter()
                    val, th = _pmsft(sph, grid, k0, nfft)
                    row["t_pmsft"] = time.perf_counter() - t
                    row["err_pmsft"], _ = _compare(
                        _profile(val, th), _profile_mie(R, delta, beta, th, mie_dcs)
                    )
                rows.append(row)
                pm = f"  pMSFT {row['err_pmsft']:.4f}" if use_pymsft else ""
                print(
                    f"R={R:4.1f} delta={delta:+.3f} beta={beta:.3f}  eq9 {row['err_msft']:.4f} "
                    f"(scale {row['scale_msft']:.3f})  propagating {row['err_propagating']:.4f} "
                    f"(scale {row['scale_propagating']:.3f}){pm}",
                    flush=True,
                )
    return rows


def _profile_mie(R, delta, beta, theta, mie_dcs):
    sel = (theta >= BINS[0]) & (theta <= BINS[-1])
    full = np.zeros_like(theta)
    full[sel] = mie_dcs(R, delta, beta, LAM, theta[sel])
    return _profile(full, theta)


def table(rows):
    has_pm = any("err_pmsft" in r for r in rows)
    head = "| R (λ) | δ | β | eq. 9 err | propagating err | " + ("pMSFT err | " if has_pm else "")
    head += "eq. 9 scale | propagating scale |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        pm = f"{r['err_pmsft']:.4f} | " if has_pm else ""
        lines.append(
            f"| {r['R']:g} | {r['delta']:g} | {r['beta']:g} | {r['err_msft']:.4f} | {r['err_propagating']:.4f} | "
            f"{pm}{r['scale_msft']:.3f} | {r['scale_propagating']:.3f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="R = 3, 7; delta 0, 0.02, 0.05, 0.1, 0.2, -0.05; beta 0, 0.01"
    )
    ap.add_argument("--radii", default="3,7,12")
    ap.add_argument("--deltas", default="0,0.02,0.05,0.1,0.2,0.3,-0.02,-0.05")
    ap.add_argument("--betas", default="0,0.01,0.05,0.1")
    ap.add_argument("--n", type=int, default=128, help="QGrid pixels per side (30 deg)")
    ap.add_argument("--no-pymsft", action="store_true")
    ap.add_argument(
        "--nfft",
        type=int,
        default=1024,
        help="pMSFT FFT size (q spacing lambda/(nfft pitch): 0.22 deg at 1024)",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "accuracy_map.json"))
    a = ap.parse_args()
    if a.quick:
        a.radii, a.deltas, a.betas = "3,7", "0,0.02,0.05,0.1,0.2,-0.05", "0,0.01"
    parse = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    rows = run(parse(a.radii), parse(a.deltas), parse(a.betas), a.n, not a.no_pymsft, a.nfft)
    print()
    print(table(rows))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(dict(n=a.n, theta_max=TMAX, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
