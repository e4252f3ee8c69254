"""`fit_auto`: fit several shape classes with no initial guess and choose one by a penalised likelihood.

Classes: "Sphere", "Ellipsoid", "SphericalHarmonics" (the existing drivers: `fit_sphere_auto`,
`fit_ellipsoid_auto`, the harmonic ladder), the six named polyhedra (`POLYHEDRA`) and "Superellipsoid" (a size
from the sphere fit, a cheap global orientation search, then a full-resolution refinement of the best few).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffscat as ds

from ._evalset import POLYHEDRA
from ._init import SH_ROUTE, _check_escapes
from ._jitmem import release_between_stages, release_jit_memory
from ._losses import _poisson_terms, as_loss, check_data
from ._multires import ESCAPE_Z, stage_kwargs, start_stage_kwargs
from ._params import OPTICAL

__all__ = [
    "fit_auto",
    "fit_oriented",
    "orientation_search",
    "bin_pattern",
    "n_parameters",
    "prune_classes",
    "CANDIDATES",
    "ORIENTED",
]

ORIENTED = POLYHEDRA + ("Superellipsoid",)
# `fit_auto(network_prune=...)`: which candidates the network's class head may rule out
NETWORK_PRUNE = ("polyhedra", "all")
DECAHEDRON_SIZE_FACTORS = (0.87, 0.935, 1.0, 1.075, 1.15)
CANDIDATES = ("Sphere", "Ellipsoid", "SphericalHarmonics") + ORIENTED
# `keep_delta_sign`: the start's sign of a fitted delta is kept when it fits within this many NLL units of the
# other sign. 2 units: a likelihood-ratio test of one parameter at ~2 sigma (2 x 2 = 4 = 2^2). On 200 64^2
# ellipsoids with delta free (session 14), the 6 fits that ended with the wrong sign were within 0.8 units of
# the right one (docs/batch.md): the data did not decide there.
DELTA_SIGN_TOL = 2.0
# `fit_auto(network_nested=True)`: the nested smooth classes (each contains the one before it as a special case)
NESTED = ("Sphere", "Ellipsoid", "SphericalHarmonics")
# ... and the noise z (`noise_consistency`) above which the network's best nested class counts as a misfit, so
# that the richer nested classes it ruled out are fitted after all. 2: on a pattern the class explains, about
# 1 in 25 fits (Student t, 7 degrees of freedom) pays for the extra fit; a Mie sphere whose MSFT sphere fit is
# ~160 NLL units above the harmonic body's (session 28's three misses, sd ~45 units at 64^2) is caught.
NETWORK_ESCAPE_Z = 2.0


def n_parameters(result) -> int:
    """Number of free parameters of a `FitResult` (an orientation counts 3; the profiled scale is not
    counted: every candidate has it)."""
    k = 0
    for name in result.free:
        k += 3 if name == "orientation" else int(np.asarray(result.values[name]).size)
    return k


def data_loss(result) -> float:
    """The data term of a fit's loss (without its regulariser): the fit's loss (`result.loss_function`, an
    `AbstractLoss`) evaluated on `result.model_counts`, the fitted expected counts (scale and background
    included), over the used pixels."""
    loss_function = getattr(result, "loss_function", None)
    loss = as_loss(loss_function if loss_function is not None else result.loss_kind)
    m = np.asarray(result.mask, bool)
    mu = np.asarray(result.model_counts, np.float64)
    d = np.asarray(result.data, np.float64)
    return float(loss.value(mu, d, m, scale=1.0, background=0.0))


def noise_consistency(result, n_draws: int = 8, seed: int = 0) -> tuple[float, float, float]:
    """How far a fit's loss lies above what its own noise model gives.

    The fit's data loss (`data_loss`: `result.loss_function` on `result.model_counts`, scale 1,
    background 0, over the used pixels) is compared with the same loss evaluated on `n_draws` Poisson
    realisations of `result.model_counts` (expected photon counts) on the same pixels.

    Returns (z, mean, sd): z = (loss - mean) / sd, with mean and sd (ddof 1) over the draws (loss units:
    summed negative log-likelihood). z ~ N(0, 1) (Student t with n_draws - 1 degrees of freedom) when the data
    are a Poisson realisation of the fitted model; a model that cannot describe the pattern gives z >> 1.
    Deterministic for a given `seed`. NaN when the draws have no spread (e.g. all expected counts 0).
    """
    if int(n_draws) < 2:
        raise ValueError(f"n_draws must be >= 2 (a spread is needed), got {n_draws}")
    loss_function = getattr(result, "loss_function", None)
    loss = as_loss(loss_function if loss_function is not None else result.loss_kind)
    m = np.asarray(result.mask, bool)
    mu = np.clip(np.nan_to_num(np.asarray(result.model_counts, np.float64)), 0.0, None)
    observed = data_loss(result)
    rng = np.random.default_rng(seed)
    sims = np.array(
        [
            float(
                loss.value(
                    mu, np.where(m, rng.poisson(np.where(m, mu, 0.0)), 0.0), m, scale=1.0, background=0.0
                )
            )
            for _ in range(int(n_draws))
        ]
    )
    mean, sd = float(sims.mean()), float(sims.std(ddof=1))
    z = (observed - mean) / sd if sd > 0 else float("nan")
    return z, mean, sd


def choose_class(results: dict, n_used: int, criterion: str = "bic"):
    """The best of {class name: `FitResult`} by `criterion` ("bic": data loss + (k / 2) ln n_used, "aic":
    + k, "nll": the data loss alone; k = `n_parameters`, loss = `data_loss`), with `.ranking` set to
    [(class name, data loss, k, criterion value), ...] best first."""
    n = max(int(n_used), 1)
    ranking = []
    for name, r in results.items():
        k = n_parameters(r)
        pen = {"bic": 0.5 * k * math.log(n), "aic": float(k), "nll": 0.0}[criterion]
        nll = data_loss(r)
        ranking.append((name, nll, k, nll + pen))
    ranking.sort(key=lambda t: t[3] if np.isfinite(t[3]) else np.inf)
    best = results[ranking[0][0]]
    best.ranking = ranking
    return best


def bin_pattern(data, mask, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum `data` over `factor` x `factor` pixel blocks; a block is used only if all its pixels are.
    (ny, nx) -> (ny / factor, nx / factor); both sides must be divisible by `factor`."""
    d = np.asarray(data, float)
    m = np.asarray(mask, bool)
    f = int(factor)
    ny, nx = d.shape
    if ny % f or nx % f:
        raise ValueError(f"factor {f} must divide the image shape {d.shape}")
    db = np.where(m, d, 0.0).reshape(ny // f, f, nx // f, f).sum(axis=(1, 3))
    mb = m.reshape(ny // f, f, nx // f, f).all(axis=(1, 3))
    return db, mb


def _template(name: str, radius: float, delta: float, beta: float, rotation=None, dtype=None):
    """A shape of class `name` with volume-equivalent radius `radius` (length units)."""
    vol = 4.0 / 3.0 * math.pi * radius**3
    if name in POLYHEDRA:
        cls = getattr(ds, name)
        v1 = float(np.asarray(cls(1.0).volume()))
        edge = (vol / v1) ** (1 / 3)
        # the rigid Decahedron (marks fixed at 0): no notches to render (~2x faster, same body)
        extra = {"notched": False} if name == "Decahedron" else {}
        return cls(np.asarray(edge, dtype), delta=delta, beta=beta, rotation=rotation, **extra)
    if name == "Superellipsoid":
        base = ds.Superellipsoid(np.array([1.1, 1.0, 0.9]), (0.8, 0.8))
        s = (vol / float(np.asarray(base.volume()))) ** (1 / 3)
        return ds.Superellipsoid(
            np.asarray(s * np.array([1.1, 1.0, 0.9]), dtype),
            np.asarray((0.8, 0.8), dtype),
            delta=delta,
            beta=beta,
            rotation=rotation,
        )
    raise ValueError(f"no oriented template for {name!r}; supported: {ORIENTED}")


def _free_for(name: str) -> tuple[str, ...]:
    if name in POLYHEDRA:
        return ("edge", "orientation")
    if name == "Superellipsoid":
        return ("semi_axes", "exponents", "orientation")
    raise ValueError(f"unknown class {name!r}")


@eqx.filter_jit
def _batch_deviance(shapes, data, mask, experiment, grid: ds.VoxelGrid):
    """Poisson deviance (scale profiled: sum d / sum model) of each shape of a stacked batch."""
    from ._fit import expected_signal

    def one(s):
        sig = expected_signal(s, experiment, grid).astype(data.dtype)
        sig = jnp.where(mask, sig, 0.0)
        scale = jnp.sum(jnp.where(mask, data, 0.0)) / jnp.maximum(jnp.sum(sig), 1e-30)
        mu = jnp.maximum(scale * sig, 1e-30)
        dev = _poisson_terms(mu, data)  # the loss's float32-stable deviance
        return jnp.sum(jnp.where(mask, dev, 0.0))

    return jax.vmap(one)(shapes)


def _drop_hint(shape, hint):
    import copy

    new = copy.copy(shape)
    object.__setattr__(new, "extent_hint", hint)
    return new


def orientation_search(
    name: str,
    data,
    experiment: ds.Experiment,
    mask,
    radius: float,
    *,
    delta: float = 0.0,
    beta: float = 0.0,
    n_orientations: int = 96,
    size_factors: Sequence[float] | None = None,
    bin_factor: int = 2,
    coarsening: float = 1.5,
    batch: int = 32,
    seed: int = 0,
    coarse: bool | int = True,
    rotations=None,
) -> tuple[list, np.ndarray, float]:
    """Loss of `n_orientations` random orientations (or the given `rotations`, (k, 3, 3), r_lab = R r_body)
    x `size_factors` of a class-`name` template of
    volume-equivalent radius `radius`, evaluated in vmapped batches of `batch` on the low-q crop of the
    pattern (`coarse`: as `fit_auto`'s, the crop `fitting.coarse_level` picks for `radius`; False: the whole
    pattern), binned (QGrid detectors with `bin_factor` dividing n: data summed over blocks, a detector of
    n / `bin_factor` pixels over the same angles), on a voxel grid `coarsening` times coarser than the default
    pitch of that crop. One compilation per (class, grid, batch). Returns (shapes sorted best first, their
    deviances, seconds).

    `size_factors`: multiples of `radius` tried; None: (0.95, 1, 1.05), and for the Decahedron (flat: the
    sphere fit's size was 13-16 % off the truth's volume-equivalent radius on 3 of 3 evaluation decahedra)
    `DECAHEDRON_SIZE_FACTORS`, +-15 % in 5 steps.

    Why the crop: on the 18 polyhedra of the 128^2 evaluation set (3 sizes) the crop's search ranked the true
    class first on 17 (the 18th, a decahedron too small for a crop, searched at a size 13 % off), with wider
    gaps to the next class than the whole binned pattern (e.g. a cube's octahedron ratio 1.01 -> 2.07), in
    3-5x less time (its grid has up to f^3 fewer voxels)."""
    from ._fit import ladder_grid
    from ._init import random_rotations
    from ._multires import coarse_level

    t0 = time.perf_counter()
    d, m = check_data(data, mask, tuple(experiment.shape))
    d, m = np.asarray(d, float), np.asarray(m, bool)
    exp_s = experiment
    lev = coarse_level(d, experiment, m, coarse, radius)
    if lev is not None:
        d, exp_s, m, _ = lev
    det = exp_s.detector
    f = int(bin_factor)
    if f > 1 and isinstance(det, ds.QGrid) and det.n % f == 0 and det.n // f >= 8:
        d, m = bin_pattern(d, m, f)
        exp_s = ds.Experiment(exp_s.wavelength, ds.QGrid(det.n // f, det.theta_max_deg))
    if size_factors is None:
        size_factors = DECAHEDRON_SIZE_FACTORS if name == "Decahedron" else (0.95, 1.0, 1.05)
    if rotations is None:
        Rs = random_rotations(int(n_orientations), seed)
    else:
        Rs = np.asarray(rotations, float)
        if Rs.ndim != 3 or Rs.shape[1:] != (3, 3) or len(Rs) < 1:
            raise ValueError(f"rotations must be (k, 3, 3) with k >= 1, got shape {Rs.shape}")
    dt = jnp.result_type(float)
    shapes = [
        _template(name, radius * float(sf), delta, beta, rotation=R, dtype=dt)
        for sf in size_factors
        for R in Rs
    ]
    lam, tmax = exp_s.sampling_hint
    pitch = ds.default_pitch(lam, tmax) * float(coarsening)
    rmax = max(float(np.asarray(s.bounding_radius())) for s in shapes)
    grid = ladder_grid(1.05 * rmax, pitch)  # rounded up: patterns of similar size share the compilation
    # no static size hint (the grid is given): patterns of other sizes then share the compilation
    shapes_h = [_drop_hint(s, None) for s in shapes]
    nb = int(batch)
    pad = (-len(shapes_h)) % nb
    padded = shapes_h + [shapes_h[-1]] * pad
    dj, mj = jnp.asarray(d, dt), jnp.asarray(m)
    losses = []
    for i in range(0, len(padded), nb):
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *padded[i : i + nb])
        losses.append(np.asarray(_batch_deviance(stacked, dj, mj, exp_s, grid)))
    loss = np.concatenate(losses)[: len(shapes)]
    loss = np.where(np.isfinite(loss), loss, np.inf)
    order = np.argsort(loss)
    return [shapes[i] for i in order], loss[order], time.perf_counter() - t0


def _class_search(name, data, experiment, mask, radius, delta, beta, n_orientations, coarse, search_kwargs):
    """`orientation_search` as `fit_oriented` and `fit_auto` run it: `coarse` unless `search_kwargs` sets it."""
    release_between_stages()  # batch-fit's memory budget inside a pattern (fitting/_jitmem.py, `stage_budget`)
    return orientation_search(
        name,
        data,
        experiment,
        mask,
        radius,
        delta=delta,
        beta=beta,
        n_orientations=n_orientations,
        **{"coarse": coarse, **(search_kwargs or {})},
    )


def fit_oriented(
    name: str,
    data,
    experiment: ds.Experiment,
    mask=None,
    *,
    radius: float,
    delta: float = 0.0,
    beta: float = 0.0,
    n_orientations: int = 96,
    n_refine: int = 4,
    search_kwargs: dict | None = None,
    coarse: bool | int = True,
    stage_rtol: float | None = None,
    search: tuple | None = None,
    **fit_kwargs,
):
    """A class with an orientation (polyhedra, "Superellipsoid") from a volume-equivalent `radius`:
    `orientation_search`, then `fitting.fit` of the `n_refine` best starts (one vmapped multi-start, full
    resolution). `result.stages` = [the refinement]; `result.time_s` includes the search time.
    `search`: the (shapes, deviances, seconds) of an `orientation_search` already run for this class and
    pattern (`fit_auto` runs every class's search first); None: run it here.

    `coarse` (default True): the `n_refine` starts are refined on the low-q crop of the pattern
    (`fitting.low_q_crop`, rtol loosened to `stage_rtol`), then the best one at full resolution;
    `result.stages` = [crop refinement, full refinement]. 1 / False: as above."""
    if search is None:
        search = _class_search(
            name, data, experiment, mask, radius, delta, beta, n_orientations, coarse, search_kwargs
        )
    first = _oriented_crop(
        name, data, experiment, mask, radius, n_refine, coarse, stage_rtol, search, fit_kwargs
    )
    return _oriented_full(name, data, experiment, mask, first, search, n_refine, fit_kwargs)


def _oriented_crop(name, data, experiment, mask, radius, n_refine, coarse, stage_rtol, search, fit_kwargs):
    """`fit_oriented`'s refinement of the `n_refine` best search results on the low-q crop (None: no crop)."""
    from ._fit import fit
    from ._multires import coarse_level

    release_between_stages()
    lev = coarse_level(data, experiment, mask, coarse, radius)
    if lev is None:
        return None
    dc, ec, mc, _ = lev
    kw = stage_kwargs(fit_kwargs, stage_rtol, experiment, ec)
    return fit(dc, ec, search[0][: int(n_refine)], mc, free=_free_for(name), **kw)


def _oriented_full(name, data, experiment, mask, first, search, n_refine, fit_kwargs):
    """`fit_oriented`'s full-resolution refinement: of the crop's best (`first`), or of the `n_refine` best
    search results when there was no crop stage."""
    from ._fit import fit
    from ._multires import refine_fit

    release_between_stages()

    if first is None:
        res = fit(data, experiment, search[0][: int(n_refine)], mask, free=_free_for(name), **fit_kwargs)
        res.time_s += search[2]
        return res
    res = refine_fit(data, experiment, first.model, mask, free=_free_for(name), **fit_kwargs)
    res.time_s += search[2] + first.time_s
    res.alternatives = first.alternatives
    res.start_losses = first.start_losses
    res.n_starts = first.n_starts
    res.stages = [first, res]
    return res


def fit_auto(
    data,
    experiment: ds.Experiment,
    candidates: Sequence[str] = ("Sphere", "Ellipsoid", "SphericalHarmonics"),
    mask=None,
    delta: float = 0.0,
    beta: float = 0.0,
    lmax: int = 4,
    *,
    criterion: str = "bic",
    n_starts: int = 8,
    n_orientations: int | None = None,
    n_refine: int = 4,
    class_margin: float | None = 1.5,
    min_classes: int = 2,
    refine_margin: float | None = 1.5,
    seed: int = 0,
    regularizer=None,
    search_kwargs: dict | None = None,
    verbose: bool = False,
    coarse: bool | int = True,
    stage_rtol: float | None = None,
    init: object = None,  # None | "network" | NetworkPredictor | model path: `fitting.resolve_network`
    network_min_prob: float | None = None,
    class_network: object = None,
    network_prune: str = "polyhedra",
    fit_optics: Sequence[str] = (),
    delta_sign_tol: float | None = DELTA_SIGN_TOL,
    escape_z: float | None = ESCAPE_Z,
    sh_route: str | None = SH_ROUTE,
    sh_start: str = "auto",
    sh_escapes: str = "misfit",
    ellipsoid_start: str = "robust",
    network_nested: bool = True,
    network_escape_z: float | None = NETWORK_ESCAPE_Z,
    **fit_kwargs,
):
    """Fit every class in `candidates` without an initial guess and return the best by `criterion`.

    **Arguments:**
    - `data`, `experiment`, `mask`: as for `fitting.fit` (photon counts; loss "poisson" by default).
    - `candidates`: class names among `CANDIDATES`: "Sphere", "Ellipsoid", "SphericalHarmonics" (up to
      `lmax`, the ladder sphere -> ellipsoid -> l = 2..lmax reusing this call's sphere and ellipsoid fits),
      the six polyhedra ("Cube", "Octahedron", "Icosahedron", "Decahedron", "TruncatedOctahedron",
      "Cuboctahedron"; edge and orientation free) and "Superellipsoid".
    - `delta`, `beta`: optical constants (n = 1 - delta + i beta), fixed unless named in `fit_optics` (then
      the starting values; the MSFT model, the sphere start and the searches use them).
    - `fit_optics`: names among ("delta", "beta") fitted too: with `init` (network) the sphere's and the
      ellipsoid's fits (its coarse multi-start included) free them from the start (`fit_from_network`), and the
      harmonic ladder starts from that ellipsoid's values; every other candidate's final model (and the
      harmonic shape's) is refined once more at full resolution (`refine_fit`) with these free beside its own
      parameters (the harmonic shape keeps its regulariser), so the classes compare with the same number of
      extra parameters. Use it when the
      optical constants are not known well: a delta 1.3-2x the assumed one distorts the fitted shape (on 64^2
      ellipsoids of 4-7 wavelengths, IoU 0.81-0.91 at fixed delta = 0.01 against 0.99 with delta free, which came
      back within 2 % of the truth; docs/batch.md). With the fluence unknown (the scale is profiled), delta is
      measured by the refraction inside the particle (the phase 2 k R delta), not by the signal level: expect
      it to be poorly determined for k R delta << 0.1. The result's `.values` / `.sigmas` hold the fitted
      constants; its `.alternatives` are those of the fit before this refinement.
    - `delta_sign_tol` (with "delta" in `fit_optics`): a class whose fit ended with delta of the sign opposite
      to the starting `delta` is refined again from delta -> -delta, and the start's sign is kept when it fits
      within `delta_sign_tol` NLL units (`keep_delta_sign`; default `DELTA_SIGN_TOL` = 2; the result's
      `.delta_sign` says what happened). None: the sign the fit ended with, unchecked.
    - `criterion`: "bic" (default) = loss + (k / 2) ln n_used, "aic" = loss + k, or "nll" = loss.
    - `n_starts` (ellipsoid orientations), `n_orientations` (oriented classes: search size; default 96; with
      `init=network` a local search near the network's orientation for the classes it was trained to orient,
      else 48 random, see `fitting.fit_from_network`), `n_refine`
      (oriented classes and the ellipsoid: the number of best search results refined together, see
      `fit_ellipsoid_auto`), `seed`, `regularizer` (harmonic stages, default `SHDegreePrior(0.15)`),
      `sh_route` (the harmonic stage's route, default `SH_ROUTE` = "compact_all": every degree at once from
      the beam-compact ellipsoid; "ladder": degree by degree; `fitting.harmonics_ladder`), `escape_z` (its
      escapes from a local minimum; None: off),
      `search_kwargs` (to `orientation_search`: `bin_factor`, `coarsening`, `size_factors`, `batch`).
    - `class_margin`, `min_classes`: every oriented class's orientation search runs first (a few seconds
      each); only the polyhedra whose best search deviance is within `class_margin` times the best
      polyhedron's (and the `min_classes` best) are refined (`prune_classes`; `class_margin=None`: all are).
      Then the kept polyhedra are refined on the low-q crop (see `coarse`), and only those whose crop
      deviance is within `refine_margin` times the best one's are refined at full resolution (the best always;
      `refine_margin=None`: all kept). The pruned classes are in `.pruned`, not in `.ranking`.
    - `coarse`, `stage_rtol`: the multi-resolution ladder (docs/fitting.md): the sphere, the ellipsoid
      search and the harmonic degrees on the low-q crop of the pattern (`fitting.low_q_crop`), each
      candidate's final fit at full resolution; `coarse=False` (or 1): every stage at full resolution.
      The oriented classes' refinement: the `n_refine` starts on the crop, the best one at full resolution.
    - `init`: None (the searches above), or a network ("network" / "default" = the shipped model, a
      `fitting.NetworkPredictor` or a model file of `diffscat train`): every candidate the network knows
      (`fitting.START_CLASSES`) is fitted by `fitting.fit_from_network` (its predicted size, axes and
      orientation as starts, a short refinement) instead of the sphere / ellipsoid searches; the harmonic
      ladder starts from the network-started ellipsoid; other classes (Superellipsoid) keep their search,
      sized by the network's fit. Needs delta or beta != 0.
    - `sh_start` (with `init`): where the harmonic stage starts. "network": from the network's own
      harmonic coefficients (a model with a harmonic head, `fitting.has_harmonics`; the shipped one since
      session 20): its predicted body and 3 twins, a short coarse search, then every coefficient free
      (`fit_from_network`), with no sphere or ellipsoid fit; only when that ends a misfit (z of
      `noise_consistency` > `escape_z`) is the network-started ellipsoid fitted and the ellipsoid route
      (`sh_route` and its escapes) run, and when the lowest loss is still a misfit, the same route from the
      no-guess ellipsoid search (the multi-start path's start; skipped when it ends at the same ellipsoid);
      the lowest loss kept (`.escapes`: ("network", loss, z), the route's entries, ("ellipsoid_search", loss,
      z)).
      "ellipsoid": the ellipsoid route always. "auto" (default): "network" when the network has a harmonic
      head, else "ellipsoid".
    - `sh_escapes`: when the harmonic stage's escapes run: "misfit" (default; as above, z > `escape_z`) or
      "always" (every pattern, whatever z: after the network start the ellipsoid route from the network's and
      from the searched ellipsoid, and in every case every one of the ladder's other routes; the lowest loss
      kept). For the local
      minima the noise check cannot see (3 of 500 harmonic patterns, IoU 0.82-0.88, all found by "always";
      docs/batch.md), at ~7x the time per pattern. `escape_z=None` turns both off.
    - `ellipsoid_start` (with `init`): "robust" (default) the network-started ellipsoid with its size pinned
      by a sphere fit and 16 starts (the network's + 8 random) through `fit_ellipsoid_auto`, its 3 best
      refined; "network" the network's 8 starts at the predicted size, the search's best refined (before
      session 25: ~4x faster, but on near-spherical ellipsoids it missed the multi-start optimum on 6 of 8;
      docs/network.md section 5, docs/batch.md).
    - `network_min_prob`, `class_network`: the polyhedra among `candidates` to which the network gives a
      class probability below `network_min_prob` are not fitted at all (the most probable polyhedron always
      is); they are listed in `.network_pruned` as (class name, probability). The network: `class_network`
      (same forms as `init`), else `init`. With `init=None` the no-guess searches and the multi-resolution
      ladder run on the kept classes only (the network decides nothing else). None (default): every
      candidate is fitted. Only as good as the network's class head (docs/network.md has its confusion).
    - `network_prune` (with `network_min_prob`): which candidates the network may rule out: "polyhedra"
      (default; the sphere, ellipsoid and harmonic shape are always fitted) or "all" (every candidate class
      the network knows, `NetworkPredictor.classes`; the most probable of them always kept, classes it does
      not know, e.g. "Superellipsoid", always fitted). "all" is the fast path for a dataset whose class is
      unknown: a cube the network calls a cube with p > 1 - p_min is fitted as a cube only, not also by the
      harmonic ladder (docs/network.md, "Class selection with and without the network").
    - `network_nested` (with `network_prune="all"` and network starts, `init`): the sphere, the ellipsoid and
      the harmonic shape are nested (each contains the one before it), so the network's pruning must not
      decide between them where the likelihood can: after the kept classes are fitted, if the best is one of
      them, (1) when its fit is a misfit (`noise_consistency` z > `network_escape_z`, default 2; None:
      never) the richer nested classes the network ruled out are fitted after all (the richest by its
      network route, the others by one local fit from it), and (2) the simpler ones it ruled out are always
      fitted, each by one local fit from the best fit's shape (the same volume; for the ellipsoid the same
      second moments, `ellipsoid_from_shape`). The criterion then chooses as usual. Those classes are listed
      in `.network_added` as (class name, reason) and not in `.network_pruned`; `.network_added_s`: the
      seconds their fits took. False: the network's pruning is final (sessions <= 30).
    - other keywords go to every `fitting.fit` call (`max_steps`, `pitch`, `loss`, ...).

    **Why BIC.** The losses are negative log-likelihoods (up to a data-only constant common to all candidates),
    so they compare directly, but a richer class never fits worse (harmonics contain the ellipsoid and the
    sphere). BIC's penalty (1/2) ln n per parameter is the Laplace approximation to the marginal likelihood
    with a unit-information prior: consistent (it picks the true class as n grows, where AIC keeps a fixed
    chance of choosing a larger nested model), and with ~1e4 pixels it costs ~4.6 NLL units per parameter, so a
    25-coefficient harmonic shape must beat a sphere by ~110 units. Caveat: with very many photons every class
    is somewhat wrong (voxelisation, model error) and the likelihood differences grow with the photon count,
    so the penalty matters only near the noise floor; the ranking is then decided by the misfit.

    Returns the best candidate's `FitResult` with `.ranking`: [(class name, loss, k, criterion value), ...],
    best first, `.pruned`: [(class name, deviance / best's), ...] of the polyhedra not refined, best first (the
    deviance of the stage that pruned it: the orientation search or the crop refinement) (loss: the data term only, `data_loss`, so the harmonic stages' prior is not counted twice), and `.stages` of that candidate. Raises `ValueError` for unknown candidate names.
    """
    from ._init import harmonics_ladder

    cands = list(dict.fromkeys(candidates))
    if not cands:
        raise ValueError("candidates must name at least one shape class")
    bad = [c for c in cands if c not in CANDIDATES]
    if bad:
        raise ValueError(f"candidates must be among {CANDIDATES}, got {bad}")
    if criterion not in ("bic", "aic", "nll"):
        raise ValueError(f"criterion must be 'bic', 'aic' or 'nll', got {criterion!r}")
    if refine_margin is not None and not float(refine_margin) >= 1.0:
        raise ValueError(f"refine_margin must be >= 1 or None, got {refine_margin}")
    pruner = class_network if class_network is not None else init
    check_network_min_prob(network_min_prob, pruner)
    check_network_prune(network_prune)
    sh_from_net = _sh_from_network(sh_start, init)  # checks sh_start before any work
    _check_escapes(sh_escapes, "sh_escapes")
    ell_kw = _ellipsoid_start_kwargs(ellipsoid_start)
    optics = check_fit_optics(fit_optics)
    delta_sign_tol = check_delta_sign_tol(delta_sign_tol)
    if network_escape_z is not None and not np.isfinite(float(network_escape_z)):
        raise ValueError(f"network_escape_z must be a finite number or None, got {network_escape_z}")
    # a loop of fits in one process compiles a few programs per new grid and class; without this it dies
    # at the kernel's memory-map limit ("LLVM ERROR: Unable to allocate section memory", fitting/_jitmem.py)
    release_jit_memory()

    results = {}
    t0 = time.perf_counter()
    ckw = dict(coarse=coarse, stage_rtol=stage_rtol)
    net_pruned: list[tuple[str, float]] = []
    if pruner is not None:
        net, net_pruned = _network_prune(
            pruner, cands, data, experiment, mask, network_min_prob, network_prune
        )
        init = net if init is pruner else init
        cands = [c for c in cands if c not in dict(net_pruned)]
        if verbose and net_pruned:
            print("pruned by the network: " + ", ".join(f"{n} (p = {q:.3f})" for n, q in net_pruned))
    # on the kept classes: network_prune="all" may have ruled the harmonic shape out
    sh_net = sh_from_net and "SphericalHarmonics" in cands
    if init is not None:
        sph, ell, radius = _network_stages(
            results,
            cands,
            data,
            experiment,
            mask,
            delta,
            beta,
            init,
            seed,
            n_orientations,
            n_refine,
            fit_kwargs,
            **ckw,
            fit_optics=optics,
            ellipsoid_for_sh=not sh_net,
            ellipsoid_kwargs=ell_kw,
        )
        if verbose:
            print(f"network starts: {sorted(results)} fitted ({time.perf_counter() - t0:.1f} s)")
    else:
        sph, ell, radius = _search_stages(
            results, cands, data, experiment, mask, delta, beta, n_starts, seed, verbose, t0, ckw, fit_kwargs,
            n_refine,
        )  # fmt: skip

    def fit_harmonics(start=None):
        """The harmonic candidate: (result, ladder stages or None) from the network's coefficients when
        `start` is None, else by the ladder from the ellipsoid `start` (the nested completion uses both)."""
        if start is None:
            res = _harmonics_from_network(
                data, experiment, mask, delta, beta, init, int(lmax), seed, regularizer, escape_z, sh_route,
                optics, ckw, fit_kwargs, verbose, sh_escapes, n_starts, n_refine,
            )  # fmt: skip
            return res, None
        return harmonics_ladder(
            data, experiment, start, int(lmax), mask, regularizer=regularizer, escape_z=escape_z, route=sh_route,
            escapes=sh_escapes, **ckw, **fit_kwargs,
        )  # fmt: skip

    if sh_net:
        res, _ = fit_harmonics()
        results["SphericalHarmonics"] = res
        if radius is None:
            radius = _volume_radius(res.model)
        if verbose:
            print(
                f"SphericalHarmonics (network start): loss {res.loss:.1f} ({time.perf_counter() - t0:.1f} s)"
            )
    elif "SphericalHarmonics" in cands:
        res, stages = fit_harmonics(ell.model)
        res.stages = [x for x in (sph, ell) if x is not None] + stages
        results["SphericalHarmonics"] = res
        if verbose:
            print(f"SphericalHarmonics: loss {res.loss:.1f} ({time.perf_counter() - t0:.1f} s)")
    oriented = [name for name in cands if name not in results]
    skw = dict(search_kwargs or {}, seed=seed)
    searches = {
        name: _class_search(
            name,
            data,
            experiment,
            mask,
            radius,
            delta,
            beta,
            96 if n_orientations is None else n_orientations,
            coarse,
            skw,
        )
        for name in oriented
    }
    keep, pruned = prune_classes({n: float(s[1][0]) for n, s in searches.items()}, class_margin, min_classes)
    if verbose and pruned:
        print("pruned by the orientation search: " + ", ".join(f"{n} ({r:.2f} x best)" for n, r in pruned))
    firsts = {
        name: _oriented_crop(
            name, data, experiment, mask, radius, n_refine, coarse, stage_rtol, searches[name], fit_kwargs
        )
        for name in oriented
        if name in keep
    }
    crop_dev = {n: float(f.loss) for n, f in firsts.items() if f is not None}
    if refine_margin is not None and len(crop_dev) == len(firsts) and min(crop_dev.values(), default=0) > 0:
        keep, late = prune_classes(crop_dev, refine_margin, 1)
        pruned = sorted(pruned + late, key=lambda x: x[1])
        if verbose and late:
            print("pruned by the crop refinement: " + ", ".join(f"{n} ({r:.2f} x best)" for n, r in late))
    for name in oriented:
        if name not in keep:
            continue
        results[name] = _oriented_full(
            name, data, experiment, mask, firsts[name], searches[name], n_refine, fit_kwargs
        )
        if verbose:
            print(f"{name}: loss {results[name].loss:.1f} ({time.perf_counter() - t0:.1f} s)")
    _, m_full = check_data(data, mask, tuple(experiment.shape))
    n_used = int(np.sum(np.asarray(m_full)))
    added: list[tuple[str, str]] = []
    t_added = time.perf_counter()
    if net_pruned and network_nested and init is not None:

        def fit_richer(name):
            if name == "SphericalHarmonics" and sh_from_net:
                return fit_harmonics()[0]
            if name == "SphericalHarmonics":
                # a network without a harmonic head (or sh_start="ellipsoid"): the ladder, from the best nested fit
                below = [results[c].model for c in ("Ellipsoid", "Sphere") if c in results]
                return fit_harmonics(_as_ellipsoid(below[0]))[0]
            return _network_stages(
                {}, [name], data, experiment, mask, delta, beta, init, seed, n_orientations, n_refine, fit_kwargs,
                **ckw, fit_optics=optics, ellipsoid_for_sh=False, ellipsoid_kwargs=ell_kw,
            )[1]  # fmt: skip

        added = _complete_nested(
            results, dict(net_pruned), n_used, criterion, network_escape_z, fit_richer,
            lambda name, model: _fit_nested_below(name, model, data, experiment, mask, optics, fit_kwargs),
            verbose, t0,
        )  # fmt: skip
        net_pruned = [x for x in net_pruned if x[0] not in dict(added)]
    t_added = time.perf_counter() - t_added
    if optics:
        for name in list(results):
            if all(o in results[name].free for o in optics):
                continue  # fitted with them free already (the network's sphere and ellipsoid fits)
            results[name] = refine_optics(
                results[name], optics, data, experiment, mask, regularizer, fit_kwargs
            )
            if verbose:
                vals = ", ".join(f"{o} {float(np.asarray(results[name].values[o])):.4g}" for o in optics)
                print(f"{name} with {vals}: loss {results[name].loss:.1f} ({time.perf_counter() - t0:.1f} s)")
    if "delta" in optics and delta_sign_tol is not None:
        for name in list(results):
            results[name] = keep_delta_sign(
                results[name],
                delta,
                data,
                experiment,
                mask,
                tol=delta_sign_tol,
                regularizer=regularizer,
                **fit_kwargs,
            )
    best = choose_class(results, n_used, criterion)
    best.pruned = pruned
    best.network_pruned = net_pruned
    best.network_added = added
    best.network_added_s = t_added if added else 0.0
    if best.stages is None:
        best.stages = [best]
    return best


def check_fit_optics(fit_optics) -> tuple[str, ...]:
    """`fit_optics` as a tuple of distinct names among `OPTICAL` ("delta", "beta"; ValueError naming the argument
    otherwise)."""
    if isinstance(fit_optics, str):
        fit_optics = (fit_optics,)
    names = tuple(dict.fromkeys(fit_optics or ()))
    bad = [n for n in names if n not in OPTICAL]
    if bad:
        raise ValueError(f"fit_optics must name optical constants among {OPTICAL}, got {bad}")
    return names


def check_delta_sign_tol(delta_sign_tol) -> float | None:
    """`delta_sign_tol` as a float >= 0 (NLL units) or None (ValueError naming the argument otherwise)."""
    if delta_sign_tol is None:
        return None
    if not float(delta_sign_tol) >= 0:
        raise ValueError(f"delta_sign_tol must be >= 0 (NLL units) or None, got {delta_sign_tol}")
    return float(delta_sign_tol)


def _refit(result, model, free, data, experiment, mask, regularizer, fit_kwargs):
    """A full-resolution refinement (`refine_fit`) that continues `result` from `model` with `free` (a harmonic
    shape with `regularizer`, default `SHDegreePrior(0.15)`, as its ladder). The returned `FitResult` counts the
    earlier time, appends itself to the earlier stages and keeps the earlier start losses (its alternatives are
    the caller's to set)."""
    from ._multires import refine_fit
    from ._regularizers import sh_regularizer

    kw = dict(fit_kwargs)
    if isinstance(model, ds.SphericalHarmonics):
        kw["regularizer"] = sh_regularizer(regularizer)
    res = refine_fit(data, experiment, model, mask, free=tuple(free), **kw)
    res.time_s += result.time_s
    res.stages = list(result.stages or [result]) + [res]
    res.start_losses = result.start_losses
    res.n_starts = result.n_starts
    return res


def refine_optics(result, optics: Sequence[str], data, experiment, mask, regularizer, fit_kwargs):
    """`fit_auto(fit_optics=...)`: a full-resolution refinement of `result.model` with `optics` free beside the
    result's own free parameters (a harmonic shape with `regularizer`, default `SHDegreePrior(0.15)`, as its
    ladder). The returned `FitResult` counts the earlier time, appends itself to the earlier stages and keeps
    the earlier `.alternatives` (the twins found at fixed optical constants)."""
    free = tuple(result.free) + tuple(o for o in optics if o not in result.free)
    res = _refit(result, result.model, free, data, experiment, mask, regularizer, fit_kwargs)
    res.alternatives = result.alternatives
    return res


def keep_delta_sign(
    result,
    delta: float,
    data,
    experiment: ds.Experiment,
    mask=None,
    *,
    tol: float = DELTA_SIGN_TOL,
    regularizer=None,
    **fit_kwargs,
):
    """Keep the sign of the starting `delta` where the data cannot tell the sign.

    A particle and its complex conjugate (delta -> -delta at beta = 0) give the same far-field intensity up to
    the inversion q -> -q, and a small beta barely breaks that: a fit with delta free can end on the sign
    opposite to the start's with a loss no better than the start's sign gives (docs/batch.md). Then the start's
    sign, which the user chose from the material, is the better answer.

    Where `result` has delta free (`"delta" in result.free`) and ended with the sign opposite to `delta` (the
    start's value, non-zero), its model with delta -> -delta is refined again (`fitting.refine_fit`, the same
    free parameters; a harmonic shape with `regularizer`, default `SHDegreePrior(0.15)`, as its ladder):
    - if that refit keeps the start's sign and ends at most `tol` NLL units above `result` (or below it), it
      is returned with `delta_sign = "kept"`, and `result` becomes its first alternative;
    - otherwise `result` is returned with `delta_sign = "data"` (the refit among its alternatives when it is
      within `result`'s `alternatives_tol`, default 5 units).
    Anything else (delta fixed, the start's sign kept, `delta` = 0) returns `result` unchanged. The returned
    result's `time_s` and `stages` include the refit. `tol` >= 0 (NLL units); other keywords go to the refit
    (`fitting.fit`'s)."""
    from ._result import Alternative

    tol = float(tol)
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0 (NLL units), got {tol}")
    d0 = float(delta)
    if d0 == 0 or "delta" not in tuple(result.free):
        return result
    d = float(np.asarray(result.model.delta))
    if d == 0 or np.sign(d) == np.sign(d0):
        return result
    flipped = eqx.tree_at(lambda m: m.delta, result.model, -jnp.asarray(result.model.delta))
    # the refit carries result's time and stages: it is the returned result, or its last stage
    other = _refit(result, flipped, result.free, data, experiment, mask, regularizer, fit_kwargs)
    gap = float(other.loss) - float(result.loss)
    if np.sign(float(np.asarray(other.model.delta))) == np.sign(d0) and gap <= tol:
        other.alternatives = [Alternative(result.model, -gap, dict(result.values))] + list(
            result.alternatives
        )
        other.ranking, other.pruned, other.network_pruned = (
            result.ranking,
            result.pruned,
            result.network_pruned,
        )
        other.network_prediction = getattr(result, "network_prediction", None)
        other.delta_sign = "kept"
        return other
    if gap <= float(fit_kwargs.get("alternatives_tol", 5.0)):
        result.alternatives = list(result.alternatives) + [Alternative(other.model, gap, dict(other.values))]
    result.stages, result.time_s = other.stages, other.time_s
    result.delta_sign = "data"
    return result


def prune_classes(
    search_deviances: dict[str, float], class_margin: float | None = 1.5, min_classes: int = 2
) -> tuple[list[str], list[tuple[str, float]]]:
    """Which oriented classes `fit_auto` refines, from their orientation searches' best deviances.

    Only the rigid polyhedra (`POLYHEDRA`: no shape parameter besides size and orientation) are compared: their
    search templates ARE the class up to size and orientation, so their search deviances (same binned pattern,
    same coarse pitch) rank the classes fairly. Other classes (Superellipsoid: a fixed-exponent template) are
    always kept. A polyhedron is kept when its deviance is at most `class_margin` times the best polyhedron's,
    or when it is among the `min_classes` best; `class_margin=None` keeps every class.

    `search_deviances`: {class name: best Poisson deviance of its search (>= 0)}. Returns (names kept, in the
    input order; [(pruned name, deviance / best), ...], best first).
    """
    if class_margin is not None and not float(class_margin) >= 1.0:
        raise ValueError(f"class_margin must be >= 1 or None, got {class_margin}")
    if int(min_classes) < 1:
        raise ValueError(f"min_classes must be >= 1, got {min_classes}")
    poly = {n: v for n, v in search_deviances.items() if n in POLYHEDRA}
    if class_margin is None or len(poly) <= int(min_classes):
        return list(search_deviances), []
    order = sorted(poly, key=lambda n: poly[n] if np.isfinite(poly[n]) else np.inf)
    best = max(poly[order[0]], 1e-30)
    top = set(order[: int(min_classes)])
    drop = [n for n in order if n not in top and not poly[n] <= float(class_margin) * best]
    keep = [n for n in search_deviances if n not in drop]
    return keep, [(n, poly[n] / best) for n in drop]


def check_network_min_prob(min_prob: float | None, network) -> None:
    """`network_min_prob` is None, or in [0, 1) with a network to ask (ValueError otherwise)."""
    if min_prob is None:
        return
    if not 0.0 <= float(min_prob) < 1.0:
        raise ValueError(f"network_min_prob must be in [0, 1) or None, got {min_prob}")
    if network is None:
        raise ValueError(
            "network_min_prob needs a network (class_network= or init=): it prunes classes by its probabilities"
        )


def check_network_prune(scope: str) -> None:
    """`network_prune` is one of `NETWORK_PRUNE` (ValueError naming the argument otherwise)."""
    if scope not in NETWORK_PRUNE:
        raise ValueError(f"network_prune must be one of {NETWORK_PRUNE}, got {scope!r}")


def _network_prune(init, cands, data, experiment, mask, min_prob, scope: str = "polyhedra"):
    """(the resolved network, [(class, probability), ...] the network rules out: below `min_prob`, never the
    most probable of the classes in `scope`), best first. `scope`: "polyhedra" (only the polyhedra among
    `cands` may be ruled out) or "all" (every candidate the network has a probability for)."""
    from ._netinit import resolve_network

    net = resolve_network(init)
    if min_prob is None:
        return net, []
    probs = net.predict(data, experiment, mask)["class_probs"]
    pool = [c for c in cands if c in probs and (scope == "all" or c in POLYHEDRA)]
    if len(pool) < 2:
        return net, []
    top = max(pool, key=lambda c: probs[c])
    drop = [(c, float(probs[c])) for c in pool if c != top and probs[c] < float(min_prob)]
    return net, sorted(drop, key=lambda x: -x[1])


def _complete_nested(
    results, pruned, n_used, criterion, escape_z, fit_richer, fit_simpler, verbose=False, t0=0.0
):
    """`fit_auto(network_nested=True)`: adds to `results` the `NESTED` classes that the network ruled out
    (`pruned`: {class: probability}) around the best fitted one: when the best's noise z exceeds `escape_z`,
    the richest of them through `fit_richer(name)` and the others richer than the best through
    `fit_simpler(name, that model)`; then every simpler one through `fit_simpler(name, model)` from the
    (possibly new) best's model. Returns [(class name, reason), ...] in the order fitted."""
    added: list[tuple[str, str]] = []

    def best_name():
        return choose_class(dict(results), n_used, criterion).ranking[0][0]

    def add(c, result, reason):
        results[c] = result
        added.append((c, reason))
        if verbose:
            print(f"{c} ({reason}): loss {result.loss:.1f} ({time.perf_counter() - t0:.1f} s)")

    name = best_name()
    if name not in NESTED:
        return added
    richer = [c for c in NESTED[NESTED.index(name) + 1 :] if c in pruned and c not in results]
    if richer and escape_z is not None:
        z, _, _ = noise_consistency(results[name])
        if np.isfinite(z) and z > float(escape_z):
            # the richest through its own (network) route; the ones between it and the best by a local fit
            # from it (an ellipsoid from a harmonic body's moments), as in the completion below
            top = richer[-1]
            add(top, fit_richer(top), f"{name} misfit (noise z {z:.1f} > {float(escape_z):g})")
            for c in richer[:-1]:
                add(c, fit_simpler(c, results[top].model), f"nested in {top}, {name} misfit")
            name = best_name()
    for c in NESTED[: NESTED.index(name)]:
        if c in pruned and c not in results:
            add(c, fit_simpler(c, results[name].model), f"nested in {name}")
    return added


def _fit_nested_below(name, model, data, experiment, mask, optics, fit_kwargs):
    """One local fit of the simpler nested class `name` ("Sphere" or "Ellipsoid") from a fitted richer
    `model`: the sphere of the same volume, or the ellipsoid of the same volume and second moments
    (`ellipsoid_from_shape`); free: its size (and axes, orientation) and `optics`."""
    from ._multires import refine_fit
    from ._netinit import _free_for

    if name == "Sphere":
        start = ds.Sphere(_volume_radius(model), model.delta, model.beta, centre=model.centre)
    elif name == "Ellipsoid":
        start = _as_ellipsoid(model)
    else:
        raise ValueError(f"no local nested fit for {name!r}: only Sphere and Ellipsoid")
    return refine_fit(data, experiment, start, mask, free=_free_for(name) + tuple(optics), **fit_kwargs)


def _as_ellipsoid(model: ds.AbstractSolid) -> ds.Ellipsoid:
    """`model` itself when it is an ellipsoid, else the ellipsoid of its volume and second moments
    (`fitting.ellipsoid_from_shape`): the nested completion's start of an ellipsoid fit or a harmonic ladder."""
    from ._init import ellipsoid_from_shape

    return model if isinstance(model, ds.Ellipsoid) else ellipsoid_from_shape(model)


def _volume_radius(shape: ds.AbstractShape) -> float:
    """The volume-equivalent radius of `shape` [length]."""
    return (3.0 * float(np.asarray(shape.volume())) / (4.0 * math.pi)) ** (1.0 / 3.0)


def _sh_from_network(sh_start: str, init) -> bool:
    """`fit_auto`'s `sh_start` resolved: whether the harmonic stage starts from the network's coefficients."""
    from ._netinit import has_harmonics

    if sh_start not in ("auto", "network", "ellipsoid"):
        raise ValueError(f"sh_start must be 'auto', 'network' or 'ellipsoid', got {sh_start!r}")
    if sh_start == "network" and init is None:
        raise ValueError("sh_start='network' needs a network (init=)")
    if sh_start == "ellipsoid" or init is None:
        return False
    if sh_start == "network" and not has_harmonics(init):
        raise ValueError(
            "sh_start='network': this network predicts no harmonic coefficients (trained before session 20 or "
            "with network.sh_lmax = 0); use sh_start='ellipsoid'"
        )
    return has_harmonics(init)


def _sh_ellipsoid_kwargs(data, experiment, mask, coarse, stage_rtol, fit_kwargs) -> dict:
    """`fit_from_network` keywords of the ellipsoid fitted only as the harmonic ladder's start."""
    from ._fit import GRID_MARGIN

    # an intermediate stage (no uncertainties, STAGE_RTOL) on the ladder's coarser voxel grid where it has
    # one; the ladder's last stage refines at full pitch
    kw = start_stage_kwargs(
        data, experiment, mask, coarse, None, fit_kwargs, stage_rtol, search_coarsening=1.0
    )
    # fit's default grids for its search and refinement: the Ellipsoid candidate's tighter, coarser search
    # (SEARCH_MARGIN, SEARCH_COARSENING) ended 1.4-184 NLL higher on 5 of 12 harmonic patterns (lower on 1) at
    # the end of the ladder (docs/batch.md, session 14)
    kw.setdefault("grid_margin", GRID_MARGIN)
    kw.setdefault("search_margin", GRID_MARGIN)
    return kw


def _harmonics_from_network(data, experiment, mask, delta, beta, init, lmax, seed, regularizer, escape_z, sh_route, optics, ckw, fit_kwargs, verbose, sh_escapes="misfit", n_starts=8, n_refine=4):  # fmt: skip
    """`fit_auto`'s harmonic candidate from the network's coefficients (`sh_start="network"`), with two
    escapes when that ends a misfit (or always: `sh_escapes`): (1) the ellipsoid route from the
    network-started ellipsoid, then, when the lowest loss so far is still a misfit, (2) the same route from the
    no-guess ellipsoid search (`sphere_ellipsoid_stages`: the start the multi-start path uses), skipped when
    that search ends at the network-started ellipsoid (`same_ellipsoid`). Returns the `FitResult` of the lowest
    loss, `.escapes` = [("network", loss, z), the first route's entries, ("ellipsoid_search", loss, z)]."""
    from ._init import harmonics_ladder, sphere_ellipsoid_stages
    from ._netinit import fit_from_network

    res = fit_from_network(
        data, experiment, init, mask, candidates=["SphericalHarmonics"], delta=delta, beta=beta, seed=seed,
        lmax=lmax, fit_optics=optics, regularizer=regularizer, **fit_kwargs,
    )  # fmt: skip
    if escape_z is None:
        return res
    z, _, _ = noise_consistency(res)

    def escape_due(zz):  # a misfit by the noise test, or every pattern with sh_escapes="always"
        return sh_escapes == "always" or bool(np.isfinite(zz) and zz > float(escape_z))

    if not escape_due(z):
        return res
    stages = list(res.stages or [res])
    log = [("network", float(res.loss), float(z))]
    kw = _sh_ellipsoid_kwargs(data, experiment, mask, ckw["coarse"], ckw["stage_rtol"], fit_kwargs)
    ell = fit_from_network(
        data, experiment, init, mask, candidates=["Ellipsoid"], delta=delta, beta=beta, seed=seed,
        fit_optics=optics, **kw,
    )  # fmt: skip
    lkw = dict(
        regularizer=regularizer, escape_z=escape_z, route=sh_route, escapes=sh_escapes, **ckw, **fit_kwargs
    )
    other, more = harmonics_ladder(data, experiment, ell.model, lmax, mask, **lkw)
    z2, _, _ = noise_consistency(other)
    log += list(getattr(other, "escapes", None) or [(sh_route or "ladder", float(other.loss), float(z2))])
    stages += [ell] + more
    best, z_best = (other, z2) if other.loss < res.loss else (res, z)
    if verbose:
        print(
            f"harmonics from the network: loss {res.loss:.1f} (z {z:.1f}); ellipsoid route {other.loss:.1f}"
        )
    if escape_due(z_best):
        # session 36: on 1 of the first 182 A/B patterns the network-started ellipsoid sat in a worse ellipsoid
        # basin than the no-guess search's, and every route from it ended 210 NLL units above the multi-start
        # path (docs/network.md)
        _, searched, _ = sphere_ellipsoid_stages(
            data, experiment, mask, delta=delta, beta=beta, coarse=ckw["coarse"], stage_rtol=ckw["stage_rtol"],
            fit_kwargs=fit_kwargs, n_starts=n_starts, seed=seed, n_refine=n_refine,
        )  # fmt: skip
        if not same_ellipsoid(searched.model, ell.model):
            third, more3 = harmonics_ladder(data, experiment, searched.model, lmax, mask, **lkw)
            z3, _, _ = noise_consistency(third)
            log.append(("ellipsoid_search", float(third.loss), float(z3)))
            stages += [searched] + more3
            if third.loss < best.loss:
                best = third
            if verbose:
                print(f"harmonics from the searched ellipsoid: loss {third.loss:.1f} (z {z3:.1f})")
    best.stages = stages
    best.escapes = log
    return best


def same_ellipsoid(a: ds.Ellipsoid, b: ds.Ellipsoid, rtol: float = 0.02) -> bool:
    """Whether two ellipsoids are the same body within `rtol`: their quadratic forms
    R diag(1 / semi_axes^2) R^T [1 / length^2] differ by at most `rtol` of the first one's (Frobenius norm), so
    that axis order and sign conventions of the rotation do not matter (a z-mirror twin is a different body)."""

    def form(e):
        r = np.asarray(e.rotation, dtype=np.float64)
        return r @ np.diag(1.0 / np.asarray(e.semi_axes, dtype=np.float64) ** 2) @ r.T

    fa, fb = form(a), form(b)
    return bool(np.linalg.norm(fa - fb) <= rtol * np.linalg.norm(fa))


ELLIPSOID_STARTS = {"robust": {}, "network": {"pin_size": False, "ellipsoid_refine": 1}}


def _ellipsoid_start_kwargs(ellipsoid_start: str) -> dict:
    """`fit_from_network` keywords of `fit_auto(ellipsoid_start=...)`'s network-started ellipsoid."""
    if ellipsoid_start not in ELLIPSOID_STARTS:
        raise ValueError(f"ellipsoid_start must be one of {tuple(ELLIPSOID_STARTS)}, got {ellipsoid_start!r}")
    return dict(ELLIPSOID_STARTS[ellipsoid_start])


def _network_stages(results, cands, data, experiment, mask, delta, beta, init, seed, n_orientations, n_refine, fit_kwargs, coarse=True, stage_rtol=None, fit_optics=(), ellipsoid_for_sh=True, ellipsoid_kwargs=None):  # fmt: skip
    """`fit_auto(init=network)`: `fit_from_network` for each candidate the network knows but the harmonic
    shape (and the ellipsoid the harmonic ladder starts from, with `ellipsoid_for_sh`); fills `results`;
    returns (sphere or None, ellipsoid or None, radius; None when nothing was fitted)."""
    from ._netinit import START_CLASSES, fit_from_network

    need = [c for c in cands if c in START_CLASSES and c != "SphericalHarmonics"]
    if "SphericalHarmonics" in cands and ellipsoid_for_sh and "Ellipsoid" not in need:
        need.append("Ellipsoid")
    if not need and "SphericalHarmonics" in cands:  # the harmonic fit from the network gives the size
        return None, None, None
    if not need:  # e.g. only Superellipsoid: the network's size still starts its search
        need = ["Sphere"]
    fitted = {}
    for name in need:
        kw = fit_kwargs
        if name == "Ellipsoid" and name not in cands:
            kw = _sh_ellipsoid_kwargs(data, experiment, mask, coarse, stage_rtol, fit_kwargs)
        if name == "Ellipsoid":
            kw = {**kw, **(ellipsoid_kwargs or {})}
        fitted[name] = fit_from_network(
            data,
            experiment,
            init,
            mask,
            candidates=[name],
            delta=delta,
            beta=beta,
            seed=seed,
            n_orientations=n_orientations,
            n_refine=n_refine,
            fit_optics=fit_optics,
            **kw,
        )
    results.update({c: r for c, r in fitted.items() if c in cands})
    first = fitted[need[0]]
    radius = _volume_radius(first.model)
    return fitted.get("Sphere"), fitted.get("Ellipsoid"), radius


def _search_stages(results, cands, data, experiment, mask, delta, beta, n_starts, seed, verbose, t0, ckw, fit_kwargs, n_refine):  # fmt: skip
    """`fit_auto`'s sphere and ellipsoid searches from no guess (`sphere_ellipsoid_stages`); fills `results`;
    returns (sphere, ellipsoid or None, sphere radius)."""
    from ._init import sphere_ellipsoid_stages

    def report(name, res):
        if name in cands:
            results[name] = res
        if verbose:
            size = f"radius {float(res.model.radius):.4g}, " if name == "Sphere" else ""
            print(f"{name}: {size}loss {res.loss:.1f} ({time.perf_counter() - t0:.1f} s)")

    return sphere_ellipsoid_stages(
        data, experiment, mask, delta=delta, beta=beta, coarse=ckw["coarse"], stage_rtol=ckw["stage_rtol"],
        fit_kwargs=fit_kwargs, sphere_final="Sphere" in cands, ellipsoid_final="Ellipsoid" in cands,
        ellipsoid="Ellipsoid" in cands or "SphericalHarmonics" in cands, n_starts=n_starts, seed=seed,
        n_refine=n_refine, report=report,
    )  # fmt: skip
