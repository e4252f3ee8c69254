"""The amortised-inversion network as a start for the gradient fits.

`network_starts` turns one network prediction (volume-equivalent radius, class probabilities, sorted semi-axes,
orientation) into starting shapes per class; `fit_from_network` refines them with a short `fitting.fit` and, for
several candidate classes, picks the best by the same penalised likelihood as `fitting.fit_auto`.

Starts per class (`n_per_class` of them; r = the predicted volume-equivalent radius, in the experiment's length
unit):

- "Sphere": radii r x (1, 1 + s, 1 - s, 1 + 2 s, ...), s = `size_spread`. Sphere fits have local minima about
  one fringe apart (Delta r ~ lambda / (2 sin theta_max)), so a start a few per cent off can land in the wrong
  one; the spread covers the network's typical size error. (`fit_from_network` itself starts the sphere
  with `fitting.fit_sphere_auto` from r, unless optical constants are fitted.)
- "Ellipsoid": the predicted semi-axes (made at least `min_anisotropy` anisotropic, else the orientation has no
  gradient) at the predicted rotation R and at its z-mirror twin (`twin_rotations`: of its 8 rotations, the
  4 body symmetries R D give the same body, so the distinct starts are R and M R diag(1, 1, -1)); each also
  turned about its long axis by 45, 90, 135 deg (`ellipsoid_spins` = 4: the network places the long axis only
  roughly, 5-45 deg off on 14 evaluation-set ellipsoids of c / a 1.04-1.5, and not the spin about it); then
  both twins at the other size factors. The network cannot tell the twins apart (its loss takes the minimum
  over them), so all are tried: a short coarse multi-start
  (`search_steps`) ranks them. `fit_from_network` (`pin_size`, the default) first fits a sphere from the
  predicted size and puts the spun twins at ITS radius, with 8 random orientations beside them (the
  network's ellipsoid orientation is its weakest output, ~40 deg median on the held-out set), through
  `fitting.fit_ellipsoid_auto`'s search and refinements (its `ellipsoid_refine` best distinct optima, not
  only the search's best).
- a polyhedron: the edge of the predicted volume at the size factors above, and orientations. A model trained
  on polyhedron orientations (`train.orientation_classes = "all"`, the shipped one since session 9: its loss
  takes the minimum over the body's point group and the pattern twins, `twin_rotations(R, class)`) gives the
  predicted rotation's distinct twin bodies (`twin_bodies`: R and its z-mirror image; for the decahedron also
  the inverted body and the 180-deg turn) at the size factors; `fit_from_network` then searches only near
  them (`rotations_near`: turns by 15 and 30 deg about 8 axes) by default. Older models (orientation trained on ellipsoids only): the network's rotation
  first, then seeded uniform random rotations, and `fit_from_network` also runs `fitting.orientation_search`
  at the predicted size (`n_orientations`, default 48 then).

Public here (re-exported by `fitting`): `network_starts`, `fit_from_network`, `resolve_network`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import numpy as np

import diffscat as ds

from ._auto import _template, check_fit_optics, choose_class, fit_oriented, orientation_search
from ._evalset import POLYHEDRA
from ._init import _top_optima, fit_ellipsoid_auto, fit_sphere_auto, sphere_starts
from ._jitmem import release_jit_memory
from ._network import NetworkPredictor, harmonics_from_relative, load_network, sh_count, twin_bodies

__all__ = [
    "network_starts",
    "fit_from_network",
    "resolve_network",
    "rotations_near",
    "has_harmonics",
    "START_CLASSES",
    "SH_REFINE_STEPS",
]

START_CLASSES = ("Sphere", "Ellipsoid", *POLYHEDRA, "SphericalHarmonics")
# the number of optimiser steps of the harmonic refinement from the network's coefficients (`fit_from_network`
# with "SphericalHarmonics"): the coefficients are many and the start is further from the optimum than a
# polyhedron's, so fit's default rather than the short refinement of the other classes
SH_REFINE_STEPS = 200
# why a network cannot start a harmonic fit (`has_harmonics` False)
NO_HARMONICS = (
    "this network predicts no spherical-harmonic coefficients (trained before session 20 or with "
    "network.sh_lmax = 0)"
)


def has_harmonics(network) -> bool:
    """Whether `network` (anything `resolve_network` takes) predicts spherical-harmonic coefficients and
    classifies harmonic bodies (a model trained with `network.sh_lmax` > 0 and the class, session 20 on)."""
    net = resolve_network(network)
    return "SphericalHarmonics" in net.classes and int(net.meta["config"]["network"].get("sh_lmax", 0)) > 0


# Voxel-grid half-width of `fit_from_network`'s coarse multi-start, in bounding radii of its largest start
# (`fit`'s default 1.3 leaves room for a start far from the answer; the network's starts are within a few per
# cent in size). With this and `refine_fit`'s grid for the refinement after it: 40 ellipsoid patterns of 64^2
# (4-7 wavelengths, delta free), median 7.8 -> 4.9 s per pattern, success 38 -> 39 / 40, no fit's loss worse by
# more than 1 NLL unit, 7 lower by 1.6-44 (docs/batch.md).
SEARCH_MARGIN = 1.15
# Voxel pitch of that multi-start, relative to the fit's (`diffscat.default_pitch`: q_max x pitch = 0.81 rad, so
# 1.63 rad here, below the aliasing limit pi). The same 40 patterns: 1.5 -> 2.0 (2.4x fewer voxels) took the
# median from 4.9 to 3.9 s; 36 fits ended at the same loss (+-1), 3 lower (by 0.8-86), 1 higher (by 17, IoU
# 0.996 -> 0.967); 38 against 39 successes (the lost one: IoU 0.925 -> 0.882 at a 0.8 LOWER loss, the
# delta-thickness ambiguity). Fewer search steps (12) lost 4 successes.
SEARCH_COARSENING = 2.0
# optimiser steps of that coarse multi-start (`fit_from_network(search_steps=None)`; the pinned ellipsoid's
# search on the low-q crop takes `fitting.fit_ellipsoid_auto`'s own default)
SEARCH_STEPS = 20
# the sphere fit from the network's radius (`fitting.fit_sphere_auto`'s starts on the low-q crop): n radii
# over (1 +- spread) r. The no-guess path's +-3 % (its `estimate_radius` is closer) ended one fringe off on a
# Mie sphere from the network's size (NLL +14.7, session 25); +-10 % covers the network's 90th percentile
# size error (9.8 % on 598 held-out patterns)
SPHERE_STARTS = (8, 0.10)
# how many of the pinned ellipsoid's search optima `fitting.fit_ellipsoid_auto` refines (`ellipsoid_refine`).
# Session 29, 30 evaluation-set ellipsoids (64^2, the first 14 those that set 8 in session 25): each of the 8
# refined alone, the best of the first k (in the search's order) against the best of all 8: k = 1 within
# 0.1 NLL units on 27 / 30 (worst +2.9), k = 2 on 29 / 30 (worst +0.16), k = 3 on 30 / 30. Most of the 8 picks
# are the same basin (the search stops before they converge, so they count as distinct); the refinement
# was 29-79 % of the route's time (docs/network.md, "The robust ellipsoid route's refinements").
ELLIPSOID_REFINE = 3


def resolve_network(network) -> NetworkPredictor:
    """A `NetworkPredictor` from `network`: a `NetworkPredictor` (returned as is), a path to a model written
    by `diffscat train` (`load_network`: read once per file version), or "default" / "network" (the
    shipped model)."""
    if isinstance(network, NetworkPredictor):
        return network
    if isinstance(network, str) and network in ("default", "network"):
        return load_network("default")
    if isinstance(network, str | os.PathLike):
        return load_network(network)
    raise TypeError(
        f"network must be a fitting.NetworkPredictor, a model path or 'default', got {type(network).__name__}"
    )


def _size_factors(n: int, spread: float) -> list[float]:
    """n factors 1, 1 + s, 1 - s, 1 + 2 s, 1 - 2 s, ..."""
    out = [1.0]
    j = 1
    while len(out) < n:
        out.append(1.0 + j * spread)
        if len(out) < n:
            out.append(1.0 - j * spread)
        j += 1
    return out


def _check_classes(classes) -> list[str]:
    if isinstance(classes, str):
        classes = [classes]
    names = list(dict.fromkeys(classes))
    if not names:
        raise ValueError("classes must name at least one shape class")
    bad = [c for c in names if c not in START_CLASSES]
    if bad:
        raise ValueError(f"classes must be among {START_CLASSES}, got {bad}")
    return names


def _random_rotations(n: int, seed: int) -> np.ndarray:
    from ._train import _random_rotations as rr

    return rr(np.random.default_rng([int(seed), 17]), int(n))


def rotations_near(rotations, angles_deg: Sequence[float] = (15.0, 30.0)) -> np.ndarray:
    """Each rotation of `rotations` ((k, 3, 3) or a list) and its turns by each angle of `angles_deg` about
    the 8 lab axes (+-1, +-1, +-1) / sqrt 3 (evenly around every direction): (k (1 + 8 n_angles), 3, 3)."""
    axes = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float) / math.sqrt(3.0)
    turns = [np.eye(3)]
    for ang in angles_deg:
        t = math.radians(float(ang))
        for u in axes:
            K = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
            turns.append(np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K)  # Rodrigues
    return np.array([T @ np.asarray(R, float) for R in rotations for T in turns])


def _turn_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ellipsoid_axes(semi_axes: np.ndarray, r: float, min_anisotropy: float) -> np.ndarray:
    """Sorted semi-axes of volume-equivalent radius `r` with c / a >= (1 + m) / (1 - m)."""
    a = np.sort(np.asarray(semi_axes, float))
    a = a * r / np.prod(a) ** (1 / 3)
    m = float(min_anisotropy)
    if m > 0 and a[2] / a[0] < (1 + m) / (1 - m):
        a = r * np.array([1 - m, 1.0, 1 + m]) / ((1 - m) * (1 + m)) ** (1 / 3)
    return a


def starts_from_prediction(
    prediction: dict,
    classes: Sequence[str],
    *,
    delta: float = 0.0,
    beta: float = 0.0,
    n_per_class: int = 4,
    size_spread: float = 0.04,
    min_anisotropy: float = 0.05,
    seed: int = 0,
    ellipsoid_spins: int = 4,
    lmax: int | None = None,
) -> dict[str, list[ds.AbstractShape]]:
    """Starting shapes per class from one `NetworkPredictor.predict` dict (see the module docstring).
    "SphericalHarmonics": the predicted lab-frame body (`prediction["coefficients"]`, padded or cut to degree
    `lmax`, default the network's) and its three pattern twins (`fitting.harmonics_twins`: point inversion,
    mirror along the beam, both), which the network cannot tell apart (its loss takes the minimum over them)."""
    r = float(prediction["radius_eq"])
    R = np.asarray(prediction["rotation"], float)
    out: dict[str, list[ds.AbstractShape]] = {}
    for name in classes:
        if name == "SphericalHarmonics":
            out[name] = _harmonic_starts(prediction, delta, beta, lmax)
        elif name == "Sphere":
            fs = _size_factors(n_per_class, size_spread)
            out[name] = [ds.Sphere(r * f, delta=delta, beta=beta) for f in fs]
        elif name == "Ellipsoid":
            # the distinct twin bodies: R and the z-mirror twin M R diag(1, 1, -1) (the other 6 of
            # `twin_rotations` are body symmetries of these two: the same ellipsoid)
            twins = twin_bodies(R, "Ellipsoid")
            axes = _ellipsoid_axes(prediction["semi_axes"], r, min_anisotropy)
            fs = _size_factors(max(1, math.ceil(n_per_class / 2)), size_spread)
            # the network's spin about the long axis is not learnt (docs/network.md): turns of each twin
            # about its long (body z) axis at the predicted size, then the twins at the other sizes
            spins = [_turn_z(math.pi * k / int(ellipsoid_spins)) for k in range(1, int(ellipsoid_spins))]
            rots = twins + [T @ S for S in spins for T in twins]
            out[name] = [ds.Ellipsoid(axes * fs[0], delta=delta, beta=beta, rotation=T) for T in rots] + [
                ds.Ellipsoid(axes * f, delta=delta, beta=beta, rotation=T) for f in fs[1:] for T in twins
            ]
        else:
            # the same template as the orientation search's (the rigid Decahedron: notched=False), so that
            # the network's starts and the search's can be fitted together in one multi-start
            if name in prediction.get("oriented_classes", ()):
                bodies = twin_bodies(R, name)
                fs = _size_factors(max(1, math.ceil(n_per_class / len(bodies))), size_spread)
                out[name] = [_template(name, r * f, delta, beta, rotation=T) for f in fs for T in bodies][
                    : max(n_per_class, len(bodies))
                ]
                continue
            rots = np.concatenate([R[None], _random_rotations(max(n_per_class - 1, 0), seed)])
            fs = _size_factors(n_per_class, size_spread)
            out[name] = [
                _template(name, r * f, delta, beta, rotation=Rk) for f, Rk in zip(fs, rots, strict=True)
            ]
    return out


def _harmonic_starts(prediction: dict, delta: float, beta: float, lmax: int | None) -> list[ds.AbstractShape]:
    from ._init import harmonics_twins

    if "sh_relative" not in prediction:
        raise ValueError(f"{NO_HARMONICS}: no SphericalHarmonics starts")
    rel = np.asarray(prediction["sh_relative"], float)
    L = math.isqrt(rel.size + 1) - 1 if lmax is None else int(lmax)
    if L < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    cut = np.zeros(sh_count(L))  # padded with zeros or cut; the predicted volume either way
    k = min(cut.size, rel.size)
    cut[:k] = rel[:k]
    full = harmonics_from_relative(cut, float(prediction["radius_eq"]))
    return harmonics_twins(ds.SphericalHarmonics(full.astype(np.float32), delta, beta))


def network_starts(
    network,
    data,
    experiment: ds.Experiment,
    mask=None,
    *,
    delta: float = 0.0,
    beta: float = 0.0,
    classes: Sequence[str] | str | None = None,
    n_per_class: int = 4,
    size_spread: float = 0.04,
    min_anisotropy: float = 0.05,
    seed: int = 0,
    ellipsoid_spins: int = 4,
    lmax: int | None = None,
) -> dict[str, list[ds.AbstractShape]]:
    """Starting shapes for `fitting.fit`, per class, from one network prediction.

    **Arguments:**
    - `network`: a `fitting.NetworkPredictor`, the path of a model written by `diffscat train`, or "default"
      (the shipped model, `fitting/models/default.eqx`).
    - `data`: ONE pattern of photon counts, shaped like `experiment.shape`; `mask`: True = used pixel.
    - `delta`, `beta`: optical constants of the starts (the network does not predict them).
    - `classes`: class names among `START_CLASSES` ("Sphere", "Ellipsoid", the six polyhedra,
      "SphericalHarmonics": only from a model with a harmonic head); default the network's predicted class
      only. `lmax`: the degree of the harmonic starts (default the network's, 4 for the shipped model).
    - `n_per_class` (>= 1): starts per class (sizes x orientations; see the module docstring for the
      ellipsoid's and the polyhedra's twins); `size_spread`: relative size step between starts;
      `min_anisotropy`: ellipsoid starts get c / a >= (1 + m) / (1 - m); `seed`: the random orientations of
      polyhedron starts (models not trained on them); `ellipsoid_spins` (>= 1): each ellipsoid twin also turned
      about its long axis by k 180 / `ellipsoid_spins` deg, k = 1 .. spins - 1, at the predicted size (the
      network's spin about that axis is not learnt; 1 = none).

    **Returns:** {class name: [shape, ...]}, sizes in the experiment's length unit. The full prediction is
    available from `resolve_network(network).predict(data, experiment, mask)`.
    """
    net = resolve_network(network)
    if not isinstance(experiment, ds.Experiment):
        raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
    if int(n_per_class) < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if not 0 <= float(size_spread) < 0.5:
        raise ValueError(f"size_spread must be in [0, 0.5), got {size_spread}")
    if not 0 <= float(min_anisotropy) < 0.5:
        raise ValueError(f"min_anisotropy must be in [0, 0.5), got {min_anisotropy}")
    if int(ellipsoid_spins) < 1:
        raise ValueError(f"ellipsoid_spins must be >= 1, got {ellipsoid_spins}")
    p = net.predict(data, experiment, mask)
    names = [p["class"]] if classes is None else _check_classes(classes)
    return starts_from_prediction(
        p,
        names,
        delta=delta,
        beta=beta,
        n_per_class=int(n_per_class),
        size_spread=float(size_spread),
        min_anisotropy=float(min_anisotropy),
        seed=seed,
        ellipsoid_spins=int(ellipsoid_spins),
        lmax=lmax,
    )


def _free_for(name: str) -> tuple[str, ...]:
    if name == "SphericalHarmonics":
        return ("coefficients",)
    if name == "Sphere":
        return ("radius",)
    if name == "Ellipsoid":
        return ("semi_axes", "orientation")
    return ("edge", "orientation")


def _pinned_ellipsoid_starts(sphere_fit, p, delta, beta, seed, spins, n_random=8):
    """The ellipsoid's starts at the volume-equivalent radius of `sphere_fit` instead of the network's: the
    predicted twins in `spins` spins (`starts_from_prediction` at that one size), then `n_random` random
    orientations (`fitting.ellipsoid_starts`)."""
    from ._init import ellipsoid_starts

    r = float(np.asarray(sphere_fit.model.radius))
    net = starts_from_prediction(
        {**p, "radius_eq": r}, ["Ellipsoid"], delta=delta, beta=beta, n_per_class=1, seed=seed,
        ellipsoid_spins=int(spins),
    )["Ellipsoid"]  # fmt: skip
    return net + ellipsoid_starts(r, int(n_random), delta=delta, beta=beta, seed=seed)


def fit_from_network(
    data,
    experiment: ds.Experiment,
    network,
    mask=None,
    *,
    candidates: Sequence[str] | str | None = None,
    delta: float,
    beta: float,
    max_steps: int = 60,
    n_per_class: int = 4,
    size_spread: float = 0.04,
    n_orientations: int | None = None,
    n_refine: int = 4,
    search_steps: int | None = None,
    search_coarsening: float = SEARCH_COARSENING,
    search_margin: float = SEARCH_MARGIN,
    criterion: str = "bic",
    seed: int = 0,
    search_kwargs: dict | None = None,
    ellipsoid_spins: int = 4,
    fit_optics: Sequence[str] = (),
    lmax: int | None = None,
    pin_size: bool = True,
    ellipsoid_refine: int = ELLIPSOID_REFINE,
    **fit_kwargs,
):
    """Network prediction, then a short `fitting.fit` refinement from its starts (`network_starts`).

    **Arguments:**
    - `data`, `experiment`, `mask`: as for `fitting.fit` (ONE pattern of photon counts).
    - `network`: a `NetworkPredictor`, a model path, or "default" (the shipped model).
    - `candidates`: class names among `START_CLASSES`; default the network's predicted class. Each is fitted
      (one vmapped multi-start of its starts) and the best is chosen by `criterion` exactly as in
      `fitting.fit_auto` ("bic": data loss + (k / 2) ln n_used, "aic": + k, "nll": the data loss alone).
    - `delta`, `beta` (required): fixed optical constants (not both 0); `max_steps`: optimiser steps of each refinement.
    - `fit_optics`: names among ("delta", "beta") freed with the shape's parameters in the sphere's and the
      ellipsoid's fits (the coarse multi-start too: every start finds its own delta, so a wrong assumed
      delta does not decide which start wins); `delta`, `beta` are then the starting values. The polyhedra's
      local-search path keeps them fixed (`fitting.fit_auto(fit_optics=...)` frees them afterwards). The sign
      of a fitted delta is the fit's own here; `fitting.fit_auto` then applies `fitting.keep_delta_sign`.
    - `n_per_class`, `size_spread`, `seed`, `ellipsoid_spins`, `lmax`: see `network_starts`.
    - "SphericalHarmonics" (a model with a harmonic head): the predicted body and its 3 twins run the coarse
      search, which only ranks them: the best-ranked twin itself (not the search's end point, which moved 2
      of 10 evaluation-set bodies into another basin) is refined with every coefficient free for
      `SH_REFINE_STEPS` steps (or the caller's `max_steps` when larger), with the harmonic prior
      `SHDegreePrior(0.15)` unless the caller gives a `regularizer`.
    - `n_orientations`, `n_refine`: polyhedra only: the `n_refine` best of `fitting.orientation_search` over
      `n_orientations` random orientations at the predicted size join the network's starts (0 = network
      starts only). Default (None): for the classes whose orientation the network was trained on
      (`prediction["oriented_classes"]`) a LOCAL search instead, over the predicted rotation's twin bodies
      and their turns by 15 and 30 deg about 8 axes (`rotations_near`: 17 per body), whose `n_refine` best
      are then refined as in `fitting.fit_auto` (`fitting.fit_oriented`: on the low-q crop of the pattern
      first when the size allows one, then the best at full resolution; `search_steps` is not used); for
      the others 48 random orientations. `search_kwargs` go to the search.
    - "Sphere" (unless `fit_optics`): `fitting.fit_sphere_auto` from the predicted radius (`SPHERE_STARTS`: 8
      radii over +-10 % on the low-q crop, the best refined at full resolution), the no-guess path's fit;
      with `fit_optics` the `n_per_class` size starts at full resolution.
    - `pin_size`, `ellipsoid_refine` (ellipsoids, `pin_size=True` the default): the sphere fit first (the
      Sphere candidate's when it is one, else `fitting.fit_sphere_auto`'s crop stage, or with `fit_optics`
      `SPHERE_STARTS` at full resolution with the optics free: `.size_pin` of the ellipsoid's result), and the
      ellipsoid's starts at ITS radius: the predicted twins in `ellipsoid_spins` spins and 8 random
      orientations (`fitting.ellipsoid_starts`), run through
      `fitting.fit_ellipsoid_auto` (search on the low-q crop, its `ellipsoid_refine` best distinct optima,
      default `ELLIPSOID_REFINE` = 3, refined there and then at full resolution). On 8 evaluation-set
      ellipsoids (64^2) the multi-start optimum was reached by 2 / 8 from the predicted size and the search's
      best alone, 8 / 8 this way with 8 refined (docs/network.md); 3 reach the 8's optimum on 30 / 30.
      `pin_size=False`: the former path (the starts at the predicted size, the coarse full-pattern search
      below, its `ellipsoid_refine` best refined at full resolution).
    - `search_steps` (default None: `SEARCH_STEPS`, and `fitting.fit_ellipsoid_auto`'s own for the pinned
      ellipsoid), `search_coarsening`: polyhedra with `n_orientations`, the harmonic body and the unpinned
      ellipsoid: all starts (more than 4: the first power of two of them, in `network_starts`'s order)
      first run `search_steps` optimiser steps on a voxel grid `search_coarsening` times coarser than the
      fit's; only the best is refined at full resolution (the unpinned ellipsoid: its `ellipsoid_refine`
      best; the harmonic body: the best-ranked start itself; `search_steps=0`: refine every start at full
      resolution). The search's grid is `search_margin`
      bounding radii of the largest start wide (`SEARCH_MARGIN`; a caller's `grid` / `grid_margin` do not
      apply to it), and the refinement after it runs on `fitting.refine_fit`'s tight grid (the search's
      optimum is near the answer) unless the caller gives `grid` or `grid_margin`.
    - other keywords go to every `fitting.fit` call (`pitch`, `loss`, `uncertainties`, ...).

    **Returns:** the best candidate's `FitResult` with `.ranking` = [(class, data loss, k, criterion), ...]
    best first (as `fit_auto`), `.stages` = [the coarse search (if any), the refinement], and `.network_prediction` = the network's dict.
    """
    from ._fit import fit
    from ._losses import check_data
    from ._multires import refine_fit

    net = resolve_network(network)
    if not isinstance(experiment, ds.Experiment):
        raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
    if criterion not in ("bic", "aic", "nll"):
        raise ValueError(f"criterion must be 'bic', 'aic' or 'nll', got {criterion!r}")
    if float(delta) == 0 and float(beta) == 0:
        raise ValueError(
            "delta and beta are both 0: such a particle does not scatter (give its optical constants)"
        )
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    ell_search = {} if search_steps is None else {"search_steps": int(search_steps)}
    search_steps = SEARCH_STEPS if search_steps is None else search_steps
    if int(search_steps) < 0 or not float(search_coarsening) >= 1:
        raise ValueError(
            f"search_steps must be >= 0 and search_coarsening >= 1, got {search_steps}, {search_coarsening}"
        )
    if not float(search_margin) > 1:
        raise ValueError(f"search_margin must be > 1 (bounding radii), got {search_margin}")
    if (n_orientations is not None and int(n_orientations) < 0) or int(n_refine) < 0:
        raise ValueError(f"n_orientations and n_refine must be >= 0, got {n_orientations}, {n_refine}")
    check_data(data, mask, tuple(experiment.shape))
    optics = check_fit_optics(fit_optics)
    release_jit_memory()  # a loop of fits: stay under the kernel's memory-map limit (fitting/_jitmem.py)
    t0 = time.perf_counter()
    p = net.predict(data, experiment, mask)
    names = [p["class"]] if candidates is None else _check_classes(candidates)
    starts = starts_from_prediction(
        p,
        names,
        delta=delta,
        beta=beta,
        n_per_class=int(n_per_class),
        size_spread=float(size_spread),
        seed=seed,
        ellipsoid_spins=int(ellipsoid_spins),
        lmax=lmax,
    )
    results = {}
    pin = None
    if "Ellipsoid" in names and pin_size:
        # the size first, from a sphere fit (one parameter, basins about a fringe wide): the ellipsoid search
        # starts at the predicted size only, and a start ~9 % off in size ended 33 NLL units above the
        # multi-start optimum (docs/network.md); the Sphere candidate's own fit when it is one
        if "Sphere" in names:
            names = ["Sphere"] + [n for n in names if n != "Sphere"]
        elif optics:
            # fitted optical constants: free in the pin too (a wrong assumed delta shifts the fringes), so
            # the sphere's starts at full resolution rather than `fit_sphere_auto` (radius only)
            pin = fit(
                data,
                experiment,
                sphere_starts(float(p["radius_eq"]), *SPHERE_STARTS, delta=delta, beta=beta),
                mask,
                free=("radius",) + optics,
                **(dict(fit_kwargs) | {"max_steps": int(max_steps), "uncertainties": False}),
            )  # fmt: skip
        else:
            pin = fit_sphere_auto(
                data, experiment, mask, delta=delta, beta=beta, radius=float(p["radius_eq"]),
                n_starts=SPHERE_STARTS[0], spread=SPHERE_STARTS[1], refine=False,
                **{k: v for k, v in fit_kwargs.items() if k not in ("uncertainties", "grid", "grid_margin")},
            )  # fmt: skip
        if pin is not None:
            starts["Ellipsoid"] = _pinned_ellipsoid_starts(pin, p, delta, beta, seed, ellipsoid_spins)
    for name in names:
        s = starts[name]
        n_or, near = n_orientations, None
        if n_or is None and name in p.get("oriented_classes", ()):
            near = rotations_near(twin_bodies(p["rotation"], name))
            n_or = len(near)
        elif n_or is None:
            n_or = 48
        if name in POLYHEDRA and int(n_or) > 0 and int(n_refine) > 0:
            search = orientation_search(
                name,
                data,
                experiment,
                mask,
                float(p["radius_eq"]),
                delta=delta,
                beta=beta,
                n_orientations=int(n_or),
                rotations=near,
                **dict({"seed": seed} | (search_kwargs or {})),
            )
            if near is not None:
                # the local search ranked the network's twin bodies and their turns (sizes 0.95-1.05):
                # refine its best as fit_auto does, on the low-q crop first (fit_oriented), not the full
                # pattern (a coarse full-pattern multi-start of 8 starts cost ~100 s for a 7.6-lambda
                # octahedron at 64^2)
                res = fit_oriented(
                    name,
                    data,
                    experiment,
                    mask,
                    radius=float(p["radius_eq"]),
                    n_refine=int(n_refine),
                    search=search,
                    max_steps=int(max_steps),
                    **fit_kwargs,
                )
                res.stages = res.stages or [res]
                results[name] = res
                continue
            s = s + search[0][: int(n_refine)]
        kw = dict(fit_kwargs)
        steps = int(max_steps)
        if name == "SphericalHarmonics":
            from ._regularizers import sh_regularizer

            kw["regularizer"] = sh_regularizer(kw.get("regularizer"))
            steps = max(steps, SH_REFINE_STEPS)
        pitch = kw.pop("pitch", None)
        if pitch is None and experiment.sampling_hint is not None:
            pitch = ds.default_pitch(*experiment.sampling_hint)
        stages = []
        if len(s) > 4 and len(s) & (len(s) - 1):
            # the vmapped batch is padded to a power of two: the starts are in priority order (the
            # ellipsoid's: both twins in every spin at the predicted size, then the other sizes), so keep
            # the largest power of two of them rather than pay for padding (10 starts ran as 16: 64^2
            # ellipsoids, search 14-15 s -> 6-10 s as 8, the same optima on 3 patterns)
            s = s[: 1 << (len(s).bit_length() - 1)]
        free = _free_for(name) + optics
        if name == "Sphere" and not optics:
            # the no-guess path's sphere fit (`fit_sphere_auto`: SPHERE_STARTS on the low-q crop, then the
            # best at full resolution) from the network's radius: 4 starts at full resolution took ~5 x as
            # long when compiled (64^2: 5.0 s against 1.0 s, docs/network.md)
            res = fit_sphere_auto(
                data, experiment, mask, delta=delta, beta=beta, radius=float(p["radius_eq"]),
                n_starts=SPHERE_STARTS[0], spread=SPHERE_STARTS[1],
                **(dict(fit_kwargs) | {"max_steps": steps}),
            )  # fmt: skip
        elif name == "Ellipsoid" and pin_size:
            # the no-guess path's multi-resolution search and refinements (`fit_ellipsoid_auto`: low-q crop,
            # then the full pattern) from the network's starts at the pinned size
            res = fit_ellipsoid_auto(
                data, experiment, mask, delta=delta, beta=beta, starts=s, n_refine=int(ellipsoid_refine),
                free=free, **ell_search, **(dict(fit_kwargs) | {"max_steps": steps}),
            )  # fmt: skip
        else:
            if name != "Sphere" and len(s) > 1 and int(search_steps) > 0:
                # a short multi-start on a coarser grid picks the start (twin, size); only it is refined
                tol = float(kw.get("alternatives_tol", 5.0))
                search = fit(
                    data,
                    experiment,
                    s,
                    mask,
                    free=free,
                    pitch=None if pitch is None else pitch * float(search_coarsening),
                    max_steps=int(search_steps),
                    uncertainties=False,
                    grid_margin=float(search_margin),
                    alternatives_tol=math.inf if name == "Ellipsoid" and int(ellipsoid_refine) > 1 else tol,
                    **{
                        k: v
                        for k, v in kw.items()
                        if k not in ("uncertainties", "grid", "grid_margin", "alternatives_tol")
                    },
                )
                stages.append(search)
                # the short coarse search ranks the ellipsoid's basins poorly (as in
                # `fit_ellipsoid_auto`): the unpinned ellipsoid's `ellipsoid_refine` best distinct optima go
                # on to the refinement together (the harmonic body: below); the optimum's starts were
                # ranked 10th-16th of 16 by this search on one evaluation-set ellipsoid (docs/network.md)
                if name == "SphericalHarmonics":
                    # the harmonic body: the search ranks the 4 twins, and the best-ranked TWIN (not where the
                    # search left it) is refined. 20 steps on the 2x coarser grid moved the coefficients into
                    # another basin on 2 of 10 evaluation-set bodies (+45.5 and +14.7 NLL after refinement,
                    # IoU 0.958 / 0.966); refined from the twin itself all 10 reached fit_auto's multi-start
                    # optimum (within 1 NLL unit), compiled 47 s in all against 40 s (docs/network.md)
                    s = s[int(np.argmin(np.nan_to_num(np.asarray(search.start_losses), nan=np.inf)))]
                else:
                    s = (
                        _top_optima(search, int(ellipsoid_refine), tol)
                        if name == "Ellipsoid" and int(ellipsoid_refine) > 1
                        else search.model
                    )
            # after a search: refine_fit's tight grid (refit on fit's default grid if the shape outgrew it)
            refine = refine_fit if stages else fit
            res = refine(data, experiment, s, mask, free=free, pitch=pitch, max_steps=steps, **kw)
            res.stages = stages + [res]
        if name == "Ellipsoid":
            res.size_pin = pin  # the sphere fit that set the starts' size (None: the network's size)
        results[name] = res
        if name == "Sphere" and "Ellipsoid" in names and pin_size:
            pin = res
            starts["Ellipsoid"] = _pinned_ellipsoid_starts(res, p, delta, beta, seed, ellipsoid_spins)
    best = choose_class(results, int(next(iter(results.values())).n_used), criterion)
    best.network_prediction = p
    best.total_s = time.perf_counter() - t0
    return best
