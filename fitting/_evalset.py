"""A reproducible evaluation set for shape retrieval, made by a path independent of the fit's forward model.

Each truth shape is rendered as a box-averaged occupancy on a supersampled `VolumeMap` (a finer pitch than the
fit's default, and the indicator averaged over `supersample`^3 sub-voxel points, no partial-volume kernel) and
simulated in float64 with an exact slice sum of eq. 9 (`transform="separable"` by default, or "direct"; never
the Chebyshev-compressed "fast" route the fits use), the box kernel divided out. Then a beamstop mask and
Poisson noise. So a fit that reproduces the data is not merely reproducing its own renderer.

Everything is drawn from `numpy.random.default_rng([seed, family, index])`: the same seed gives the same set,
and asking for more shapes of one family leaves the others unchanged. Results can be cached as `.npz` files
(atomic write), keyed by a hash of every setting.

Public here (re-exported by `fitting`): `evaluation_set`, `EvaluationSet`, `EvalPattern`,
`random_harmonics_coefficients`, `POLYHEDRA`, `FAMILIES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np

import diffscat as ds

__all__ = [
    "EvalPattern",
    "EvaluationSet",
    "evaluation_set",
    "random_harmonics_coefficients",
    "random_rotation",
    "render_supersampled",
    "simulate_reference",
    "POLYHEDRA",
    "FAMILIES",
]

POLYHEDRA = ("Cube", "Octahedron", "Icosahedron", "Decahedron", "TruncatedOctahedron", "Cuboctahedron")
FAMILIES = ("harmonics", "ellipsoid", "polyhedra")
_FAMILY_ID = {f: i for i, f in enumerate(FAMILIES)}
_VERSION = 1  # bump when the generator changes (invalidates caches)


@contextlib.contextmanager
def _x64():
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix (3, 3) uniform on SO(3) (Shoemake's quaternion method) from `rng`."""
    u1, u2, u3 = rng.random(3)
    q = np.array(
        [
            np.sqrt(u1) * np.cos(2 * np.pi * u3),
            np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
            np.sqrt(u1) * np.sin(2 * np.pi * u3),
        ]
    )
    with _x64():
        return np.asarray(ds.rotation_from_quaternion(q), float)


def random_harmonics_coefficients(
    rng: np.random.Generator,
    lmax: int = 4,
    ratio: float = 1.5,
    *,
    mean_radius: float = 1.0,
    decay: float = 1.0,
    skip_l1: bool = True,
) -> np.ndarray:
    """Real spherical-harmonic coefficients ((lmax + 1)^2,) of a random star-shaped body whose radius has
    max / min = `ratio` exactly (on a fine grid of directions) and mean `mean_radius` [length].

    The l >= 2 (l >= 1 unless `skip_l1`; l = 1 mostly translates the body) coefficients are drawn N(0, l^-decay)
    and the whole deformation is scaled so that (a + s max p) / (a + s min p) = ratio, with a = c_00 Y_00 the
    mean radius and p the deformation. `ratio` = 1.25 / 0.75 means a radius varying +-25 % about the mean.
    Index convention of `diffscat.SphericalHarmonics`: c_lm at l^2 + l + m.
    """
    from diffscat.shapes._harmonics import _sphere_grid, real_sph_harm

    lmax = int(lmax)
    if lmax < 1:
        raise ValueError(f"lmax must be >= 1, got {lmax}")
    if not ratio >= 1.0:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    n = (lmax + 1) ** 2
    c = np.zeros(n)
    for l in range(2 if skip_l1 else 1, lmax + 1):
        c[l * l : (l + 1) ** 2] = rng.normal(0.0, float(l) ** (-decay), 2 * l + 1)
    u, _ = _sphere_grid(8 * lmax + 16, 16 * lmax + 16)
    with _x64():
        Y = np.asarray(real_sph_harm(lmax, np.asarray(u, float)), float)
    p = Y @ c
    a = float(mean_radius)
    hi, lo = float(p.max()), float(p.min())
    s = 0.0 if ratio == 1.0 or hi - lo <= 0 else a * (ratio - 1.0) / (hi - ratio * lo)
    y00 = 1.0 / math.sqrt(4 * math.pi)
    c = s * c
    c[0] = a / y00
    return c


@dataclasses.dataclass
class EvalPattern:
    """One pattern of the evaluation set.

    - `counts`: (ny, nx) Poisson photon counts (0 at masked pixels); `mask`: True = used pixel.
    - `expected`: (ny, nx) noiseless expected counts (the reference simulation times the fluence).
    - `truth`: dict with "family", "class" (a diffscat shape class name), "params" (constructor arguments,
      lengths in wavelengths), "rotation" (3x3, r_lab = R r_body), "delta", "beta", "radius_eq" (volume-
      equivalent radius), "photons" (total expected counts in used pixels), "index".
    """

    counts: np.ndarray
    mask: np.ndarray
    expected: np.ndarray
    truth: dict

    @property
    def shape_class(self) -> str:
        return self.truth["class"]

    def truth_shape(self) -> ds.AbstractShape:
        """The truth as a diffscat shape (default float dtype)."""
        return _build(self.truth)


