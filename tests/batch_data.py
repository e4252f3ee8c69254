"""Small simulated CXI datasets for the batch-fit tests (independent of the fitter: full 2-D simulation)."""

from __future__ import annotations

import numpy as np

import diffscat as ds
from diffscat.detectors import polarisation_factor
from diffscat.io import write_cxi

CONFIG = """
[data]
length_unit = "nm"
[model]
type = "Sphere"
delta = 0.0
beta = 0.001
radius_min = 2.0
radius_max = 5.0
[fit]
n_candidates = 40
n_theta = 160
n_steps = 6
beamstop_deg = 2.0
[batch]
chunk_size = 4
"""


def make_dataset(path, n=12, seed=0, bad=()):
    """Write `n` Poisson sphere patterns (radii 2.5-4.5 nm, lambda 1 nm, 24 x 24 flat detector) to `path`.

    `bad`: indices replaced by bad patterns (all-NaN, negative counts). Returns the true radii."""
    rng = np.random.default_rng(seed)
    exp = ds.Experiment(1.0, ds.FlatDetector(40.0, 1.2, (24, 24)))
    pix = exp.pixels()
    w = np.asarray(pix.solid_angle * polarisation_factor(pix, "unpolarised"))
    radii = rng.uniform(2.5, 4.5, n)
    grid = ds.VoxelGrid.around(4.6, 0.2)  # one grid for every radius: one compilation
    imgs = []
    for r in radii:
        I = np.asarray(ds.simulate(ds.Sphere(float(r), 0.0, 0.001), exp, grid=grid))
        mu = I * w
        imgs.append(rng.poisson(mu / mu.sum() * 2e5).astype(float))
    data = np.stack(imgs)
    for i in bad:
        data[i] = np.nan if i % 2 == 0 else -1.0
    write_cxi(path, data, exp, length_unit="nm", quantity="photons")
    return radii


def make_shape_dataset(path, shapes, photons=2e5, n=24, seed=0, pitch=0.25):
    """Write Poisson patterns of `shapes` (diffscat shapes, length unit nm, lambda 1 nm) on an n x n QGrid up to
    30 deg to `path`, each scaled to `photons` expected photons in total (solid angle included, polarisation
    "none"). Full 2-D simulation on one voxel grid of `pitch`; independent of the fitters. Returns the
    experiment."""
    from diffscat.detectors import expected_photons

    rng = np.random.default_rng(seed)
    exp = ds.Experiment(1.0, ds.QGrid(n, 30.0))
    rmax = max(float(np.asarray(s.bounding_radius())) for s in shapes)
    grid = ds.VoxelGrid.around(1.1 * rmax, pitch)
    imgs = []
    for s in shapes:
        mu = np.asarray(expected_photons(ds.simulate(s, exp, grid=grid), exp, 1.0))
        imgs.append(rng.poisson(mu / mu.sum() * photons).astype(float))
    write_cxi(path, np.stack(imgs), exp, length_unit="nm", quantity="photons")
    return exp
