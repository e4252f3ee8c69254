"""Automatic initialisation from the pattern: size from the fringe spacing, beam centre from the pattern's
centrosymmetry, and the ladder sphere -> ellipsoid (axes + orientation, multi-start) that `fit_auto` and
`fit_spherical_harmonics` climb.

All estimates here are NumPy on concrete data (they run once, before any jit).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from jaxtyping import ArrayLike, Bool, Float
from scipy.special import j0

import diffscat as ds

from ._losses import check_data
from ._multires import ESCAPE_Z, N_CORRECT, STAGE_COARSENING, STAGE_MAX_STEPS

__all__ = [
    "radial_profile",
    "estimate_radius",
    "msft_sphere_intensity",
    "estimate_center",
    "random_rotations",
    "ellipsoid_starts",
    "fit_sphere_auto",
    "fit_ellipsoid_auto",
    "ellipsoid_from_shape",
    "harmonics_from_ellipsoid",
    "pad_harmonics",
    "fit_spherical_harmonics",
    "harmonics_ladder",
    "harmonics_twins",
    "beam_compact",
]


# `harmonics_ladder`'s named routes, in the order the escapes try them (`FitResult.escapes` names them;
# batch-fit's `escape` column codes them after "none": no escape ran)
ESCAPE_ROUTES = ("compact_all", "ladder", "all_degrees", "compact", "coarse_last")
# when the escapes run: "misfit" (the first route's result is a misfit, z > escape_z) or "always" (every route
# on every pattern; for the few local minima that the noise check cannot see, at ~7x the time; docs/batch.md)
ESCAPE_WHEN = ("misfit", "always")
# every route a harmonic result can name in `.escapes`: the ladder's, then "network" (`fitting.fit_auto` with
# `sh_start="network"`: from the network's own coefficients) and "ellipsoid_search" (its last escape: the
# ellipsoid route from the no-guess ellipsoid search); batch-fit's `escape` column is 1 + the index here
HARMONIC_ROUTES = (*ESCAPE_ROUTES, "network", "ellipsoid_search")
# (start from the beam-compact ellipsoid, every degree at once, coarse_last) of each route
_ROUTE_PLANS = {
    "compact_all": (True, True, False),
    "ladder": (False, False, False),
    "all_degrees": (False, True, False),
    "compact": (True, False, False),
    "coarse_last": (False, False, True),
}
# The harmonic stage of `fit_spherical_harmonics` and `fit_auto` (their `sh_route`): one full-pitch fit with
# every degree free from the beam-compact ellipsoid. On the first 80 harmonic dataset patterns (64^2, lmax 4,
# network-started ellipsoid), against the degree-by-degree "ladder" with its escapes: IoU >= 0.9 on 80 / 80
# (74 / 80), no misfit (3), NLL lower by > 2 on 21 and higher by 2-5 on 4, median time per pattern 21 s
# (52 s), both under load (docs/fitting.md, session 19).
SH_ROUTE = "compact_all"


def _check_escapes(escapes: str, name: str = "escapes") -> str:
    """`escapes` if it is one of `ESCAPE_WHEN`, else a ValueError naming the argument `name`."""
    if escapes not in ESCAPE_WHEN:
        raise ValueError(f"{name} must be one of {ESCAPE_WHEN}, got {escapes!r}")
    return escapes


def _norm_q(experiment: ds.Experiment) -> np.ndarray:
    return np.linalg.norm(np.asarray(experiment.q, dtype=float), axis=-1)


def radial_profile(
    data: Float[ArrayLike, "*image"],
    experiment: ds.Experiment,
    mask: Bool[ArrayLike, "*image"] | None = None,
    n_bins: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuthal sums in |q| bins: (bin centres |q| [1/length], summed counts, summed solid angle [sr]).

    counts / solid angle is proportional to dsigma/dOmega averaged over the ring; bins with no used pixel have
    zero solid angle.
    """
    d, m = check_data(data, mask, tuple(experiment.shape))
    d, m = np.asarray(d, float), np.asarray(m) & np.asarray(experiment.valid)
    q = _norm_q(experiment)
    sa = np.asarray(experiment.solid_angle, float)
    edges = np.linspace(0.0, q[m].max() * (1 + 1e-9), int(n_bins) + 1)
    idx = np.clip(np.digitize(q[m], edges) - 1, 0, n_bins - 1)
    c = np.bincount(idx, d[m], minlength=n_bins)
    w = np.bincount(idx, sa[m], minlength=n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), c, w


def _sphere_ff2(u):
    u = np.asarray(u, float)
    out = np.ones_like(u)
    s = u > 1e-4
    us = u[s]
    out[s] = (3 * (np.sin(us) - us * np.cos(us)) / us**3) ** 2
    return out


def msft_sphere_intensity(q, radii, wavelength: float, delta: float = 0.0, beta: float = 0.0, n_nodes=None):
    """|Psi|^2 of a homogeneous sphere under the continuous MSFT (eq. 9 with slices of zero thickness), up to
    a constant factor, at momentum transfers `q` (n_q,) [1/length] for `radii` (n_r,) [length]: (n_r, n_q).

    Psi(q) ~ integral rho J0(q_perp rho) exp(i k dn h) 2 sin(a h) / a d rho over the disc rho < R,
    h = sqrt(R^2 - rho^2), a = k dn + q_z, dn = -delta + i beta, with q_perp = k sin theta, q_z = k (1 - cos
    theta) on the Ewald sphere (the envelope exp(i k dn (z + h)) of every slice, integrated over z in closed
    form). Gauss-Legendre in rho = R sin(phi). For dn -> 0 this is the Born sphere form factor at |q|.
    """
    return np.abs(_msft_sphere_amplitude(q, radii, wavelength, delta, beta, n_nodes)) ** 2


def _msft_sphere_amplitude(q, radii, wavelength, delta=0.0, beta=0.0, n_nodes=None):
    """Complex Psi of `msft_sphere_intensity` (same arguments): (n_r, n_q)."""
    q = np.asarray(q, float)
    radii = np.atleast_1d(np.asarray(radii, float))
    k = 2 * math.pi / float(wavelength)
    s_half = np.clip(q / (2 * k), 0.0, 1.0)
    cos_t = 1.0 - 2.0 * s_half**2
    qp = k * np.sqrt(np.maximum(1.0 - cos_t**2, 0.0))
    qz = k * (1.0 - cos_t)
    dn = complex(-float(delta), float(beta))
    if n_nodes is None:  # rounded up to a multiple of 16: few distinct node sets (cached)
        phase = radii.max() * (float(q.max()) + 2 * k * abs(dn))
        n_nodes = 16 * math.ceil((0.8 * phase + 24) / 16)
    phi, w = _quarter_nodes(int(n_nodes))
    out = np.empty((radii.size, q.size), complex)
    a = k * dn + qz  # (n_q,)
    for i, R in enumerate(radii):
        rho = R * np.sin(phi)  # (n,)
        h = R * np.cos(phi)
        z = a[:, None] * h[None, :]  # (n_q, n)
        sinc = np.where(np.abs(z) < 1e-6, 1.0 - z * z / 6.0, np.sin(z) / np.where(z == 0, 1.0, z))
        g = rho * np.exp(1j * k * dn * h) * 2 * h * w * R * np.cos(phi)  # per-node factors (n,)
        out[i] = np.einsum("qn,qn,n->q", j0(qp[:, None] * rho[None, :]), sinc, g)
    return out