@dataclasses.dataclass
class EvaluationSet:
    """Patterns, their common experiment and the settings that regenerate them (`evaluation_set(**config)`)."""

    patterns: list[EvalPattern]
    experiment: ds.Experiment
    config: dict

    def __len__(self) -> int:
        return len(self.patterns)

    def __iter__(self) -> Iterator[EvalPattern]:
        return iter(self.patterns)

    def __getitem__(self, i: int) -> EvalPattern:
        return self.patterns[i]

    def family(self, name: str) -> list[EvalPattern]:
        return [p for p in self.patterns if p.truth["family"] == name]


def _build(truth: dict) -> ds.AbstractShape:
    cls = getattr(ds, truth["class"])
    kw = {k: np.asarray(v) if isinstance(v, list) else v for k, v in truth["params"].items()}
    return cls(**kw, delta=truth["delta"], beta=truth["beta"], rotation=np.asarray(truth["rotation"]))


def _unit_volume(name: str) -> float:
    with _x64():
        return float(np.asarray(getattr(ds, name)(1.0).volume()))


def _draw_truth(family: str, index: int, seed: int, cfg: dict) -> dict:
    rng = np.random.default_rng([int(seed), _FAMILY_ID[family], int(index)])
    lo, hi = cfg["size_range"]
    r_eq = float(rng.uniform(lo, hi))
    delta = float(rng.uniform(*cfg["delta_range"]))
    beta = float(rng.uniform(*cfg["beta_range"]))
    photons = float(np.exp(rng.uniform(*np.log(cfg["photons_range"]))))
    R = random_rotation(rng)
    vol = 4.0 / 3.0 * math.pi * r_eq**3
    if family == "harmonics":
        ratio = float(rng.uniform(1.0, cfg["max_radius_ratio"]))
        c = random_harmonics_coefficients(rng, cfg["harmonics_lmax"], ratio)
        with _x64():
            v1 = float(np.asarray(ds.SphericalHarmonics(c).volume()))
        c = c * (vol / v1) ** (1 / 3)
        cls, params = "SphericalHarmonics", {"coefficients": c.tolist()}
        extra = {"radius_ratio": ratio}
    elif family == "ellipsoid":
        a = np.exp(rng.uniform(-1.0, 1.0, 3) * math.log(cfg["max_axis_ratio"]) / 2)
        a = np.sort(a / np.prod(a) ** (1 / 3)) * r_eq
        cls, params, extra = "Ellipsoid", {"semi_axes": a.tolist()}, {}
    elif family == "polyhedra":
        names = cfg["polyhedra"]
        cls = names[(index // cfg["n_orientations"]) % len(names)]
        edge = (vol / _unit_volume(cls)) ** (1 / 3)
        params, extra = {"edge": edge}, {}
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return {
        "family": family,
        "class": cls,
        "params": params,
        "rotation": R.tolist(),
        "delta": delta,
        "beta": beta,
        "radius_eq": r_eq,
        "photons": photons,
        "index": int(index),
        **extra,
    }


def render_supersampled(
    shape: ds.AbstractSolid, pitch: float, supersample: int = 2, margin: int = 2
) -> ds.VolumeMap:
    """The solid as a float64 `VolumeMap` of box-averaged occupancy: the inside test (signed distance < 0) at
    `supersample`^3 sub-voxel points per voxel, averaged (no smooth partial-volume kernel).

    `pitch` [length]: the map's isotropic pitch. Grid: the smallest holding the bounding ball plus `margin`.
    """
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    with _x64():
        r = float(np.asarray(shape.bounding_radius()))
        grid = ds.VoxelGrid.around(r, pitch, margin=margin)
        x, y, z = (np.asarray(a, float) for a in grid.axes(np.float64))
        off = ((np.arange(s) + 0.5) / s - 0.5) * pitch
        occ = np.zeros(grid.shape)
        sdf = jax.jit(lambda sh, p: sh.sdf(p))
        for ox in off:
            for oy in off:
                # one x-slab at a time keeps the point array small
                for i, xi in enumerate(x):
                    pts = np.stack(
                        [
                            np.full((len(y), len(z) * s), xi + ox),
                            np.broadcast_to((y + oy)[:, None], (len(y), len(z) * s)),
                            np.broadcast_to((z[:, None] + off[None, :]).reshape(-1), (len(y), len(z) * s)),
                        ],
                        -1,
                    )
                    ins = np.asarray(sdf(shape, pts)) < 0
                    occ[i] += ins.reshape(len(y), len(z), s).sum(-1)
        occ /= s**3
        return ds.VolumeMap.from_mask(occ, pitch, shape.delta, shape.beta)


def _box_transfer(q, pitch, s):
    """Transfer of the s-point box average (the supersampled occupancy) along one axis."""
    a = 0.5 * q * pitch
    num = np.sin(a)
    den = s * np.sin(a / s)
    return np.where(np.abs(a) < 1e-8, 1.0, num / np.where(den == 0, 1.0, den))


def simulate_reference(
    shape: ds.AbstractSolid,
    experiment: ds.Experiment,
    *,
    pitch: float | None = None,
    supersample: int = 2,
    transform: str = "separable",
) -> np.ndarray:
    """dsigma/dOmega [length^2/sr] (float64, image-shaped) of a solid by the independent path: supersampled
    box-averaged `VolumeMap` (pitch default half the fit's default pitch), exact float64 slice sum
    (`transform` "separable" or "direct"), the box-average kernel divided out."""
    if transform not in ("separable", "direct"):
        raise ValueError(f"transform must be 'separable' or 'direct', got {transform!r}")
    lam, tmax = experiment.sampling_hint
    if pitch is None:
        pitch = 0.5 * ds.default_pitch(lam, tmax)
    vm = render_supersampled(shape, float(pitch), supersample)
    with _x64():
        exp64 = ds.Experiment(float(np.asarray(experiment.wavelength)), experiment.detector)
        psi = np.asarray(ds.simulate(vm, exp64, field=True, transform=transform))
        pix = exp64.pixels()
        k0 = 2 * math.pi / lam
        T = (
            _box_transfer(k0 * np.asarray(pix.sx), pitch, supersample)
            * _box_transfer(k0 * np.asarray(pix.sy), pitch, supersample)
            * _box_transfer(k0 * np.asarray(pix.omc), pitch, supersample)
        )
        valid = np.asarray(pix.valid)
    psi = np.where(valid, psi / np.where(valid, T, 1.0), 0.0)
    return np.abs(psi) ** 2


def _config(**kw) -> dict:
    cfg = dict(kw)
    for k in ("size_range", "delta_range", "beta_range", "photons_range"):
        cfg[k] = [float(v) for v in cfg[k]]
        if len(cfg[k]) != 2 or cfg[k][0] > cfg[k][1]:
            raise ValueError(f"{k} must be (low, high) with low <= high, got {kw[k]}")
    cfg["families"] = list(cfg["families"])
    cfg["polyhedra"] = list(cfg["polyhedra"])
    for f in cfg["families"]:
        if f not in FAMILIES:
            raise ValueError(f"families must be among {FAMILIES}, got {f!r}")
    for p in cfg["polyhedra"]:
        if p not in POLYHEDRA:
            raise ValueError(f"polyhedra must be among {POLYHEDRA}, got {p!r}")
    if cfg["size_range"][0] <= 0:
        raise ValueError(f"size_range must be positive, got {kw['size_range']}")
    if cfg["photons_range"][0] <= 0:
        raise ValueError(f"photons_range must be positive, got {kw['photons_range']}")
    return cfg


def evaluation_set(
    seed: int = 0,
    *,
    families: Sequence[str] = FAMILIES,
    n_harmonics: int = 20,
    n_ellipsoids: int = 10,
    polyhedra: Sequence[str] = POLYHEDRA,
    n_orientations: int = 3,
    n_pixels: int = 128,
    theta_max_deg: float = 30.0,
    wavelength: float = 1.0,
    size_range: tuple[float, float] = (3.0, 10.0),
    delta_range: tuple[float, float] = (0.0, 0.01),
    beta_range: tuple[float, float] = (0.001, 0.01),
    photons_range: tuple[float, float] = (1e5, 1e7),
    beamstop_deg: float = 2.0,
    harmonics_lmax: int = 4,
    max_radius_ratio: float = 1.25 / 0.75,
    max_axis_ratio: float = 1.6,
    pitch_factor: float = 0.5,
    supersample: int = 2,
    transform: str = "separable",
    cache_dir: str | os.PathLike | None = None,
) -> EvaluationSet:
    """Regenerate (or load from `cache_dir`) the evaluation set of `seed`.

    **Families** (`families`): "harmonics" (`n_harmonics` random real-SH bodies, l <= `harmonics_lmax`, radius
    max/min uniform in [1, `max_radius_ratio`], see `random_harmonics_coefficients`), "ellipsoid"
    (`n_ellipsoids` triaxial ellipsoids, axis ratios up to `max_axis_ratio`), "polyhedra" (each class in
    `polyhedra` in `n_orientations` random orientations). Every body: uniform random orientation,
    volume-equivalent radius uniform in `size_range` [wavelengths x `wavelength`], delta and beta uniform in
    their ranges, total photons log-uniform in `photons_range`.

    **Detector**: `ds.QGrid(n_pixels, theta_max_deg)` at `wavelength`; pixels within `beamstop_deg` of the
    beam are masked.

    **Independent simulation** (`simulate_reference`): box-averaged occupancy sampled at `supersample`^3
    points per voxel of pitch `pitch_factor` x `ds.default_pitch`, float64, exact slice sum `transform`
    ("separable", the default, evaluates the same sum as "direct" factorised per slice: O(nz n^2 nv) instead
    of O(n^2 nx ny nz), which at 128^2 and 10 wavelengths is the difference between seconds and an hour).

    `cache_dir`: if given, the set is read from / written to `cache_dir/evalset-<hash>.npz` (atomic write).
    Returns an `EvaluationSet`.
    """
    cfg = _config(
        seed=int(seed),
        families=families,
        n_harmonics=int(n_harmonics),
        n_ellipsoids=int(n_ellipsoids),
        polyhedra=polyhedra,
        n_orientations=int(n_orientations),
        n_pixels=int(n_pixels),
        theta_max_deg=float(theta_max_deg),
        wavelength=float(wavelength),
        size_range=size_range,
        delta_range=delta_range,
        beta_range=beta_range,
        photons_range=photons_range,
        beamstop_deg=float(beamstop_deg),
        harmonics_lmax=int(harmonics_lmax),
        max_radius_ratio=float(max_radius_ratio),
        max_axis_ratio=float(max_axis_ratio),
        pitch_factor=float(pitch_factor),
        supersample=int(supersample),
        transform=str(transform),
        version=_VERSION,
    )
    exp = ds.Experiment(cfg["wavelength"], ds.QGrid(cfg["n_pixels"], cfg["theta_max_deg"]))
    path = None
    if cache_dir is not None:
        path = os.path.join(os.fspath(cache_dir), f"evalset-{settings_key(cfg)}.npz")
        if os.path.exists(path):
            return _load(path, exp, cfg)
    counts = {
        "harmonics": cfg["n_harmonics"],
        "ellipsoid": cfg["n_ellipsoids"],
        "polyhedra": len(cfg["polyhedra"]) * cfg["n_orientations"],
    }
    pix = exp.pixels()
    theta = np.degrees(np.arccos(np.clip(1.0 - np.asarray(pix.omc, float), -1.0, 1.0)))
    mask = np.asarray(pix.valid) & (theta >= cfg["beamstop_deg"])
    sa = np.asarray(pix.solid_angle, float)
    lam, tmax = exp.sampling_hint
    pitch = cfg["pitch_factor"] * ds.default_pitch(lam, tmax)
    patterns = []
    for fam in cfg["families"]:
        for i in range(counts[fam]):
            truth = _draw_truth(fam, i, cfg["seed"], cfg)
            truth = _scale_lengths(truth, cfg["wavelength"])
            with _x64():
                shape = _build(truth)
            dcs = simulate_reference(
                shape, exp, pitch=pitch, supersample=cfg["supersample"], transform=cfg["transform"]
            )
            sig = dcs * sa
            mu = np.where(mask, sig * truth["photons"] / np.sum(sig[mask]), 0.0)
            rng = np.random.default_rng([cfg["seed"], _FAMILY_ID[fam], i, 1])
            patterns.append(EvalPattern(rng.poisson(mu).astype(float), mask.copy(), mu, truth))
    out = EvaluationSet(patterns, exp, cfg)
    if path is not None:
        _save(path, out)
    return out


def settings_key(settings: dict) -> str:
    """A short hash of JSON-able `settings` (key order ignored): the name of a cache file made from them."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _scale_lengths(truth: dict, wavelength: float) -> dict:
    if wavelength == 1.0:
        return truth
    t = dict(truth)
    t["radius_eq"] *= wavelength
    t["params"] = {k: (np.asarray(v) * wavelength).tolist() for k, v in truth["params"].items()}
    return t


def _save(path: str, es: EvaluationSet) -> None:
    from diffscat._files import atomic_output

    with atomic_output(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                counts=np.stack([p.counts for p in es.patterns]),
                mask=np.stack([p.mask for p in es.patterns]),
                expected=np.stack([p.expected for p in es.patterns]),
                truth=np.array(json.dumps([p.truth for p in es.patterns])),
                config=np.array(json.dumps(es.config, sort_keys=True)),
            )


def _load(path: str, exp: ds.Experiment, cfg: dict) -> EvaluationSet:
    with np.load(path) as z:
        truths = json.loads(str(z["truth"]))
        pats = [
            EvalPattern(np.asarray(c), np.asarray(m), np.asarray(e), t)
            for c, m, e, t in zip(z["counts"], z["mask"], z["expected"], truths, strict=True)
        ]
    return EvaluationSet(pats, exp, cfg)
