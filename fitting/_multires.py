"""Multi-resolution fitting: the early stages of the automatic drivers on a low-q crop of the pattern.

The voxel pitch a fit needs scales with 1 / q_max (`diffscat.default_pitch`), so a pattern binned over the same
angles saves pixels but no voxels. The central part of the pattern (a smaller theta_max) allows a
proportionally coarser pitch: the crop of the central n / f x n / f pixels of a QGrid has f^2 times fewer
pixels and a voxel grid f^3 times smaller, and its loss landscape is smoother (fewer fringes, wider basins).
The drivers (`fit_sphere_auto`, `fit_ellipsoid_auto`, `fit_spherical_harmonics`, `harmonics_ladder`,
`fit_auto`) run their searches and intermediate stages on such a crop and finish with a short refinement at
full resolution (`coarse=`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import diffscat as ds

from ._losses import AbstractLoss, as_loss, check_data

__all__ = [
    "low_q_crop",
    "coarse_factor",
    "COARSE_MIN_QR",
    "STAGE_RTOL",
    "STAGE_MAX_STEPS",
    "STAGE_COARSENING",
    "ESCAPE_Z",
    "BEAM_ELONGATION",
    "REFINE_MARGIN",
]

# Smallest q_max * R (volume-equivalent radius R) kept in a crop: ~3 sphere fringes (zeros at qR = 4.49,
# 7.73, 10.9). Below it the crop holds too little of the shape to find the right basin.
COARSE_MIN_QR = 10.0
# Relative loss-per-pixel change below which an intermediate stage stops (`fit`'s rtol; the final stage keeps
# the caller's rtol). 1e-5 of a loss per pixel ~1 is ~0.1 NLL units on a 10^4-pixel pattern.
STAGE_RTOL = 1e-5
# At most this many optimiser steps in an intermediate stage on the crop (a full-resolution stage follows).
# `fit`'s stall test compares each step's loss with the BEST loss seen, so an L-BFGS run that has settled at
# a point a little above its best (measured: 2026.91 against 2026.79, the same value for 100 steps) never
# counts as stalled and runs to max_steps; this cap bounds that waste (fix belongs in `fit`).
STAGE_MAX_STEPS = 60
# Voxel pitch of the harmonic ladder's intermediate stages, relative to the fit's, where the pattern has no
# crop (q_max R too small for `COARSE_MIN_QR` after halving): 1.5x the pitch is 3.4x fewer voxels, as the
# ellipsoid and polyhedron searches use. 64^2 (R 4-6 wavelengths, lmax 4, network starts): the l <= 2 and
# l <= 3 stages took 2.8 and 3.3 s of a 19 s fit at the full pitch.
STAGE_COARSENING = 1.5
# `harmonics_ladder`'s escapes: when the ladder's result is a misfit (z of `noise_consistency` above ESCAPE_Z,
# batch-fit's default misfit threshold), other routes from the same ellipsoid run and the lowest loss is kept.
# A route that ends within one noise sd of the best so far reached the same optimum: the misfit is then taken
# as model error (e.g. voxelisation at high counts) and no further route runs. Measured: the slow ladder test's
# pattern at XLA -O0 ended at NLL 4961 (z 129) against 1196 (z 0.7) from the truth; both routes below reached
# 1198-1200 (docs/fitting.md, session 18).
ESCAPE_Z = 5.0
# The escapes' beam-compact routes (`fitting.beam_compact`) run when the ellipsoid's extent along the beam (rms,
# lab z) exceeds the one its start gets, the mean of its transverse extents, by more than this factor. The
# pattern fixes the transverse extents; the extent along the beam only through the Ewald curvature and the
# projected thickness, and the ellipsoid stage of strongly deformed droplets stretches it: of the 80 harmonic
# dataset patterns of session 18, both misfits from a wrong basin were stretched along the beam (fit/truth rms
# z extent 1.85 and 1.21, transverse within 1 %), and a ladder from the beam-compact ellipsoid reached the
# truth's optimum (z -0.2 and -1.5; docs/fitting.md, session 19).
BEAM_ELONGATION = 1.1
# Voxel-grid half-width of a full-resolution refinement, in bounding radii of its start (before the ladder's
# rounding up by at most 19 %): the start is already a crop stage's optimum, so it grows little, and `fit`'s
# default (1.3, room for a start far from the answer) would spend its time on empty voxels. 128^2, SH lmax 3
# (R ~ 7 wavelengths): value_and_grad 200 ms on the 1.3 grid (112^3), 136 ms at 1.15 (95^3).
REFINE_MARGIN = 1.1


def _crop_detector(det: ds.AbstractDetector, f: int):
    """(cropped detector, row slice, column slice) of the central 1/f of `det`, or None if unsupported."""
    if isinstance(det, (ds.QGrid, ds.AngleGrid)):
        n = det.n
        m = n // f
        if m * f != n or (n - m) % 2 or m < 16:
            return None
        s = slice((n - m) // 2, (n - m) // 2 + m)
        if isinstance(det, ds.QGrid):
            smax = math.sin(math.radians(det.theta_max_deg)) / f
            return ds.QGrid(m, math.degrees(math.asin(smax))), s, s
        return ds.AngleGrid(m, det.theta_max_deg / f), s, s
    if isinstance(det, ds.FlatDetector):
        ny, nx = det.shape
        h, w = ny // f, nx // f
        if min(h, w) < 16:
            return None
        try:
            cy, cx = (float(c) for c in np.asarray(det.center))
        except (TypeError, ValueError):  # traced geometry
            return None
        y0 = int(np.clip(round(cy - (h - 1) / 2.0), 0, ny - h))
        x0 = int(np.clip(round(cx - (w - 1) / 2.0), 0, nx - w))
        new = ds.FlatDetector(det.distance, det.pixel_size, (h, w), (cy - y0, cx - x0), det.tilt)
        return new, slice(y0, y0 + h), slice(x0, x0 + w)
    return None


def low_q_crop(data, experiment: ds.Experiment, mask=None, factor: int = 2):
    """The central (low-q) part of a pattern: (data, experiment, mask) of the n / `factor` x n / `factor`
    pixels around the beam, the same pixels exactly (QGrid: a QGrid of n / f pixels up to
    sin(theta') = sin(theta_max) / f; AngleGrid: theta_max / f; FlatDetector: a window around the beam
    centre, same distance, pixel size and tilt). Returns None where the detector has no exact crop (other
    detectors, fewer than 16 pixels per side, a side not divisible by `factor`) or where the crop has no
    used pixel with counts. Counts are not rescaled (the fits profile the scale).

    `data`: (ny, nx) counts; `mask`: (ny, nx) bool, True = used (default all); `factor`: integer >= 1."""
    f = int(factor)
    if f < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor}")
    d, m = check_data(data, mask, tuple(experiment.shape))
    d, m = np.asarray(d), np.asarray(m, bool)
    if f == 1:
        return d, experiment, m
    if d.ndim != 2:
        return None
    out = _crop_detector(experiment.detector, f)
    if out is None:
        return None
    det, sy, sx = out
    dc, mc = d[sy, sx], m[sy, sx]
    if not np.any(mc) or not np.any(dc[mc] > 0):
        return None
    return dc, ds.Experiment(experiment.wavelength, det), mc


def _coarse_top(coarse) -> int:
    """The largest crop factor a `coarse=` request allows (True: 4; False / None: 1; an int >= 1: itself)."""
    if coarse is True:
        return 4
    if coarse is False or coarse is None:
        return 1
    top = int(coarse)
    if top < 1:
        raise ValueError(f"coarse must be a bool or an integer >= 1, got {coarse}")
    return top


def coarse_factor(experiment: ds.Experiment, radius: float, coarse, min_qr: float = COARSE_MIN_QR) -> int:
    """The crop factor the drivers use for their early stages: the largest f in (1, 2, 4, ...) up to the
    request `coarse` (False / None / 1: none; True: up to 4; an int >= 1: up to that; 0 raises) with
    q_max / f * `radius` >= `min_qr` (q_max = 2 k sin(theta_max / 2), `radius` the volume-equivalent radius
    in length units). 1 means no crop (full resolution throughout)."""
    top = _coarse_top(coarse)
    hint = experiment.sampling_hint
    if top <= 1 or hint is None:
        return 1
    lam, tmax = hint
    qmax = 4 * math.pi / lam * math.sin(tmax / 2)
    f = 1
    while 2 * f <= top and qmax / (2 * f) * float(radius) >= min_qr:
        f *= 2
    return f


def coarse_level(data, experiment: ds.Experiment, mask, coarse, radius: float):
    """(data, experiment, mask, factor) of the coarse level for a particle of volume-equivalent `radius`, or
    None when the drivers should stay at full resolution (factor 1 or no exact crop)."""
    f = coarse_factor(experiment, radius, coarse)
    while f > 1:
        out = low_q_crop(data, experiment, mask, f)
        if out is not None:
            return (*out, f)
        f //= 2
    return None


def coarse_pitch(experiment: ds.Experiment, coarse_experiment: ds.Experiment, pitch):
    """The coarse level's pitch: `pitch` (None: the default) scaled like the default pitch from the full
    experiment to the crop (None stays None: the crop's default), at most 0.6 lambda / (2 sin theta'), the
    crop's aliasing limit (so a search 1.5 x coarser stays below it)."""
    if pitch is None:
        return None
    full = ds.default_pitch(*experiment.sampling_hint)
    lam, tmax = coarse_experiment.sampling_hint
    crop = ds.default_pitch(lam, tmax)
    return min(float(pitch) * crop / full, 0.6 * lam / (2 * math.sin(tmax)))


def stage_pitch(experiment: ds.Experiment, fit_kwargs: dict, coarse, coarsening: float) -> float | None:
    """The voxel pitch of `harmonics_ladder`'s intermediate stages when the pattern has no crop: the fit's
    pitch (`pitch=` or the experiment's `default_pitch`) times `coarsening`; None (the fit's own) when
    `coarse` is off, `coarsening` is 1, a grid is given, or the experiment has no sampling hint."""
    c = float(coarsening)
    if not c >= 1:
        raise ValueError(f"stage_coarsening must be >= 1, got {coarsening}")
    if c == 1 or _coarse_top(coarse) <= 1 or "grid" in fit_kwargs:
        return None
    base = fit_kwargs.get("pitch")
    if base is None:
        hint = experiment.sampling_hint
        if hint is None:
            return None
        base = ds.default_pitch(*hint)
    return float(base) * c


def stage_kwargs(fit_kwargs: dict, stage_rtol: float | None, experiment=None, coarse_experiment=None) -> dict:
    """`fit` keywords for an intermediate stage: no uncertainties, `rtol` = max(caller's rtol, `stage_rtol`)
    (None: `STAGE_RTOL`). On a crop (`coarse_experiment` given) the grid is dropped (the crop has its own),
    the pitch scaled (`coarse_pitch`) and `max_steps` capped at `STAGE_MAX_STEPS`."""
    kw = {k: v for k, v in fit_kwargs.items() if k != "uncertainties"}
    if coarse_experiment is not None:
        kw.pop("grid", None)
        kw["pitch"] = coarse_pitch(experiment, coarse_experiment, fit_kwargs.get("pitch"))
        kw["max_steps"] = min(int(fit_kwargs.get("max_steps", 200)), STAGE_MAX_STEPS)
    kw["uncertainties"] = False
    s = STAGE_RTOL if stage_rtol is None else float(stage_rtol)
    kw["rtol"] = max(float(fit_kwargs.get("rtol", 1e-7)), s)
    return kw


def start_stage_kwargs(
    data, experiment: ds.Experiment, mask, coarse, radius: float | None, fit_kwargs: dict, stage_rtol, **more
) -> dict:
    """`fit` keywords of a sphere or ellipsoid stage that only starts a later stage (e.g. the harmonic
    ladder): `stage_kwargs`, and where a particle of `radius` has no crop (`coarse_level` None) but the ladder
    coarsens (`stage_pitch`), `pitch` = `STAGE_COARSENING` x the fit's pitch plus `more` (e.g.
    `search_coarsening=1.0`). `radius` None: no crop check (a network-started stage, which has no size yet;
    `fit_from_network` chooses its own crop). At the fit's pitch these two stages took about half of a 64^2
    lmax 4 fit (docs/fitting.md, session 17)."""
    kw = stage_kwargs(fit_kwargs, stage_rtol)
    coarser = stage_pitch(experiment, fit_kwargs, coarse, STAGE_COARSENING)
    no_crop = radius is None or coarse_level(data, experiment, mask, coarse, radius) is None
    if coarser is not None and no_crop:
        kw.update(pitch=coarser, **more)
    return kw


# Corrected coarse stages of `harmonics_ladder` before its full-pitch refinement (no crop, coarser pitch).
N_CORRECT = 2
# Clip of the per-pixel ratio fine / coarse model of `CorrectedLoss` (pixels where the coarse model is below
# CORRECTION_FLOOR x its maximum get 1: a ratio of two near-zeros is noise).
CORRECTION_CLIP = (0.2, 5.0)
CORRECTION_FLOOR = 1e-6


class CorrectedLoss(AbstractLoss):
    """`inner` evaluated at a model signal multiplied per pixel by `factor`: a coarse-pitch model corrected
    towards the fine-pitch one (`correction_factor`). The factor is an array (traced under jit: a new pattern
    or factor compiles nothing new), so this loss is not hashable by value like the shipped ones; it is meant
    for the corrected intermediate stage of `harmonics_ladder`. The Fisher information of a fit with this loss
    ignores the factor (that stage asks for no uncertainties)."""

    inner: AbstractLoss
    factor: Float[Array, "*image"]
    name: ClassVar[str] = "corrected"
    nonnegative: ClassVar[bool] = True

    def terms(self, mu, data):
        return self.inner.terms(mu, data)

    def value(self, model, data, mask=None, *, scale=None, background=0.0):
        return self.inner.value(model * self.factor, data, mask, scale=scale, background=background)

    def initial_scale(self, model, data, mask, background=0.0):
        return self.inner.initial_scale(model * self.factor, data, mask, background)

    def profile_scale(self, model, data, mask, background=0.0, *, newton_steps=6):
        return self.inner.profile_scale(
            model * self.factor, data, mask, background, newton_steps=newton_steps
        )

    def fisher_weight(self, mu, data, mask):
        return self.inner.fisher_weight(mu, data, mask)

    def residuals(self, model, data, mask=None, *, scale=None, background=0.0):
        return self.inner.residuals(model * self.factor, data, mask, scale=scale, background=background)


def correction_factor(
    shape: ds.AbstractShape,
    experiment: ds.Experiment,
    coarse_grid: ds.VoxelGrid,
    fine_grid: ds.VoxelGrid,
    method: str = "msft",
) -> Float[Array, "*image"]:
    """Per-pixel ratio of `shape`'s pattern on `fine_grid` to its pattern on `coarse_grid` (dimensionless;
    clipped to `CORRECTION_CLIP`, 1 where the coarse pattern is below `CORRECTION_FLOOR` x its maximum). The
    pixel weights (solid angle, polarisation) cancel in the ratio."""
    coarse = ds.simulate(shape, experiment, grid=coarse_grid, method=method)
    fine = ds.simulate(shape, experiment, grid=fine_grid, method=method)
    ok = coarse > CORRECTION_FLOOR * jnp.max(coarse)
    ratio = jnp.where(ok, fine / jnp.where(ok, coarse, 1.0), 1.0)
    return jnp.clip(ratio, *CORRECTION_CLIP)


def corrected_loss(loss, factor) -> CorrectedLoss:
    """`CorrectedLoss` of `loss` (a name or an `AbstractLoss`, as `fit`'s `loss=`) with `factor`."""
    return CorrectedLoss(as_loss(loss), jnp.asarray(factor))


def outgrew(shape: ds.AbstractShape, grid: ds.VoxelGrid) -> bool:
    """True when `shape` (its bounding radius, length units) reaches into the 2 outer voxels of `grid`."""
    half = 0.5 * min(n * p for n, p in zip(grid.shape, grid.pitch, strict=True)) - 2 * max(grid.pitch)
    return float(np.asarray(shape.bounding_radius())) > half


def refine_grid(models, experiment: ds.Experiment, pitch=None) -> ds.VoxelGrid:
    """The voxel grid of a refinement from `models` (starts near the answer): the size-ladder grid for
    `REFINE_MARGIN` x their largest bounding radius, one voxel wider per axis where needed to keep the parity
    of `fit`'s default grid (margin `GRID_MARGIN`), so its voxel centres are a subset of that grid's and the
    loss of a shape inside both is the same. Depends on the ladder rungs only (patterns of similar size share
    it). `pitch`: default `diffscat.default_pitch` of the experiment."""
    from ._fit import GRID_MARGIN, _fit_grid

    full = _fit_grid(models, experiment, pitch, GRID_MARGIN)
    tight = _fit_grid(models, experiment, pitch, REFINE_MARGIN)
    shape = tuple(min(t + (f - t) % 2, f) for t, f in zip(tight.shape, full.shape, strict=True))
    return ds.VoxelGrid(shape, tight.pitch)


def refine_fit(data, experiment: ds.Experiment, starts, mask=None, **fit_kwargs):
    """`fit` for a full-resolution refinement from starts near the answer (a crop stage's optimum), on
    `refine_grid` (not `fit`'s default, 1.3 bounding radii), unless the caller fixed `grid` or `grid_margin`;
    if the result outgrew that grid (`outgrew`), fitted again from there on `fit`'s default grid (the
    returned `time_s` counts both)."""
    from ._fit import fit

    if "grid" in fit_kwargs or "grid_margin" in fit_kwargs:
        return fit(data, experiment, starts, mask, **fit_kwargs)
    models = list(starts) if isinstance(starts, (list, tuple)) else [starts]
    grid = refine_grid(models, experiment, fit_kwargs.get("pitch"))
    res = fit(data, experiment, starts, mask, grid=grid, **fit_kwargs)
    if not outgrew(res.model, grid):
        return res
    again = fit(data, experiment, res.model, mask, **fit_kwargs)
    again.time_s += res.time_s
    return again