@functools.lru_cache(maxsize=64)
def _quarter_nodes(n: int):
    """Gauss-Legendre nodes and weights on phi in [0, pi / 2] (read-only, cached)."""
    x, w = np.polynomial.legendre.leggauss(n)
    phi, w = 0.25 * math.pi * (x + 1.0), 0.25 * math.pi * w
    phi.flags.writeable = w.flags.writeable = False
    return phi, w


def _msft_sphere_profile(q, radii, wavelength, delta, beta, per_period: int = 12):
    """`msft_sphere_intensity` at `q` (n_q,) >= 0 for `radii` (n_r,), for radius scans: Psi is computed on a
    uniform |q| grid with `per_period` samples per 2 pi / max(radii) (Psi is band-limited by the sphere's
    extent) and carried to `q` by 4-point Lagrange interpolation (real and imaginary parts; relative error
    ~1e-3 of the peak at 12 per period), when that grid is coarser than `q`; else evaluated at `q` directly.
    Cost per radius ~ R^2 instead of R x n_q."""
    q = np.asarray(q, float)
    r_max = float(np.max(radii))
    h = 2 * math.pi / (per_period * r_max)
    n = int(math.ceil(float(q.max()) / h)) + 3
    if n >= q.size:
        return msft_sphere_intensity(q, radii, wavelength, delta, beta)
    grid = (np.arange(n + 1) - 1) * h  # one node below 0 (Psi is even in q: mirrored value)
    amp = _msft_sphere_amplitude(np.abs(grid), radii, wavelength, delta, beta)  # (n_r, n + 1)
    t = q / h + 1.0  # position in grid units
    i0 = np.clip(np.floor(t).astype(int) - 1, 0, n - 3)
    u = t - (i0 + 1)  # in [0, 1) between nodes i0 + 1 and i0 + 2
    wts = np.stack([-u * (u - 1) * (u - 2) / 6, (u + 1) * (u - 1) * (u - 2) / 2, -(u + 1) * u * (u - 2) / 2,
                    (u + 1) * u * (u - 1) / 6])  # fmt: skip
    psi = sum(wts[j][None, :] * amp[:, i0 + j] for j in range(4))
    return np.abs(psi) ** 2


def estimate_radius(
    data: Float[ArrayLike, "*image"],
    experiment: ds.Experiment,
    mask: Bool[ArrayLike, "*image"] | None = None,
    *,
    r_min: float | None = None,
    r_max: float | None = None,
    step: float = 0.002,
    delta: float = 0.0,
    beta: float = 0.0,
) -> float:
    """Radius of the sphere whose fringes best match the pattern (length unit of the experiment).

    A scan over radii on a `step` (relative) ladder between `r_min` (default 3 / q_max: first minimum inside
    the detector) and `r_max` (default pi / (2 dq): two pixels per fringe): the azimuthally summed counts in
    fine |q| rings are compared with the Born sphere profile |3 (sin u - u cos u) / u^3|^2 V^2 with a Poisson
    deviance, the scale profiled. For non-spherical particles it returns a volume-equivalent-like radius
    (the ring-averaged fringe spacing). The Guinier region is usually hidden by the beamstop, so the fringes,
    not the central slope, decide.

    With `delta` or `beta` nonzero the profile is the MSFT sphere's (`msft_sphere_intensity`: refraction and
    absorption shift and damp the fringes, and the Born profile then locks onto a wrong radius, e.g. 4.1 for
    7 wavelengths at delta = 0.05): a scan on a 1 % ladder, then `step` around the best few minima.
    """
    d, m = check_data(data, mask, tuple(experiment.shape))
    m = np.asarray(m) & np.asarray(experiment.valid)
    q = _norm_q(experiment)
    qmax = float(q[m].max())
    # pixel spacing in q: median nearest-neighbour step along rows
    qv = np.asarray(experiment.q, float)
    if qv.ndim == 3:
        dq = float(np.median(np.linalg.norm(np.diff(qv[..., :2], axis=1), axis=-1)))
    else:
        dq = qmax / math.sqrt(q.size)
    r_min = 3.0 / qmax if r_min is None else float(r_min)
    r_max = math.pi / (2.0 * dq) if r_max is None else float(r_max)
    if not (0 < r_min < r_max):
        raise ValueError(f"need 0 < r_min < r_max, got r_min={r_min}, r_max={r_max}")
    n_bins = int(min(max(50, 4 * qmax / dq), 2000))
    qc, c, w = radial_profile(d, experiment, m, n_bins)
    use = w > 0
    qc, c, w = qc[use], c[use], w[use]
    if delta != 0.0 or beta != 0.0:
        return _scan_msft(qc, c, w, r_min, r_max, step, float(np.asarray(experiment.wavelength)), delta, beta)
    radii = r_min * (1 + step) ** np.arange(int(math.log(r_max / r_min) / math.log1p(step)) + 1)
    best, best_r = np.inf, radii[0]
    for chunk in np.array_split(radii, max(1, len(radii) // 256)):
        mod = w[None, :] * chunk[:, None] ** 6 * _sphere_ff2(qc[None, :] * chunk[:, None])
        s = c.sum() / np.maximum(mod.sum(axis=1), 1e-300)
        mu = np.maximum(s[:, None] * mod, 1e-300)
        dev = np.sum(mu - c + np.where(c > 0, c * np.log(np.maximum(c, 1e-300) / mu), 0.0), axis=1)
        i = int(np.argmin(dev))
        if dev[i] < best:
            best, best_r = float(dev[i]), float(chunk[i])
    return best_r


def _profile_deviance(model, c):
    """Poisson deviance of ring counts `c` (n_q,) against model rows (n_r, n_q), scale profiled."""
    s = c.sum() / np.maximum(model.sum(axis=1), 1e-300)
    mu = np.maximum(s[:, None] * model, 1e-300)
    return np.sum(mu - c + np.where(c > 0, c * np.log(np.maximum(c, 1e-300) / mu), 0.0), axis=1)


def _scan_msft(qc, c, w, r_min, r_max, step, wavelength, delta, beta, coarse=0.01, n_best=4):
    def deviance(radii):  # profile deviance of each radius, chunks of 8 (each at its own quadrature size)
        chunks = np.array_split(radii, max(1, len(radii) // 8))
        model = lambda ch: _msft_sphere_profile(qc, ch, wavelength, delta, beta)  # noqa: E731
        with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:  # NumPy releases the GIL
            return np.concatenate([_profile_deviance(w[None, :] * m, c) for m in pool.map(model, chunks)])

    radii = r_min * (1 + coarse) ** np.arange(int(math.log(r_max / r_min) / math.log1p(coarse)) + 1)
    dev = deviance(radii)
    # local minima of the coarse scan, best first; refine each on the fine ladder
    loc = [
        i for i in range(len(dev)) if dev[i] <= dev[max(i - 1, 0)] and dev[i] <= dev[min(i + 1, len(dev) - 1)]
    ]
    loc = sorted(loc, key=lambda i: dev[i])[:n_best]
    n_fine = int(1.5 * coarse / step)
    fine = np.concatenate([radii[i] * (1 + step) ** np.arange(-n_fine, n_fine + 1) for i in loc])
    if fine.size == 0:
        return float(radii[int(np.argmin(dev))])
    return float(fine[int(np.argmin(deviance(fine)))])


def estimate_center(
    data: Float[ArrayLike, "ny nx"],
    mask: Bool[ArrayLike, "ny nx"] | None = None,
    *,
    guess: tuple[float, float] | None = None,
    search: float = 8.0,
) -> tuple[float, float]:
    """Beam centre (cy, cx) in fractional pixels from the pattern's centrosymmetry I(c + r) ~ I(c - r).

    The masked Pearson correlation between log(1 + counts) and its point reflection is computed for every
    reflection centre by FFTs; the best integer half-shift within `search` pixels of `guess` (default the image
    centre) is refined by a parabola through its neighbours (sub-pixel). Good to a fraction of a pixel for
    patterns dominated by a round envelope (droplets, compact particles); refine with `free=("beam_center",)`.
    """
    d, m = check_data(data, mask)
    a = np.log1p(np.maximum(np.asarray(d, float), 0.0))
    if a.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {a.shape}")
    M = np.asarray(m, float)
    A = a * M
    ny, nx = a.shape
    shp = (2 * ny, 2 * nx)
    F = lambda x: np.fft.rfft2(x, shp)
    conv = lambda X, Y: np.fft.irfft2(X * Y, shp)
    fA, fM, fA2 = F(A), F(M), F(A * a)
    n = conv(fM, fM)
    sab = conv(fA, fA)
    sa = conv(fA, fM)  # = sum over overlap of A (and by symmetry of its reflection)
    saa = conv(fA2, fM)
    nn = np.maximum(n, 1.0)
    cov = sab - sa * sa / nn
    var = saa - sa**2 / nn
    corr = np.where((n > 0.25 * M.sum()) & (var > 0), cov / np.maximum(var, 1e-300), -np.inf)
    gy, gx = ((ny - 1) / 2.0, (nx - 1) / 2.0) if guess is None else (float(guess[0]), float(guess[1]))
    # convolution index s = 2 c
    sy = np.arange(shp[0])[:, None]
    sx = np.arange(shp[1])[None, :]
    win = (np.abs(sy - 2 * gy) <= 2 * search) & (np.abs(sx - 2 * gx) <= 2 * search)
    corr = np.where(win, corr, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)

    def refine(c_m, c_0, c_p):
        den = c_m - 2 * c_0 + c_p
        if not np.isfinite(den) or den >= 0:
            return 0.0
        return float(np.clip(0.5 * (c_m - c_p) / den, -0.5, 0.5))

    oy = refine(corr[iy - 1, ix], corr[iy, ix], corr[(iy + 1) % shp[0], ix])
    ox = refine(corr[iy, ix - 1], corr[iy, ix], corr[iy, (ix + 1) % shp[1]])
    return (iy + oy) / 2.0, (ix + ox) / 2.0


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """`n` rotation matrices uniform on SO(3) (Shoemake's quaternion method), shape (n, 3, 3)."""
    rng = np.random.default_rng(seed)
    u1, u2, u3 = rng.random((3, int(n)))
    q = np.stack(
        [
            np.sqrt(u1) * np.cos(2 * np.pi * u3),
            np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
            np.sqrt(u1) * np.sin(2 * np.pi * u3),
        ],
        axis=-1,
    )
    return np.stack([np.asarray(ds.rotation_from_quaternion(qi)) for qi in q])


def ellipsoid_starts(
    radius: float, n_starts: int = 12, *, delta=0.0, beta=0.0, anisotropy: float = 0.1, seed: int = 0
) -> list[ds.Ellipsoid]:
    """Starting ellipsoids around a sphere of `radius`: axes radius * (1 + a, 1, 1 - a) (volume about kept) in
    `n_starts` random orientations (a sphere start has no orientation gradient, hence the anisotropy)."""
    Rs = random_rotations(n_starts, seed)
    ax = radius * np.array([1 + anisotropy, 1.0, 1 - anisotropy]) / (1 - anisotropy**2) ** (1 / 3)
    return [ds.Ellipsoid(ax, delta=delta, beta=beta, rotation=R) for R in Rs]


def sphere_starts(radius: float, n_starts: int, spread: float, *, delta=0.0, beta=0.0) -> list[ds.Sphere]:
    """`n_starts` spheres with radii evenly over (1 +- `spread`) x `radius` (one: `radius` itself)."""
    if not 0 <= float(spread) < 1:
        raise ValueError(f"spread must be in [0, 1), got {spread}")
    factors = [1.0] if n_starts <= 1 else list(np.linspace(1 - spread, 1 + spread, int(n_starts)))
    return [ds.Sphere(float(radius) * f, delta=delta, beta=beta) for f in factors]


def fit_sphere_auto(
    data,
    experiment: ds.Experiment,
    mask=None,
    *,
    delta: float = 0.0,
    beta: float = 0.0,
    n_starts: int = 3,
    coarse: bool | int = True,
    stage_rtol: float | None = None,
    refine: bool = True,
    radius: float | None = None,
    spread: float = 0.03,
    **fit_kwargs,
):
    """Sphere fit without an initial guess: `estimate_radius` (or `radius`, length units, where the caller
    has that estimate already), then a multi-start fit from radii on both sides of the estimate (fringe
    aliasing gives local minima near +- one fringe): `n_starts` radii evenly over (1 +- `spread`) x the
    estimate (a less certain estimate, e.g. a network's, wants a wider spread). Returns a `FitResult`.

    `coarse` (default True): run the multi-start on the low-q crop of the pattern (`fitting.low_q_crop`,
    factor `coarse_factor`: up to 4 for True, up to `coarse` for an int, 1 / False = full resolution), then
    refine the best start at full resolution (`refine=False`: return the crop's fit, for ladders that only
    need the radius; its `data`/`mask`/`experiment` are the crop's). `stage_rtol`: `fit`'s rtol of the
    crop stage (default `STAGE_RTOL`). `result.stages` = [crop fit, refinement] when a crop was used."""
    from ._fit import fit
    from ._multires import coarse_level, refine_fit, stage_kwargs

    r0 = estimate_radius(data, experiment, mask, delta=delta, beta=beta) if radius is None else float(radius)
    starts = sphere_starts(r0, n_starts, spread, delta=delta, beta=beta)
    lev = coarse_level(data, experiment, mask, coarse, r0)
    if lev is None:
        return fit(data, experiment, starts, mask, free=("radius",), **fit_kwargs)
    dc, ec, mc, _ = lev
    search = fit(dc, ec, starts, mc, free=("radius",), **stage_kwargs(fit_kwargs, stage_rtol, experiment, ec))
    if not refine:
        search.stages = [search]
        return search
    res = refine_fit(data, experiment, search.model, mask, free=("radius",), **fit_kwargs)
    res.alternatives = search.alternatives
    res.start_losses = search.start_losses
    res.n_starts = search.n_starts
    res.stages = [search, res]
    return res


def sphere_ellipsoid_stages(
    data,
    experiment: ds.Experiment,
    mask,
    *,
    delta: float,
    beta: float,
    coarse: bool | int,
    stage_rtol: float | None,
    fit_kwargs: dict,
    sphere_final: bool = False,
    ellipsoid: bool = True,
    ellipsoid_final: bool = False,
    n_starts: int = 8,
    seed: int = 0,
    n_refine: int = 4,
    report=None,
):
    """The no-guess start of the harmonic ladder and of `fit_auto`: the sphere (`estimate_radius` + fit), then
    (`ellipsoid`) the triaxial ellipsoid multi-start from the sphere's radius. Returns (sphere, ellipsoid or
    None, the sphere's radius in wavelength units).

    A stage that is a final answer (`sphere_final`, `ellipsoid_final`) runs with `fit_kwargs` as given; one that
    only starts a later stage is an intermediate stage (`start_stage_kwargs`: no uncertainties, the stage rtol,
    and where the particle has no crop the ladder's coarser pitch, with the ellipsoid's search at that pitch
    too). `report(name, result)` (optional) is called after each stage."""
    from ._multires import start_stage_kwargs

    ckw = dict(coarse=coarse, stage_rtol=stage_rtol)

    def stage_kw(final, radius, **more):
        if final:
            return fit_kwargs
        return start_stage_kwargs(data, experiment, mask, coarse, radius, fit_kwargs, stage_rtol, **more)

    r0 = estimate_radius(data, experiment, mask, delta=delta, beta=beta)
    sph = fit_sphere_auto(
        data, experiment, mask, delta=delta, beta=beta, refine=sphere_final, radius=r0, **ckw,
        **stage_kw(sphere_final, r0),
    )  # fmt: skip
    radius = float(np.asarray(sph.model.radius))
    if report is not None:
        report("Sphere", sph)
    if not ellipsoid:
        return sph, None, radius
    ell = fit_ellipsoid_auto(
        data, experiment, mask, delta=delta, beta=beta, radius=radius, n_starts=n_starts, seed=seed,
        refine=ellipsoid_final, n_refine=n_refine, **ckw,
        **stage_kw(ellipsoid_final, radius, search_coarsening=1.0),
    )  # fmt: skip
    if report is not None:
        report("Ellipsoid", ell)
    return sph, ell, radius


def _top_optima(result, n: int, tol: float):
    """The starts for the next stage: `result`'s best model and its best `n` - 1 alternatives (a list, or the
    model alone when there is one); `result.alternatives` is then cut to those within `tol` NLL units."""
    picks = [result.model] + [a.model for a in result.alternatives][: n - 1]
    result.alternatives = [a for a in result.alternatives if a.delta_loss <= tol]
    return picks if len(picks) > 1 else picks[0]


def fit_ellipsoid_auto(
    data,
    experiment: ds.Experiment,
    mask=None,
    *,
    delta: float = 0.0,
    beta: float = 0.0,
    radius: float | None = None,
    n_starts: int = 8,
    seed: int = 0,
    free: Sequence[str] = ("semi_axes", "orientation"),
    search_steps: int = 30,
    search_coarsening: float = 1.5,
    coarse: bool | int = True,
    stage_rtol: float | None = None,
    refine: bool = True,
    n_refine: int = 4,
    starts: Sequence[ds.Ellipsoid] | None = None,
    **fit_kwargs,
):
    """Triaxial ellipsoid without an initial guess.

    1. The sphere radius (`estimate_radius` unless given).
    2. Search: a vmapped multi-start over `n_starts` random orientations of a slightly anisotropic ellipsoid
       (or the caller's `starts`, e.g. a network's; `radius` then defaults to the first's volume radius),
       `search_steps` optimiser steps each on a voxel grid `search_coarsening` times coarser than the default
       (finding the basin needs no sub-percent accuracy).
    3. Refinement of the `n_refine` best distinct optima of the search (one vmapped multi-start) at the default
       pitch to convergence (with uncertainties); the best wins.

    `coarse` (default True; see `fit_sphere_auto`): steps 2 and 3 run on the low-q crop of the pattern
    (`fitting.low_q_crop`: a proportionally coarser pitch, f^2 fewer pixels, f^3 fewer voxels), the crop's
    refinement with `fit`'s rtol loosened to `stage_rtol` (default `STAGE_RTOL`), then 4. a refinement at full
    resolution from there (`refine=False`: skipped, the crop's result returned, e.g. for the harmonic ladder
    which only needs a start). Falls back to full resolution where the detector has no exact crop or the
    particle is too small for one (`coarse_factor`).

    **Why several refinements.** The short coarse search ranks basins poorly: on the evaluation set
    (`fitting.evaluation_set`, 128^2, an ellipsoid with two semi-axes 2 % apart, 6.6e6 photons) its best start
    ended 71 NLL units above the truth with the axes 18 deg off, while its 3rd, 5th and 6th best (and 4 of its 8
    starts) reached the truth's optimum (+1.5, 1.8 deg) when refined at full resolution; the crop's refined
    losses ranked them no better. So the `n_refine` best go on together, to full resolution with `coarse`
    (`n_refine=1`: the search's best only, the former behaviour; ~`n_refine` x the refinement's run time on
    a CPU, about the same on a GPU).

    The result's `alternatives` lists other optima that ended within `alternatives_tol` of the best (twins,
    permuted axes); `stages` holds (search, refinement(s)). Returns a `FitResult`.
    """
    from ._fit import fit
    from ._multires import coarse_level, refine_fit, stage_kwargs

    if starts is not None:  # the caller's starts (e.g. a network's, `fitting.fit_from_network`)
        starts = list(starts)
        if not starts or not all(isinstance(m, ds.Ellipsoid) for m in starts):
            raise TypeError("starts must be a non-empty sequence of diffscat.Ellipsoid")
        if radius is None:
            radius = float(np.prod(np.asarray(starts[0].semi_axes, float))) ** (1 / 3)
    else:
        if radius is None:
            radius = estimate_radius(data, experiment, mask, delta=delta, beta=beta)
        starts = ellipsoid_starts(radius, n_starts, delta=delta, beta=beta, seed=seed)
    lev = coarse_level(data, experiment, mask, coarse, radius)
    kw = dict(fit_kwargs)
    if lev is None:
        d_s, e_s, m_s = data, experiment, mask
        ref_kw = kw
    else:
        d_s, e_s, m_s, _ = lev
        ref_kw = stage_kwargs(kw, stage_rtol, experiment, e_s)
    pitch = ref_kw.pop("pitch", None)
    if pitch is None and e_s.sampling_hint is not None:
        pitch = ds.default_pitch(*e_s.sampling_hint)
    search_pitch = None if pitch is None else pitch * float(search_coarsening)
    search_kw = {k: v for k, v in ref_kw.items() if k not in ("max_steps", "uncertainties", "grid", "rtol")}
    n_refine = int(n_refine)
    if n_refine < 1:
        raise ValueError(f"n_refine must be >= 1, got {n_refine}")
    tol = float(kw.get("alternatives_tol", 5.0))
    search_kw.pop("alternatives_tol", None)
    search = fit(
        d_s,
        e_s,
        starts,
        m_s,
        free=free,
        pitch=search_pitch,
        max_steps=int(search_steps),
        uncertainties=False,
        rtol=ref_kw.get("rtol", 1e-7) if lev is None else ref_kw["rtol"],
        alternatives_tol=math.inf if n_refine > 1 else tol,
        **search_kw,
    )
    picks = _top_optima(search, n_refine, tol)
    if lev is not None and refine:
        # the crop ranks the basins no better than the search: every pick goes on to full resolution
        ref_kw = dict(ref_kw, alternatives_tol=math.inf)
    res = fit(d_s, e_s, picks, m_s, free=free, pitch=pitch, **ref_kw)
    stages = [search, res]
    if lev is not None and refine:
        res = refine_fit(data, experiment, _top_optima(res, n_refine, tol), mask, free=free, **kw)
        stages.append(res)
    # the refinement's own alternatives (distinct optima within tol) where it had several starts
    res.alternatives = res.alternatives or search.alternatives
    res.start_losses = search.start_losses
    res.n_starts = search.n_starts
    res.stages = stages
    return res


def _ellipsoid_radius_fn(semi_axes):
    a, b, c = (float(x) for x in np.asarray(semi_axes))

    def r(theta, phi):
        st = np.sin(theta)
        return 1.0 / np.sqrt(
            (st * np.cos(phi) / a) ** 2 + (st * np.sin(phi) / b) ** 2 + (np.cos(theta) / c) ** 2
        )

    return r


def harmonics_from_ellipsoid(ellipsoid: ds.Ellipsoid, lmax: int) -> ds.SphericalHarmonics:
    """The spherical-harmonic shape (up to `lmax`) closest to an ellipsoid's radius function, same orientation,
    centre and material (least-squares projection on the sphere)."""
    return ds.SphericalHarmonics.from_radius_function(
        _ellipsoid_radius_fn(ellipsoid.semi_axes),
        int(lmax),
        ellipsoid.delta,
        ellipsoid.beta,
        rotation=ellipsoid.rotation,
        centre=ellipsoid.centre,
    )


def ellipsoid_from_shape(shape: ds.AbstractSolid, n: int = 40) -> ds.Ellipsoid:
    """The ellipsoid with the volume and the second moments of a solid `shape` (e.g. a fitted harmonic body):
    the start of a local ellipsoid fit nested inside a richer fit (`fit_auto`'s nested completion).

    The solid's inside test on an `n`^3 grid of points over its bounding cube gives the covariance C of the
    body about its centroid; a solid ellipsoid of semi-axes a_i has C's eigenvalues a_i^2 / 5 along its axes,
    so the axes are sqrt(5 eig C), rescaled to the shape's own `volume()`, directed along C's eigenvectors
    (a proper rotation). Centre, delta and beta are the shape's (the fits keep the centre fixed).
    Lengths in the shape's unit. ValueError for `n` < 8 or a shape with no inside points on the grid."""
    if int(n) < 8:
        raise ValueError(f"n must be >= 8 grid points per side, got {n}")
    n = int(n)
    r = float(np.asarray(shape.bounding_radius()))
    ax = ((np.arange(n) + 0.5) / n * 2.0 - 1.0) * r
    rel = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    centre = np.asarray(shape.centre, np.float64)
    w = np.asarray(shape.occupancy(rel + centre), np.float64)
    total = w.sum()
    if not total > 0:
        raise ValueError("shape has no inside points on the sampling grid (empty or degenerate body)")
    mean = w @ rel / total
    d = rel - mean
    cov = (d * w[:, None]).T @ d / total
    evals, evecs = np.linalg.eigh(cov)
    axes = np.sqrt(5.0 * np.clip(evals, 1e-12 * r**2, None))
    volume = float(np.asarray(shape.volume()))
    axes = axes * (3.0 * volume / (4.0 * math.pi * float(np.prod(axes)))) ** (1.0 / 3.0)
    rot = evecs.copy()
    if np.linalg.det(rot) < 0:
        rot[:, 0] = -rot[:, 0]
    return ds.Ellipsoid(axes, shape.delta, shape.beta, rotation=rot, centre=shape.centre)


def pad_harmonics(shape: ds.SphericalHarmonics, lmax: int) -> ds.SphericalHarmonics:
    """The same shape with coefficients zero-padded (or truncated) to degree `lmax`."""
    c = np.asarray(shape.coefficients)
    n = (int(lmax) + 1) ** 2
    new = np.zeros(n, c.dtype)
    new[: min(n, c.size)] = c[: min(n, c.size)]
    return ds.SphericalHarmonics(new, shape.delta, shape.beta, rotation=shape.rotation, centre=shape.centre)


def fit_spherical_harmonics(
    data,
    experiment: ds.Experiment,
    lmax: int,
    mask=None,
    *,
    delta: float = 0.0,
    beta: float = 0.0,
    n_starts: int = 8,
    regularizer=None,
    seed: int = 0,
    verbose: bool = False,
    twins: bool = False,
    coarse: bool | int = True,
    stage_rtol: float | None = None,
    sh_route: str | None = SH_ROUTE,
    escape_z: float | None = ESCAPE_Z,
    **fit_kwargs,
):
    """Spherical-harmonic shape up to degree `lmax` with no initial guess, by the ladder
    sphere (`estimate_radius` + fit) -> triaxial ellipsoid (vmapped multi-start over orientations) ->
    harmonics (`harmonics_ladder` with `route=sh_route`, default `SH_ROUTE` = "compact_all": the (lmax + 1)^2
    coefficients freed at once from the ellipsoid made compact along the beam, `beam_compact`; "ladder":
    degrees 2, 3, ..., `lmax` freed stage by stage, one compiled step), each stage starting from the last;
    `escape_z`: the escapes from a local minimum (`harmonics_ladder`). `twins`: see `harmonics_ladder`.

    In the harmonic stages the coefficients are free and the orientation stays at the ellipsoid's (the
    l >= 1 coefficients can express small rotations themselves, so freeing both would be degenerate).
    `regularizer` (default `SHDegreePrior(0.15)`, a weak prior on each degree's power) is added at every
    harmonic stage. Returns the last stage's `FitResult`; `result.stages` holds every stage's result.
    `delta`, `beta`: the optical constants (fixed). Other keywords go to `fitting.fit`.

    `coarse` (default True): the sphere, the ellipsoid and every harmonic degree run on the low-q crop of
    the pattern (`fitting.low_q_crop`, factor `coarse_factor`), then one stage with all degrees free at full
    resolution (see `harmonics_ladder`); 1 / False: every stage at full resolution. Intermediate stages stop
    at `fit`'s rtol loosened to `stage_rtol` (default `STAGE_RTOL`), the last at the caller's.
    """
    from ._fit import fit

    if int(lmax) < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    stages = []
    ckw = dict(coarse=coarse, stage_rtol=stage_rtol)
    sph, ell, _ = sphere_ellipsoid_stages(
        data, experiment, mask, delta=delta, beta=beta, coarse=coarse, stage_rtol=stage_rtol,
        fit_kwargs=fit_kwargs, ellipsoid=int(lmax) > 0, n_starts=n_starts, seed=seed,
    )  # fmt: skip
    stages.append(sph)
    if verbose:
        print(f"sphere: radius {float(sph.model.radius):.4g}")
    if int(lmax) == 0:
        c0 = float(sph.model.radius) * math.sqrt(4 * math.pi)
        res = fit(
            data,
            experiment,
            ds.SphericalHarmonics([c0], delta, beta),
            mask,
            free=("coefficients",),
            **fit_kwargs,
        )
        res.stages = stages + [res]
        return res
    stages.append(ell)
    if verbose:
        print(f"ellipsoid: semi-axes {np.asarray(ell.model.semi_axes)}")
    res, more = harmonics_ladder(
        data,
        experiment,
        ell.model,
        int(lmax),
        mask,
        regularizer=regularizer,
        verbose=verbose,
        twins=twins,
        route=sh_route,
        escape_z=escape_z,
        **ckw,
        **fit_kwargs,
    )
    res.stages = stages + more
    return res


def _corrected_stages(data, experiment, mask, shape, grid, pitch, n, stages, rtol, fit_kw):
    """`harmonics_ladder`'s `n` corrected coarse stages from `shape` on the coarse `grid` (see there), at the
    intermediate stages' `rtol`; each appended to `stages`. Returns the last one's model. `pitch`: the
    full-pitch refinement's (None: default)."""
    from ._fit import GRID_MARGIN, _fit_grid, fit
    from ._multires import corrected_loss, correction_factor, outgrew, refine_grid

    kw = dict(fit_kw, rtol=rtol, uncertainties=False)
    kw["max_steps"] = min(int(kw.get("max_steps", 200)), STAGE_MAX_STEPS)
    base = kw.pop("loss", "poisson")
    method = kw.get("method", "msft")
    for _ in range(n):
        if outgrew(shape, grid):
            grid = _fit_grid([shape], experiment, grid.pitch[0], GRID_MARGIN)
        fine = refine_grid([shape], experiment, pitch)
        f = correction_factor(shape, experiment, grid, fine, method)  # the model's dtype
        res = fit(data, experiment, shape, mask, grid=grid, loss=corrected_loss(base, f), **kw)
        stages.append(res)
        shape = res.model
    return shape


def harmonics_twins(shape: ds.SphericalHarmonics) -> list[ds.SphericalHarmonics]:
    """The shape and its three twins that give (nearly) the same pattern: [shape, point inversion r -> -r
    (c_lm -> (-1)^l c_lm), mirror z -> -z along the beam (body reflection c_lm -> (-1)^(l+m) c_lm, rotation
    M R P with M = diag(1, 1, -1) lab and P body), both]. Born patterns of the first two are identical
    (Friedel); the mirror is the small-angle twin. MSFT (refraction, Ewald curvature) splits them."""
    from ._network import sh_twin_signs

    c = np.asarray(shape.coefficients)
    # identity, inversion, mirror, both on c_lm (l >= 1; c_00 keeps its sign)
    signs = sh_twin_signs(math.isqrt(c.size) - 1).astype(c.dtype)
    M = np.diag([1.0, 1.0, -1.0])
    R = np.asarray(shape.rotation)
    R_m = (M @ R @ M).astype(R.dtype)
    mk = lambda s, RR: ds.SphericalHarmonics(
        np.concatenate([c[:1], s * c[1:]]), shape.delta, shape.beta, rotation=RR, centre=shape.centre
    )
    return [shape, mk(signs[1], R), mk(signs[2], R_m), mk(signs[3], R_m)]


def harmonics_ladder(
    data,
    experiment: ds.Experiment,
    ellipsoid: ds.Ellipsoid,
    lmax: int,
    mask=None,
    *,
    regularizer=None,
    verbose: bool = False,
    degrees: Sequence[int] | None = None,
    twins: bool = False,
    coarse: bool | int = True,
    stage_rtol: float | None = None,
    stage_coarsening: float = STAGE_COARSENING,
    coarse_last: bool = False,
    n_correct: int = N_CORRECT,
    escape_z: float | None = ESCAPE_Z,
    route: str | None = None,
    escapes: str = "misfit",
    **fit_kwargs,
):
    """The harmonic stages of `fit_spherical_harmonics` from a fitted `ellipsoid`.

    The start is the ellipsoid's projection on Y_lm up to the FINAL degree `lmax` (a better start than the
    l <= 2 projection: the ellipsoid's l = 4 content is kept), then fits with the degrees <= l free for l in
    `degrees` (default 2, 3, ..., `lmax`), higher ones frozen at their current values; orientation kept,
    `regularizer` default `SHDegreePrior(0.15)`. Every stage has the same (lmax + 1)^2 coefficients, the
    same voxel grid (`grid=`, default `ladder_grid` around the start) and the same number of starts, and
    the frozen degrees are a data mask (`fit(active=...)`), so all stages share one compiled step (and
    patterns of similar size share it too). Uncertainties (if requested) only at the last stage.

    `coarse` (default True): every stage in `degrees` runs on the low-q crop of the pattern
    (`fitting.low_q_crop`, factor `coarse_factor` for the ellipsoid's volume-equivalent radius; its own
    ladder grid at the crop's coarser pitch, one more compiled step), then one last stage with the degrees
    <= the last of `degrees` free at full resolution from there (`grid=` applies to it). 1 / False: every
    stage at full resolution, as above. Intermediate stages stop at `fit`'s rtol loosened to `stage_rtol`
    (default `STAGE_RTOL`); the last stage uses the caller's rtol. Where the pattern has no useful crop
    (`coarse_factor` 1: a small q_max R) but `coarse` is on and there are several stages, the intermediate
    stages run on the full pattern with a voxel pitch `stage_coarsening` times the fit's (default
    `STAGE_COARSENING` = 1.5: 3.4x fewer voxels), and the last degree's stage runs at the fit's pitch as a
    refinement from there (`refine_fit`); `stage_coarsening=1` keeps every stage at the fit's pitch.
    `coarse_last=True` (experimental, default off): the last degree too on the coarse grid, then
    `n_correct` (default `N_CORRECT`; 0: none; not with `twins`) corrected coarse stages, then a full-pitch
    refinement with the same free degrees. The corrected stages: the
    coarse model times the per-pixel ratio of the full-pitch to the coarse-pitch pattern of the current shape
    (`fitting._multires.correction_factor`, `CorrectedLoss`), refitted on the coarse grid. The coarse
    optimum can be thousands of NLL units from the full-pitch one (the coarse model's error at high photon
    counts), which the full-pitch stage then walks at ~4x the cost per step; the corrected stages walk most of
    it on the coarse grid. Measured on 9 patterns (docs/fitting.md, session 17): less time on 7, but on one
    pattern the coarse l = lmax optimum was another basin (+392 NLL), so it is not the default.

    `twins`: every stage also runs the three twins of its start (`harmonics_twins`: point inversion, mirror
    along the beam, both) as vmapped starts; twins ending within `alternatives_tol` of the best are the
    result's `alternatives`. Four starts cost about four times the run time (one compilation).

    `route` (default None: the stages as the arguments above say, named "ladder"): one of the named routes
    `ESCAPE_ROUTES`, which then set the start and the stages (overriding `degrees`, `coarse_last` and, for
    "compact_all", `coarse`): "compact_all": every degree <= `lmax` freed at once in one full-pitch fit from
    the beam-compact ellipsoid (`beam_compact`; `ellipsoid` itself where it is not stretched along the beam),
    the default of `fit_spherical_harmonics` and `fit_auto` since session 19; "ladder": degrees 2, ..., `lmax`
    stage by stage from `ellipsoid`; "all_degrees": every degree at once from `ellipsoid` (on the crop first
    where `coarse` gives one); "compact": the ladder from the beam-compact ellipsoid; "coarse_last": the
    ladder with `coarse_last=True`.

    `escape_z` (default `ESCAPE_Z` = 5; None: off; not with `twins`): escapes from a local minimum. When the
    result is a misfit (z of `noise_consistency` > `escape_z`: its loss lies that many noise sd above Poisson
    realisations of itself), the other routes of `ESCAPE_ROUTES` run in that order, except those that would
    repeat another: "compact" where the ellipsoid is not stretched along the beam (= "ladder"), "all_degrees"
    there too when `coarse` gives no crop (= "compact_all"), both for `lmax` <= 2 (one degree stage), and
    "coarse_last" where the ladder's intermediate stages would not run at a coarser pitch. The lowest loss
    is kept. The escapes stop at the first route whose result is consistent with the noise, or that ends
    within one noise sd of the best so far (two routes at one optimum: the misfit is model error, not a
    local minimum). `result.escapes` lists (route, loss, z) of each route run, the first route's first.
    A pattern whose ladder result is consistent with the noise costs nothing more (8 Poisson draws).
    `escapes="always"` (`ESCAPE_WHEN`) runs every escape route whatever the results' z (no early stop): for
    local minima whose loss the noise check cannot tell from the truth's (3 of 500 patterns of the harmonic
    dataset, docs/batch.md), at several times the time of a pattern.

    Returns (the best `FitResult`, list of every stage's result, escape routes' stages included)."""
    from ._fit import GRID_MARGIN, _fit_grid, fit
    from ._multires import coarse_level, outgrew, refine_fit, stage_kwargs, stage_pitch
    from ._regularizers import sh_degrees, sh_regularizer

    L = int(lmax)
    if L < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    if escape_z is not None and not float(escape_z) > 0:
        raise ValueError(f"escape_z must be > 0 or None, got {escape_z}")
    _check_escapes(escapes)
    if route is not None and route not in ESCAPE_ROUTES:
        raise ValueError(f"route must be None or one of {ESCAPE_ROUTES}, got {route!r}")
    given = dict(ellipsoid=ellipsoid, coarse=coarse)  # the caller's, for the escapes' routes
    compact = beam_compact(ellipsoid)
    if route is not None:
        from_compact, at_once, coarse_last = _ROUTE_PLANS[route]
        degrees = [L] if at_once else None
        if from_compact:
            ellipsoid = compact if compact is not None else ellipsoid
        if route == "compact_all":
            coarse = False
    degs = list(range(min(2, L), L + 1)) if degrees is None else [int(x) for x in degrees]
    if not degs or any(not 0 <= x <= L for x in degs):
        raise ValueError(f"degrees must be a non-empty list of degrees in [0, lmax={L}], got {degrees}")
    reg = sh_regularizer(regularizer)
    kw = dict(fit_kwargs)
    want_sigmas = bool(kw.pop("uncertainties", True))
    shape = harmonics_from_ellipsoid(ellipsoid, L)
    r_eq = float(np.prod(np.asarray(ellipsoid.semi_axes, float))) ** (1 / 3)
    lev = coarse_level(data, experiment, mask, coarse, r_eq)
    # (data, experiment, mask, fit keywords, is-last) of every stage
    plan = []
    coarser = None
    coarse_all = False  # every degree on the coarse grid (`coarse_last`, no crop)
    if lev is not None:
        dc, ec, mc, _ = lev
        ckw = stage_kwargs(kw, stage_rtol, experiment, ec)
        plan += [(l, dc, ec, mc, ckw, False) for l in degs]
        plan.append((degs[-1], data, experiment, mask, kw, True))
    else:
        skw = stage_kwargs(kw, stage_rtol)
        coarser = stage_pitch(experiment, kw, coarse, stage_coarsening) if len(degs) > 1 else None
        if coarser is not None:
            skw["pitch"] = coarser
            skw.pop("grid", None)
        # `coarse_last`: the last degree too on the coarse grid, then corrected coarse stages, then the refinement
        # (faster, but it lost the basin on 1 of 9 patterns; docs/fitting.md, session 17)
        coarse_all = coarser is not None and bool(coarse_last)
        plan += [(l, data, experiment, mask, skw, False) for l in (degs if coarse_all else degs[:-1])]
        plan.append((degs[-1], data, experiment, mask, kw, True))
    refine_last = lev is not None or coarser is not None
    n_corr = int(n_correct)
    if n_corr < 0:
        raise ValueError(f"n_correct must be >= 0, got {n_correct}")
    deg = sh_degrees((L + 1) ** 2)
    grids: dict[tuple, ds.VoxelGrid] = {}  # by (experiment, pitch)
    stages, res = [], None
    for l, d_i, e_i, m_i, kw_i, last in plan:
        kw_i = dict(kw_i)
        kw_i.pop("uncertainties", None)
        pitch = kw_i.pop("pitch", None)
        margin = float(kw_i.pop("grid_margin", GRID_MARGIN))
        user_grid = kw_i.pop("grid", None)
        starts = harmonics_twins(shape) if twins else shape
        fit_kw = dict(free=("coefficients",), regularizer=reg, active={"coefficients": deg <= l}, **kw_i)
        fit_kw["uncertainties"] = want_sigmas and last
        if last and coarse_all and n_corr > 0 and not twins and (id(e_i), coarser) in grids:
            grid = grids[(id(e_i), coarser)]
            shape = _corrected_stages(d_i, e_i, m_i, shape, grid, pitch, n_corr, stages, skw["rtol"], fit_kw)
            starts = shape
        if last and refine_last and user_grid is None and "grid_margin" not in kw:
            # the full-resolution stage after the crop's (or the coarse grid's): a refinement from near the answer
            res = refine_fit(d_i, e_i, starts, m_i, pitch=pitch, **fit_kw)
        else:
            key = (id(e_i), pitch)
            grid = grids.get(key, user_grid)
            if grid is None or outgrew(shape, grid):  # none yet, or the shape outgrew it: a larger one
                grid = _fit_grid([shape], e_i, pitch, margin)
            grids[key] = grid
            res = fit(d_i, e_i, starts, m_i, grid=grid, **fit_kw)
        stages.append(res)
        shape = res.model
        if verbose:
            where = "full resolution" if e_i is experiment else f"crop {e_i.shape}"
            print(f"harmonics l<={l} (lmax {L}, {where}): loss/pixel {res.loss / res.n_used:.4f}")
    if escape_z is None or twins:
        return res, stages
    primary = route or "ladder"
    routes = functools.partial(_escape_routes, primary, compact, L, data, experiment, mask, given, kw, stage_coarsening)  # fmt: skip
    again = dict(
        regularizer=regularizer, verbose=verbose, coarse=given["coarse"], stage_rtol=stage_rtol,
        stage_coarsening=stage_coarsening, n_correct=n_correct, escape_z=None, **fit_kwargs,
    )  # fmt: skip
    run = lambda name: harmonics_ladder(data, experiment, given["ellipsoid"], L, mask, route=name, **again)
    return _escapes(res, stages, routes, run, float(escape_z), verbose, primary, always=escapes == "always")


def _escape_routes(primary: str, compact, L: int, data, experiment, mask, given: dict, kw: dict, stage_coarsening):  # fmt: skip
    """`harmonics_ladder`'s escape routes after the `primary` one: `ESCAPE_ROUTES` less those that would
    repeat another ("compact" without a `compact` ellipsoid; "all_degrees" there too when the caller's
    `coarse` gives no crop; both for `L` <= 2; "coarse_last" unless the ladder's intermediate stages would run
    on the full pattern at a coarser pitch). Called only once a misfit is found (it crops the pattern)."""
    from ._multires import coarse_level, stage_pitch

    r_eq = float(np.prod(np.asarray(given["ellipsoid"].semi_axes, float))) ** (1 / 3)
    crop = coarse_level(data, experiment, mask, given["coarse"], r_eq) is not None
    coarser = (
        L > 2 and not crop and stage_pitch(experiment, kw, given["coarse"], stage_coarsening) is not None
    )
    skip = {primary}
    if compact is None:
        skip.add("compact")
        if not crop:  # one full-pitch stage, as "compact_all"
            skip.add("all_degrees")
    if L <= 2:
        skip |= {"all_degrees", "compact"}
    if not coarser:
        skip.add("coarse_last")
    return [name for name in ESCAPE_ROUTES if name not in skip]


def beam_compact(ellipsoid: ds.Ellipsoid, elongation: float | None = None) -> ds.Ellipsoid | None:
    """The escapes' beam-compact start: `ellipsoid` with its transverse (lab x, y) cross-section kept and its
    extent along the beam (lab z) set to the mean of the transverse ones, no tilt out of the detector plane.

    The pattern fixes a particle's projection on the detector plane; its extent along the beam enters only
    through the Ewald curvature and the projected thickness, and an ellipsoid fitted to a strongly deformed
    droplet can stretch along the beam into a basin the harmonic stages do not leave (`BEAM_ELONGATION`).
    Returns None when the rms extent of `ellipsoid` along z is within `elongation` (default `BEAM_ELONGATION`
    = 1.1) times the new one: nothing to compact. Lengths in the ellipsoid's units."""
    from ._multires import BEAM_ELONGATION

    if not isinstance(ellipsoid, ds.Ellipsoid):
        raise TypeError(f"ellipsoid must be a diffscat.Ellipsoid, got {type(ellipsoid).__name__}")
    limit = BEAM_ELONGATION if elongation is None else float(elongation)
    if not limit >= 1.0:
        raise ValueError(f"elongation must be >= 1, got {elongation}")
    R = np.asarray(ellipsoid.rotation, float)
    a = np.asarray(ellipsoid.semi_axes, float)
    M = (R * a**2) @ R.T  # lab-frame shape matrix: x^T M^-1 x = 1 on the surface
    w, V = np.linalg.eigh(M[:2, :2])
    w = np.maximum(w, 0.0)
    c = float(np.mean(np.sqrt(w)))
    if not np.sqrt(M[2, 2]) > limit * c:
        return None
    rot = np.eye(3)
    rot[:2, :2] = V if np.linalg.det(V) > 0 else V[:, ::-1]
    axes = np.sqrt(w) if np.linalg.det(V) > 0 else np.sqrt(w)[::-1]
    return ds.Ellipsoid(
        np.array([axes[0], axes[1], c]),
        ellipsoid.delta,
        ellipsoid.beta,
        rotation=rot,
        centre=ellipsoid.centre,
    )


def _escapes(res, stages: list, routes, run, escape_z: float, verbose: bool, primary: str = "ladder", always: bool = False):  # fmt: skip
    """`harmonics_ladder`'s escapes (see there): when the `primary` route's result `res` is a misfit (z >
    `escape_z`) or `always`, the route names `routes()` returns are tried in order through `run(name)` ->
    (result, stages) while the best result is a misfit (`always`: every route). Returns (the best result with
    `.escapes` set when any route ran, all stages)."""
    from ._auto import noise_consistency

    z, _, sd = noise_consistency(res)
    if not always and not (np.isfinite(z) and z > escape_z):
        return res, stages
    names = routes()
    if not names:
        return res, stages
    log = [(primary, float(res.loss), float(z))]
    best = res
    for name in names:
        r, more = run(name)
        stages = stages + more
        zr, _, _ = noise_consistency(r)
        log.append((name, float(r.loss), float(zr)))
        if verbose:
            print(f"harmonics escape {name}: loss {r.loss:.1f} (z {zr:.1f}; best so far {best.loss:.1f})")
        same = abs(float(r.loss) - float(best.loss)) <= sd
        if r.loss < best.loss:
            best = r
        if not always and (same or not (np.isfinite(zr) and zr > escape_z)):
            break
    best.escapes = log
    return best, stages
