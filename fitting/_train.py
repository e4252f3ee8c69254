"""Training the amortised-inversion network on diffscat's own simulations.

Data are made on the fly, deterministically from (seed, step): each step draws one "family" (the sphere +
ellipsoid family, simulated together as ellipsoids, or one polyhedron class) and splits the batch over the
size buckets; each sub-batch of random shapes is simulated with ONE vmapped `diffscat.simulate` on a FIXED voxel grid per (family,
bucket) (so each compiles once), turned into expected photons (`expected_photons`, scaled to a random total
of 1e4-1e7 photons), plus a flat background, Poisson noise, a random beamstop and a beam-centre offset of a
few pixels (the pattern is shifted while the geometry is not: the network learns to tolerate a mis-set
centre), then mapped to the canonical input (`CanonicalMap`). With `data.pool` = N the simulations are made
once, N per (family, bucket), and every step draws from them with fresh noise (`DataStream.build_pool`).

Training: optax AdamW with a warmup + cosine schedule, data parallel over `jax.devices()` by a
`NamedSharding` over a 1-D "batch" mesh (as `fitting._batch`). Checkpoints: `eqx.tree_serialise_leaves` of the
model (`OUT`) and of the optimiser state (`OUT.state`), then a JSON sidecar `OUT.json` (config, step, seed,
versions, loss curve), each written atomically (temporary file + `os.replace`); the sidecar is written last
and its `step` is the one a `resume` continues from.

Public here: `DEFAULT_CONFIG`, `check_config`, `make_batch_fn`, `sample_truths`, `train`, `load_checkpoint`.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import diffscat as ds
from diffscat.detectors import expected_photons

from ._evalset import POLYHEDRA, _x64, settings_key
from ._network import (
    CLASSES,
    CanonicalMap,
    build_model,
    network_loss,
    read_sidecar,
    sh_count,
    sidecar_path,
    twin_table,
)

__all__ = [
    "DEFAULT_CONFIG",
    "check_config",
    "sample_truths",
    "make_batch_fn",
    "train",
    "train_network",
    "load_checkpoint",
]

DEFAULT_CONFIG: dict = {
    "seed": 0,
    "classes": ["Sphere", "Ellipsoid"],
    "data": {
        "n_pixels": 64,  # QGrid n x n
        "theta_max_deg": 30.0,
        "size_buckets": [2.0, 4.0, 7.0, 12.0],  # volume-equivalent radius [wavelengths], bucket edges
        "max_axis_ratio": 1.5,  # ellipsoids: largest / smallest semi-axis at most
        "photons_range": [1e4, 1e7],  # total expected photons in the used pixels (log-uniform)
        "background_range": [0.0, 0.2],  # flat background [photons / pixel]
        "beamstop_deg_range": [0.0, 4.0],
        "center_shift_px": 2,  # beam-centre offset, uniform integer in [-s, s] per axis
        # fraction of patterns with NO offset (exactly centred); 0 = all drawn as above (see docs/network.md)
        "centred_fraction": 0.0,
        # detector effects (all off by default; the shipped model was trained without them): a dead band of
        # panel_gap_px pixels (horizontal or vertical, within a quarter of the detector of its centre) in a
        # fraction panel_gap_prob of the patterns; a gain curve counts -> counts^gamma (MCP + phosphor +
        # camera response), gamma uniform in gain_gamma_range; saturation: counts clipped at a fraction,
        # uniform in saturation_range, of the pattern's largest count, in a fraction saturation_prob
        "panel_gap_px": 0,
        "panel_gap_prob": 0.0,
        "gain_gamma_range": [1.0, 1.0],
        "saturation_range": [1.0, 1.0],
        "saturation_prob": 0.0,
        "delta_range": [0.001, 0.01],
        "beta_range": [0.0, 0.002],
        "pitch": 0.0,  # voxel pitch [wavelengths]; 0 = diffscat.default_pitch
        "mix_families": False,  # True: every batch spans all families (else one family per step)
        # a cached stream: 0 = every pattern simulated fresh; N > 0 = N noise-free patterns per (family, size
        # bucket) simulated once, then every step draws from them with FRESH photons, noise, background,
        # beamstop, centre offset and detector effects (on a CPU the simulation is ~90 % of a fresh step, the
        # network ~10 %). `pool_cache`: a folder to keep the pool in between runs ("" = memory only; one
        # .npz per (family, bucket), keyed by a hash of everything that sets the patterns)
        "pool": 0,
        "pool_cache": "",
        # class "SphericalHarmonics": lab-frame bodies with relative coefficients c_lm / c_00 ~ N(0, s l^-d)
        # for 2 <= l <= harmonics_lmax (l = 1, a shift, kept 0), the rms radius deviation sqrt(sum c_lm^2) /
        # c_00 uniform in harmonics_rms, d uniform in harmonics_decay, the deformation scaled down where the
        # radius's max / min would pass harmonics_max_ratio or its max pass 1.45 volume-equivalent radii (on a
        # grid of directions: the true extremes can pass them by a few 0.1 %)
        "harmonics_lmax": 4,
        "harmonics_rms": [0.0, 0.15],
        "harmonics_decay": [1.0, 2.5],
        "harmonics_max_ratio": 1.8,
    },
    # input "polar" (default): CNN on the canonical image resampled to `polar` = (radii, azimuths); size, class
    # and axes from the amplitudes of the azimuthal orders `harmonics` (even: a beam-centre offset makes odd
    # ones); "cartesian": the first layout (docs/network.md, section 2)
    "network": {
        "n": 64,
        "widths": [16, 32, 64, 64],
        "hidden": 128,
        "input": "polar",
        "polar": [48, 64],
        "harmonics": [2, 4, 6, 8],
        # orientation head: also the complex azimuthal Fourier coefficients of these orders (their phases are
        # the in-plane angles), averaged in `orient_bins` radial bins; [] = without (models before session 9)
        "orient_orders": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "orient_bins": 4,
        "orient_hidden": 128,
        # relative spherical-harmonic coefficients c_lm / c_00 up to this degree from the orientation head
        # (0: none; needed, >= data.harmonics_lmax, when the classes include "SphericalHarmonics")
        "sh_lmax": 0,
        # fringe-spacing feature for the size: the azimuth-averaged radial spectrum of the log image, zero-padded
        # this many times (0: off, models before session 24; docs/network.md, section 2)
        "radial_spectrum": 0,
    },
    "train": {
        "steps": 100,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "weight_decay": 1e-4,
        "warmup": 10,
        "checkpoint_every": 50,
        "log_every": 10,
        # weights of the loss terms (`network_loss`); class 1 since the polar layout (older sidecars: 0.3)
        # harmonics: sum of squared relative-coefficient errors = (rms radius error / mean radius)^2, a few
        # 1e-3 for a 5 % error: weighted up to count as much as the size term at a few per cent
        "loss_weights": {"size": 1.0, "class": 1.0, "axes": 1.0, "orientation": 0.3, "harmonics": 20.0},
        # whose orientation the loss scores: "all" (ellipsoids and the polyhedra, each against its own twins,
        # `fitting.twin_rotations(R, class)`) or "ellipsoid" (models before session 9)
        "orientation_classes": "all",
    },
}


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"unknown config key {path + k!r} (known: {sorted(base)})")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ValueError(f"config key {path + k!r} must be a table")
            out[k] = _merge(base[k], v, path + k + ".")
        else:
            out[k] = v
    return out


def check_config(config: dict | None = None) -> dict:
    """The full training config: `DEFAULT_CONFIG` updated by `config` (unknown keys are errors), checked."""
    cfg = _merge(DEFAULT_CONFIG, config or {})
    for c in cfg["classes"]:
        if c not in CLASSES:
            raise ValueError(f"classes: {c!r} is not one of {CLASSES}")
    if not cfg["classes"]:
        raise ValueError("classes must not be empty")
    d = cfg["data"]
    b = [float(x) for x in d["size_buckets"]]
    if len(b) < 2 or b[0] <= 0 or any(x >= y for x, y in zip(b, b[1:])):
        raise ValueError(f"data.size_buckets must be >= 2 increasing positive edges, got {d['size_buckets']}")
    for k in ("photons_range", "background_range", "beamstop_deg_range", "delta_range", "beta_range"):
        lo, hi = (float(x) for x in d[k])
        if lo > hi or lo < 0:
            raise ValueError(f"data.{k} must be (low, high) with 0 <= low <= high, got {d[k]}")
    if float(d["photons_range"][0]) <= 0:
        raise ValueError("data.photons_range must be positive")
    for k in ("panel_gap_prob", "saturation_prob"):
        if not 0.0 <= float(d[k]) <= 1.0:
            raise ValueError(f"data.{k} must be in [0, 1], got {d[k]}")
    if int(d["panel_gap_px"]) < 0:
        raise ValueError(f"data.panel_gap_px must be >= 0, got {d['panel_gap_px']}")
    for k in ("gain_gamma_range", "saturation_range"):
        lo, hi = (float(x) for x in d[k])
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.{k} must be (low, high) with 0 < low <= high <= 1, got {d[k]}")
    if int(d["pool"]) < 0:
        raise ValueError(f"data.pool must be >= 0 (0 = every pattern fresh), got {d['pool']}")
    if not isinstance(d["pool_cache"], str):
        raise ValueError(f"data.pool_cache must be a folder path string ('' = none), got {d['pool_cache']!r}")
    if not 0.0 <= float(d["centred_fraction"]) <= 1.0:
        raise ValueError(f"data.centred_fraction must be in [0, 1], got {d['centred_fraction']}")
    if float(d["max_axis_ratio"]) < 1:
        raise ValueError("data.max_axis_ratio must be >= 1")
    for k in ("harmonics_rms", "harmonics_decay"):
        lo, hi = (float(x) for x in d[k])
        if lo > hi or lo < 0:
            raise ValueError(f"data.{k} must be (low, high) with 0 <= low <= high, got {d[k]}")
    if int(d["harmonics_lmax"]) < 2 or float(d["harmonics_max_ratio"]) < 1:
        raise ValueError(
            f"data.harmonics_lmax must be >= 2 and data.harmonics_max_ratio >= 1, got {d['harmonics_lmax']}, "
            f"{d['harmonics_max_ratio']}"
        )
    if int(cfg["network"]["sh_lmax"]) < 0:
        raise ValueError(f"network.sh_lmax must be >= 0, got {cfg['network']['sh_lmax']}")
    if "SphericalHarmonics" in cfg["classes"] and int(cfg["network"]["sh_lmax"]) < int(d["harmonics_lmax"]):
        raise ValueError(
            "classes include SphericalHarmonics: network.sh_lmax (the coefficients the network predicts, "
            f"{cfg['network']['sh_lmax']}) must be >= data.harmonics_lmax ({d['harmonics_lmax']})"
        )
    t = cfg["train"]
    for k in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if int(t[k]) < 1:
            raise ValueError(f"train.{k} must be >= 1, got {t[k]}")
    for k, v in t["loss_weights"].items():
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"train.loss_weights.{k} must be a finite number >= 0, got {v}")
    if t["orientation_classes"] not in ("all", "ellipsoid"):
        raise ValueError(
            f"train.orientation_classes must be 'all' or 'ellipsoid', got {t['orientation_classes']!r}"
        )
    net = cfg["network"]
    if net["n"] % 2 ** len(net["widths"]):
        raise ValueError("network.n must be a multiple of 2^len(network.widths)")
    if not isinstance(net["harmonics"], list | tuple) or any(int(m) < 1 for m in net["harmonics"]):
        raise ValueError(f"network.harmonics must be a list of azimuthal orders >= 1, got {net['harmonics']}")
    if not isinstance(net["orient_orders"], list | tuple) or any(int(m) < 1 for m in net["orient_orders"]):
        raise ValueError(
            f"network.orient_orders must be a list of azimuthal orders >= 1, got {net['orient_orders']}"
        )
    if int(net["orient_hidden"]) < 1 or int(net["orient_bins"]) < 1:
        raise ValueError(
            f"network.orient_hidden and network.orient_bins must be >= 1, got {net['orient_hidden']}, {net['orient_bins']}"
        )
    if int(net["radial_spectrum"]) < 0:
        raise ValueError(f"network.radial_spectrum must be >= 0 (0 = off), got {net['radial_spectrum']}")
    if int(net["radial_spectrum"]) and net["input"] != "polar":
        raise ValueError("network.radial_spectrum needs network.input = 'polar'")
    if net["input"] not in ("polar", "cartesian"):
        raise ValueError(f"network.input must be 'polar' or 'cartesian', got {net['input']!r}")
    if len(net["polar"]) != 2 or any(int(v) % 2 ** len(net["widths"]) or int(v) < 1 for v in net["polar"]):
        raise ValueError(
            f"network.polar must be [radii, azimuths], multiples of 2^len(network.widths), got {net['polar']}"
        )
    return cfg


# ------------------------------------------------------------------------------------------------ data


# the loss terms of the training curve's columns after the total (`harmonics` only for models with the head)
LOSS_TERMS = ("size", "class", "axes", "orientation", "harmonics")


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, 3) rotations uniform on SO(3) (Shoemake's unit quaternions)."""
    u1, u2, u3 = rng.random((3, n))
    w, x, y, z = (
        np.sqrt(u1) * np.cos(2 * np.pi * u3),
        np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
        np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
        np.sqrt(u1) * np.sin(2 * np.pi * u3),
    )
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _families(cfg: dict) -> list[str]:
    """Simulation families: "ellipsoid" (spheres and ellipsoids together), each polyhedron class and
    "SphericalHarmonics"."""
    fams = []
    if "Sphere" in cfg["classes"] or "Ellipsoid" in cfg["classes"]:
        fams.append("ellipsoid")
    fams += [c for c in cfg["classes"] if c not in ("Sphere", "Ellipsoid")]
    return fams


def _unit(name: str) -> tuple[float, float]:
    """(volume, bounding radius) of the polyhedron of edge 1."""
    s = getattr(ds, name)(1.0)
    return float(np.asarray(s.volume())), float(np.asarray(s.bounding_radius()))


def sample_truths(cfg: dict, family: str, bucket: int, n: int, rng: np.random.Generator) -> dict:
    """`n` random truths of one family and size bucket (NumPy arrays): "label" (n,), "r_eq" (n,) [wavelengths],
    "semi_axes" (n, 3) sorted (ellipsoid family) or "edge" (n,), "rotation" (n, 3, 3), "delta", "beta"."""
    d = cfg["data"]
    lo, hi = d["size_buckets"][bucket], d["size_buckets"][bucket + 1]
    r = rng.uniform(lo, hi, n)
    out = {
        "r_eq": r,
        "rotation": _random_rotations(rng, n),
        "delta": rng.uniform(*d["delta_range"], n),
        "beta": rng.uniform(*d["beta_range"], n),
    }
    if family == "SphericalHarmonics":
        c = _random_harmonics(d, r, rng)
        out["coefficients"] = c
        out["rotation"] = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()  # lab frame: the coefficients carry it
        out["label"] = np.full(n, cfg["classes"].index(family))
    elif family == "ellipsoid":
        names = [c for c in ("Sphere", "Ellipsoid") if c in cfg["classes"]]
        pick = rng.integers(0, len(names), n)
        is_ell = np.array([names[i] == "Ellipsoid" for i in pick])
        a = np.exp(rng.uniform(-1.0, 1.0, (n, 3)) * math.log(float(d["max_axis_ratio"])) / 2)
        a = np.sort(a / np.prod(a, -1, keepdims=True) ** (1 / 3), -1)
        a = np.where(is_ell[:, None], a, 1.0) * r[:, None]
        out["semi_axes"] = a
        out["label"] = np.array([cfg["classes"].index(names[i]) for i in pick])
    else:
        vol, _ = _unit(family)
        out["edge"] = (4.0 / 3.0 * math.pi * r**3 / vol) ** (1 / 3)
        out["label"] = np.full(n, cfg["classes"].index(family))
    return out


# the largest radius of a training harmonic body, in volume-equivalent radii (its voxel grids' extent)
HARMONICS_BOUND = 1.45


@functools.cache
def _sh_directions(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(Y (ndir, (lmax + 1)^2) real harmonics on a fine direction grid, quadrature weights (ndir,) summing
    to 4 pi), float64."""
    from diffscat.shapes._harmonics import _sphere_grid, real_sph_harm

    u, w = _sphere_grid(8 * lmax + 16, 16 * lmax + 16)
    with _x64():
        Y = np.asarray(real_sph_harm(lmax, np.asarray(u, np.float64).reshape(-1, 3)), np.float64)
    w = np.asarray(w, np.float64).reshape(-1)
    return Y, w * (4 * math.pi / w.sum())


def _random_harmonics(d: dict, r_eq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, (L + 1)^2) lab-frame coefficients [wavelengths] of random harmonic bodies with volume-equivalent
    radii `r_eq` (see DEFAULT_CONFIG["data"]: harmonics_*)."""
    L = int(d["harmonics_lmax"])
    n = len(r_eq)
    Y, w = _sh_directions(L)
    l = np.concatenate([np.full(2 * k + 1, k) for k in range(L + 1)])
    decay = rng.uniform(*d["harmonics_decay"], (n, 1))
    rel = rng.normal(size=(n, l.size)) * np.where(l >= 2, np.maximum(l, 1.0)[None] ** -decay, 0.0)
    rms = rng.uniform(*d["harmonics_rms"], (n, 1))
    norm = np.sqrt(np.sum(rel**2, -1, keepdims=True))
    rel = rel * np.where(norm > 0, rms / np.maximum(norm, 1e-30), 0.0)  # sqrt(sum rel^2) = rms deviation
    y00 = 1.0 / math.sqrt(4 * math.pi)
    p = rel @ Y.T / y00  # radius / mean radius - 1, per direction
    ratio = float(d["harmonics_max_ratio"])
    hi, lo = p.max(-1, keepdims=True), p.min(-1, keepdims=True)
    # largest scale k <= 1 with (1 + k hi) / (1 + k lo) <= ratio and (1 + k hi) <= bound (volume scaling
    # below changes max R / r_eq only slightly: the check after it clips what remains)
    k_ratio = np.where(hi - ratio * lo > 0, (ratio - 1.0) / np.maximum(hi - ratio * lo, 1e-30), 1.0)
    k = np.clip(np.minimum(k_ratio, 1.0), 0.0, 1.0)
    rel, p = rel * k, p * k
    c = rel / y00  # c_lm = (c_lm / c_00) c_00, c_00 = 1 / Y_00: mean radius 1
    c[:, 0] = 1.0 / y00
    vol = np.sum(w * (1.0 + p) ** 3, -1) / 3.0
    c = c * ((4.0 / 3.0 * math.pi * r_eq**3 / vol) ** (1.0 / 3.0))[:, None]
    rmax = (1.0 + p.max(-1)) * c[:, 0] * y00 / r_eq
    over = rmax > HARMONICS_BOUND
    if np.any(over):  # shrink the deformation of the few bodies still too long
        s = np.where(over, (HARMONICS_BOUND / rmax), 1.0)[:, None]
        return _rescale_harmonics(c * np.where(l[None] >= 1, s, 1.0), r_eq, Y, w)
    return c


def _rescale_harmonics(c: np.ndarray, r_eq: np.ndarray, Y: np.ndarray, w: np.ndarray) -> np.ndarray:
    vol = np.sum(w * (c @ Y.T) ** 3, -1) / 3.0
    return c * ((4.0 / 3.0 * math.pi * r_eq**3 / vol) ** (1.0 / 3.0))[:, None]


def _bounding_factor(cfg: dict, family: str) -> float:
    """Largest bounding radius / volume-equivalent radius of the family."""
    if family == "SphericalHarmonics":
        return HARMONICS_BOUND
    if family == "ellipsoid":
        return float(cfg["data"]["max_axis_ratio"]) ** (2 / 3)
    vol, br = _unit(family)
    return br / (3 * vol / (4 * math.pi)) ** (1 / 3)


def training_experiment(cfg: dict) -> ds.Experiment:
    d = cfg["data"]
    return ds.Experiment(1.0, ds.QGrid(int(d["n_pixels"]), float(d["theta_max_deg"])))


def bucket_grid(cfg: dict, family: str, bucket: int, pitch: float | None = None) -> ds.VoxelGrid:
    """The fixed voxel grid of one (family, size bucket): the bucket's largest body plus 2 voxels."""
    d = cfg["data"]
    if pitch is None:
        pitch = float(d["pitch"]) or ds.default_pitch(1.0, math.radians(float(d["theta_max_deg"])))
    r = d["size_buckets"][bucket + 1] * _bounding_factor(cfg, family) * 1.02
    return ds.VoxelGrid.around(r, pitch, margin=2)


def _shape_of(family: str, t: dict):
    """The diffscat shape of one sampled truth (float32 arrays, see `sample_truths`)."""
    if family == "ellipsoid":
        return ds.Ellipsoid(t["semi_axes"], t["delta"], t["beta"], rotation=t["rotation"])
    if family == "SphericalHarmonics":
        return ds.SphericalHarmonics(t["coefficients"], t["delta"], t["beta"])
    return getattr(ds, family)(t["edge"], delta=t["delta"], beta=t["beta"], rotation=t["rotation"])


def make_sim_fn(cfg: dict, family: str, bucket: int, pitch: float | None = None) -> Callable:
    """A jitted `f(truth_arrays) -> expected photons (B, ny, nx)` of one (family, bucket), each pattern
    normalised to 1 photon in total over the valid pixels: the vmapped simulation on the bucket's fixed grid,
    before any noise."""
    exp = training_experiment(cfg)
    grid = bucket_grid(cfg, family, bucket, pitch)

    def one(t):
        e = expected_photons(ds.simulate(_shape_of(family, t), exp, grid=grid), exp, 1.0)
        e = jnp.where(exp.valid, e, 0.0)
        return e / jnp.sum(e)

    return jax.jit(jax.vmap(one))


def make_noise_fn(cfg: dict) -> Callable:
    """A jitted `f(expected (B, ny, nx), noise, key) -> (inputs (B, 2, n, n), counts, mask)`: photons,
    background, Poisson noise, detector effects, beamstop and centre offset on noise-free patterns (any
    family), then the canonical map. `noise`: `sample_noise`'s dict."""
    exp = training_experiment(cfg)
    cmap = CanonicalMap.from_experiment(exp, int(cfg["network"]["n"]))
    theta = exp.theta
    ny, nx = exp.shape
    iy, ix = jnp.meshgrid(jnp.arange(ny), jnp.arange(nx), indexing="ij")

    def one(e, nz, key):
        mask = exp.valid & (theta >= nz["beamstop"])
        e = e / jnp.sum(jnp.where(mask, e, 0.0)) * nz["photons"] + nz["background"]
        counts = jax.random.poisson(key, jnp.where(exp.valid, e, 0.0)).astype(jnp.float32)
        # detector effects (identity when off: gamma 1, saturation level inf, no gap)
        counts = jnp.where(nz["gamma"] < 1, counts ** nz["gamma"], counts)
        top = jnp.max(jnp.where(mask, counts, 0.0))
        counts = jnp.minimum(counts, jnp.where(nz["saturation"] < 1, nz["saturation"] * top, jnp.inf))
        dy, dx = nz["shift"][0], nz["shift"][1]
        counts = jnp.roll(counts, (dy, dx), axis=(0, 1))
        inside = (iy - dy >= 0) & (iy - dy < ny) & (ix - dx >= 0) & (ix - dx < nx)
        mask = jnp.roll(mask, (dy, dx), axis=(0, 1)) & inside & exp.valid
        # a panel gap belongs to the detector, not to the (shifted) pattern
        line = jnp.where(nz["gap_axis"] == 0, iy, ix)
        mask = mask & ~((line >= nz["gap_start"]) & (line < nz["gap_start"] + nz["gap_px"]))
        counts = jnp.where(mask, counts, 0.0)
        return cmap(counts, mask), counts, mask

    @jax.jit
    def noisy(e, nz, key):
        keys = jax.random.split(key, e.shape[0])
        return jax.vmap(one)(e, nz, keys)

    return noisy


def make_batch_fn(cfg: dict, family: str, bucket: int, pitch: float | None = None) -> Callable:
    """A jitted `f(truth_arrays, noise, key) -> (inputs (B, 2, n, n), counts (B, ny, nx), mask (B, ny, nx))`
    for one (family, bucket): vmapped simulation on the bucket's fixed grid (`make_sim_fn`), then photons,
    noise, beamstop, shift and the canonical map (`make_noise_fn`).
    `noise`: dict of (B,) arrays "photons", "background", "beamstop" [rad], "shift" (B, 2) int."""
    sim, noisy = make_sim_fn(cfg, family, bucket, pitch), make_noise_fn(cfg)

    @jax.jit
    def batch(t, nz, key):
        return noisy(sim(t), nz, key)

    return batch


def sample_noise(cfg: dict, n: int, rng: np.random.Generator) -> dict:
    """Per-pattern noise and detector settings of a sub-batch (see `make_batch_fn`). The detector effects are
    drawn only when the config turns them on, so the data streams of configs without them are unchanged."""
    d = cfg["data"]
    lp = np.log(np.asarray(d["photons_range"], float))
    s = int(d["center_shift_px"])
    out = {
        "photons": np.exp(rng.uniform(lp[0], lp[1], n)).astype(np.float32),
        "background": rng.uniform(*d["background_range"], n).astype(np.float32),
        "beamstop": np.radians(rng.uniform(*d["beamstop_deg_range"], n)).astype(np.float32),
        "shift": rng.integers(-s, s + 1, (n, 2)).astype(np.int32),
    }
    f = float(d["centred_fraction"])
    if f > 0:  # (drawn only when set, so older configs' data streams are unchanged)
        out["shift"] = np.where(rng.random((n, 1)) < f, 0, out["shift"]).astype(np.int32)
    ny = int(d["n_pixels"])
    out["gamma"] = np.ones(n, np.float32)
    out["saturation"] = np.full(n, np.inf, np.float32)
    out["gap_axis"] = np.zeros(n, np.int32)
    out["gap_start"] = np.zeros(n, np.int32)
    out["gap_px"] = np.zeros(n, np.int32)
    if tuple(float(x) for x in d["gain_gamma_range"]) != (1.0, 1.0):
        out["gamma"] = rng.uniform(*d["gain_gamma_range"], n).astype(np.float32)
    if float(d["saturation_prob"]) > 0:
        on = rng.random(n) < float(d["saturation_prob"])
        out["saturation"] = np.where(on, rng.uniform(*d["saturation_range"], n), np.inf).astype(np.float32)
    if float(d["panel_gap_prob"]) > 0 and int(d["panel_gap_px"]) > 0:
        on = rng.random(n) < float(d["panel_gap_prob"])
        w = int(d["panel_gap_px"])
        out["gap_axis"] = rng.integers(0, 2, n).astype(np.int32)
        out["gap_start"] = (ny // 2 - w // 2 + rng.integers(-(ny // 4), ny // 4 + 1, n)).astype(np.int32)
        out["gap_px"] = np.where(on, w, 0).astype(np.int32)
    return out


def targets_of(cfg: dict, t: dict) -> dict:
    """Loss targets (see `network_loss`) of sampled truths, as float32/int32 NumPy arrays (leading batch axis)."""
    n = len(t["r_eq"])
    ell = cfg["classes"].index("Ellipsoid") if "Ellipsoid" in cfg["classes"] else -1
    sph = cfg["classes"].index("Sphere") if "Sphere" in cfg["classes"] else -1
    if "semi_axes" in t:
        a = t["semi_axes"]
        la = np.stack([np.log(a[:, 0] / t["r_eq"]), np.log(a[:, 2] / t["r_eq"])], -1)
    else:
        la = np.zeros((n, 2))
    lab = np.asarray(t["label"])
    oriented = lab == ell
    if cfg["train"]["orientation_classes"] == "all":
        oriented = oriented | np.isin(lab, [i for i, c in enumerate(cfg["classes"]) if c in POLYHEDRA])
    out = {
        "log_size": np.log(t["r_eq"]).astype(np.float32),
        "label": lab.astype(np.int32),
        "log_axes": la.astype(np.float32),
        "rotation": np.asarray(t["rotation"], np.float32),
        "has_orientation": oriented.astype(np.float32),
        "has_axes": ((lab == ell) | (lab == sph)).astype(np.float32),
    }
    n_sh = sh_count(int(cfg["network"]["sh_lmax"]))
    if n_sh:  # the relative coefficients c_lm / c_00, l >= 1 (zeros and has_sh 0 for other bodies)
        sh = np.zeros((n, n_sh), np.float32)
        if "coefficients" in t:
            c = np.asarray(t["coefficients"], np.float64)
            rel = c[:, 1:] / c[:, :1]
            sh[:, : rel.shape[1]] = rel
        out["sh"] = sh
        out["has_sh"] = np.full(n, float("coefficients" in t), np.float32)
    return out


def _f32(t: dict) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in t.items() if k != "label"}


class DataStream:
    """Deterministic batches: `batch(step)` -> (inputs, targets), drawn from (seed, step).

    With `data.pool` = 0 every pattern is simulated fresh. With `data.pool` = N, N noise-free patterns per
    (family, size bucket) are simulated once (`build_pool`; deterministic in the seed, so a resumed run
    rebuilds the same pool), and each step draws its sub-batches from them with fresh noise and detector
    settings (`make_noise_fn`)."""

    def __init__(self, cfg: dict, batch_size: int, pitch: float | None = None, seed_offset: int = 0):
        self.cfg = cfg = check_config(cfg)  # older sidecars lack newer keys
        self.b, self.pitch = int(batch_size), pitch
        self.fams = _families(cfg)
        self.nb = len(cfg["data"]["size_buckets"]) - 1
        self.seed = int(cfg["seed"]) + int(seed_offset)
        self._fns: dict = {}
        self._noisy: Callable | None = None
        self._pool: dict | None = None

    @property
    def pool_size(self) -> int:
        return int(self.cfg["data"]["pool"])

    def fn(self, fam: str, bucket: int):
        if (fam, bucket) not in self._fns:
            self._fns[fam, bucket] = make_batch_fn(self.cfg, fam, bucket, self.pitch)
        return self._fns[fam, bucket]

    def noise_fn(self) -> Callable:
        if self._noisy is None:
            self._noisy = make_noise_fn(self.cfg)
        return self._noisy

    def _pool_key(self, fam: str, bucket: int) -> str:
        """A hash of everything that sets the pool's patterns of (fam, bucket)."""
        d = {k: v for k, v in self.cfg["data"].items() if k != "pool_cache"}
        return settings_key(
            {
                "data": d,
                "classes": self.cfg["classes"],
                "seed": self.seed,
                "pitch": self.pitch,
                "family": fam,
                "bucket": bucket,
                "version": ds.__version__,
            }
        )

    def _build_pair(self, fam: str, bucket: int, chunk: int = 16) -> dict:
        n = self.pool_size
        folder = self.cfg["data"]["pool_cache"]
        path = (
            os.path.join(folder, f"pool-{fam}-{bucket}-{self._pool_key(fam, bucket)}.npz") if folder else ""
        )
        if path and os.path.exists(path):
            with np.load(path, allow_pickle=False) as z:  # never unpickle
                out = {k: z[k] for k in z.files}
            if len(out["expected"]) == n:
                return out
        rng = np.random.default_rng([self.seed, 7919, self.fams.index(fam), bucket])
        t = sample_truths(self.cfg, fam, bucket, n, rng)
        sim = make_sim_fn(self.cfg, fam, bucket, self.pitch)
        t32 = _f32(t)
        parts = []
        for i in range(0, n, chunk):
            sl = {k: v[i : i + chunk] for k, v in t32.items()}
            m = len(sl["delta"])
            if m < chunk:  # pad the last chunk: one compiled size
                sl = {k: np.concatenate([v, np.repeat(v[-1:], chunk - m, 0)]) for k, v in sl.items()}
            parts.append(np.asarray(sim(sl))[:m])
        out = {k: np.asarray(v) for k, v in t.items()}
        out["expected"] = np.concatenate(parts).astype(np.float32)
        if path:
            os.makedirs(folder, exist_ok=True)

            def w(p):
                with open(p, "wb") as f:
                    np.savez(f, **out)

            _atomic(path, w)
        return out

    def build_pool(self, progress: Callable | None = None) -> float:
        """Simulate (or load from `data.pool_cache`) the pool of every (family, bucket); returns the seconds
        taken. No-op without `data.pool`."""
        t0 = time.perf_counter()
        if self.pool_size and self._pool is None:
            pool = {}
            for fam in self.fams:
                for bucket in range(self.nb):
                    pool[fam, bucket] = self._build_pair(fam, bucket)
                    if progress is not None:
                        progress(
                            f"pool {fam} bucket {bucket}: {self.pool_size} patterns "
                            f"({time.perf_counter() - t0:.0f} s)"
                        )
            self._pool = pool
        return time.perf_counter() - t0

    def _plan(self, step: int):
        """(rng, key, [(family, bucket, n), ...]) of batch `step`."""
        rng = np.random.default_rng([self.seed, int(step)])
        fam = self.fams[int(rng.integers(len(self.fams)))]
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), int(step))
        if self.cfg["data"]["mix_families"]:
            pairs = [(f, bk) for f in self.fams for bk in range(self.nb)]
            off = int(step) % len(pairs)
            pairs = pairs[off:] + pairs[:off]
        else:
            pairs = [(fam, bk) for bk in range(self.nb)]
        sizes = [self.b // len(pairs) + (1 if i < self.b % len(pairs) else 0) for i in range(len(pairs))]
        return rng, key, [(f, bk, n) for (f, bk), n in zip(pairs, sizes, strict=True) if n > 0]

    def compile(self, workers: int | None = None) -> float:
        """Compile every data generator training will call (each (family, bucket) at each sub-batch size), in
        parallel threads: XLA compiles outside the GIL, and the generators are many (8 families x 3 buckets)
        and slow to compile on a GPU host (~6 s each). Returns the seconds taken. With a pool: the noise
        step at each sub-batch size (the pool's simulations compile as `build_pool` runs)."""
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        sizes = sorted({n for _, _, n in self._plan(0)[2]})  # every step's plan has the same sizes
        rng = np.random.default_rng(0)
        key = jax.random.PRNGKey(0)
        if self.pool_size:
            ny, nx = training_experiment(self.cfg).shape
            for n in sizes:
                e = np.full((n, ny, nx), 1.0 / (ny * nx), np.float32)
                jax.block_until_ready(self.noise_fn()(e, sample_noise(self.cfg, n, rng), key))
            return time.perf_counter() - t0
        jobs = []
        for fam in self.fams:
            for bucket in range(self.nb):
                for n in sizes:
                    t = _f32(sample_truths(self.cfg, fam, bucket, n, rng))
                    jobs.append((self.fn(fam, bucket), t, sample_noise(self.cfg, n, rng)))
        workers = workers or min(len(jobs), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as ex:
            list(ex.map(lambda j: jax.block_until_ready(j[0](j[1], j[2], key)), jobs))
        return time.perf_counter() - t0

    def batch(self, step: int, with_truth: bool = False):
        """Batch `step`: one family (or, with `data.mix_families`, every family), the batch split evenly over
        the size buckets (one sub-batch per (family, bucket), so every batch spans the whole size range; sizes
        that do not divide go to the first pairs, rotated by step when mixing). A batch of one family lets the
        class logits chase the family of the moment: with many families, mix them. With a pool, each
        sub-batch is drawn (with replacement) from its (family, bucket) pool."""
        rng, key, plan = self._plan(step)
        if self.pool_size:
            self.build_pool()
        xs, tgs, extra = [], [], []
        for fam, bucket, n in plan:
            if self.pool_size:
                pool = self._pool[fam, bucket]
                idx = rng.integers(0, self.pool_size, n)
                t = {k: v[idx] for k, v in pool.items() if k != "expected"}
            else:
                t = sample_truths(self.cfg, fam, bucket, n, rng)
            nz = sample_noise(self.cfg, n, rng)
            # (one family per step: the key of old checkpoints' data, fold_in(key, bucket), is kept)
            sub = self.fams.index(fam) * self.nb + bucket if self.cfg["data"]["mix_families"] else bucket
            k = jax.random.fold_in(key, sub)
            if self.pool_size:
                x, counts, mask = self.noise_fn()(pool["expected"][idx], nz, k)
            else:
                x, counts, mask = self.fn(fam, bucket)(_f32(t), nz, k)
            xs.append(x)
            tgs.append(targets_of(self.cfg, t))
            extra.append((t, counts, mask))
        x = jnp.concatenate(xs)
        tg = {k: np.concatenate([g[k] for g in tgs]) for k in tgs[0]}
        if with_truth:
            return x, tg, extra
        return x, tg


# --------------------------------------------------------------------------------------------- training


def make_optimizer(cfg: dict) -> optax.GradientTransformation:
    t = cfg["train"]
    lr = float(t["learning_rate"])
    steps = int(t["steps"])
    sched = optax.warmup_cosine_decay_schedule(
        0.0, lr, min(int(t["warmup"]), max(steps - 1, 1)), max(steps, 2), end_value=0.05 * lr
    )
    return optax.adamw(sched, weight_decay=float(t["weight_decay"]))


def loss_twins(cfg: dict) -> tuple | None:
    """The twin table `network_loss` scores orientations with for this config (None: ellipsoids only)."""
    if cfg["train"]["orientation_classes"] == "ellipsoid":
        return None
    return twin_table(tuple(cfg["classes"]))


def batch_loss(model, x, tg, weights: dict | None = None, twins: tuple | None = None) -> tuple:
    out = jax.vmap(model)(x)
    tot, parts = jax.vmap(lambda o, t: network_loss(o, t, weights, twins=twins))(out, tg)
    return jnp.mean(tot), {k: jnp.mean(v) for k, v in parts.items()}


@eqx.filter_jit
def _step(model, opt_state, opt, x, tg, weights: dict | None = None, twins: tuple | None = None):
    (loss, parts), g = eqx.filter_value_and_grad(batch_loss, has_aux=True)(model, x, tg, weights, twins)
    upd, opt_state = opt.update(g, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, upd), opt_state, loss, parts


def _versions() -> dict:
    import equinox

    out = {"diffscat": ds.__version__, "jax": jax.__version__, "equinox": equinox.__version__}
    out["optax"] = optax.__version__
    return out


def _atomic(path: str, write: Callable[[str], None]) -> None:
    from diffscat._files import atomic_output

    with atomic_output(path) as tmp:
        write(tmp)


def state_path(path) -> str:
    return os.fspath(path) + ".state"


def save_checkpoint(path, model, opt_state, meta: dict) -> None:
    """model -> `path`, optimiser state -> `path.state` (tree_serialise_leaves), then `path.json` (atomic each)."""
    path = os.fspath(path)

    def leaves(tree):
        def w(p):
            with open(p, "wb") as f:  # a file object: the path is used as is (no ".eqx" appended)
                eqx.tree_serialise_leaves(f, tree)

        return w

    _atomic(state_path(path), leaves(opt_state))
    _atomic(path, leaves(model))

    def w(p):
        with open(p, "w") as f:
            json.dump(meta, f, indent=1)

    _atomic(sidecar_path(path), w)


def load_checkpoint(path, cfg: dict | None = None):
    """(model, opt_state, meta) of a checkpoint; `cfg` (default: the sidecar's) builds the templates."""
    path = os.fspath(path)
    meta = read_sidecar(path)
    cfg = meta["config"] if cfg is None else cfg
    with open(path, "rb") as f:
        model = eqx.tree_deserialise_leaves(f, build_model(cfg, jax.random.PRNGKey(0)))
    opt = make_optimizer(cfg)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    if os.path.exists(state_path(path)):
        with open(state_path(path), "rb") as f:
            opt_state = eqx.tree_deserialise_leaves(f, opt_state)
    return model, opt_state, meta


def _same_except_steps(a: dict, b: dict) -> bool:
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for c in (a, b):
        if not int(c["network"].get("sh_lmax", 0)) and "SphericalHarmonics" not in c["classes"]:
            # no harmonic head: the harmonic data and loss settings do not matter (models before session 20)
            c["train"]["loss_weights"].pop("harmonics", None)
            for k in [k for k in c["data"] if k.startswith("harmonics_")]:
                c["data"].pop(k)
        c["train"].pop("steps", None)
        c["train"].pop("checkpoint_every", None)
        c["train"].pop("log_every", None)
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def train(
    config: dict | None,
    out,
    *,
    resume: bool = False,
    progress: Callable | None = None,
    time_limit: float | None = None,
) -> dict:
    """Train (or, with `resume`, continue) the network of `config` and write checkpoints to `out`.

    Returns the final sidecar dict. `progress(str)` gets one line per `log_every` steps (None: silent).
    `time_limit` [s of wall time in this call]: stop after the step that passes it and write a checkpoint
    (the sidecar's "stopped" says so; `resume` continues it, the learning-rate schedule still runs to
    `train.steps`). The sidecar's "samples_per_s" is the training throughput of this call, data generation
    included, the first (compiling) step excluded when there are more. The data generators are all compiled
    before the first step, in parallel threads (`DataStream.compile`).
    """
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    cfg = check_config(config)
    out = os.fspath(out)
    t = cfg["train"]
    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), ("batch",))
    shard, repl = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    bsz = int(math.ceil(int(t["batch_size"]) / len(devices)) * len(devices))
    opt = make_optimizer(cfg)
    if resume:
        if not os.path.exists(sidecar_path(out)):
            raise FileNotFoundError(f"--resume: no checkpoint sidecar {sidecar_path(out)}")
        old = read_sidecar(out)["config"]
        if not _same_except_steps(check_config(old), cfg):  # older sidecars lack newer (default) keys
            raise ValueError(
                f"--resume: {out} was trained with a different config (only train.steps may change; a model "
                f'trained before the polar layout needs [network] input = "cartesian" in the config, one trained before '
                f'polyhedron orientations [train] orientation_classes = "ellipsoid")'
            )
        model, opt_state, meta = load_checkpoint(out, cfg)
    else:
        if os.path.exists(out) or os.path.exists(sidecar_path(out)):
            raise ValueError(
                f"{out} exists: pass resume=True (--resume) to continue it, or choose another -o"
            )
        model = build_model(cfg, jax.random.PRNGKey(int(cfg["seed"])))
        opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
        meta = {"format": 1, "step": 0, "loss_curve": [], "samples_seen": 0, "train_seconds": 0.0}
    meta.update(config=cfg, seed=int(cfg["seed"]), versions=_versions(), devices=[str(d) for d in devices])
    arrays, static = eqx.partition((model, opt_state), eqx.is_array)
    model, opt_state = eqx.combine(jax.device_put(arrays, repl), static)
    stream = DataStream(cfg, bsz)
    if int(meta["step"]) < int(t["steps"]):
        if stream.pool_size:
            p_s = stream.build_pool(progress)
            meta["pool_seconds"] = float(meta.get("pool_seconds", 0.0)) + p_s
            if progress is not None:
                progress(f"pool of {stream.pool_size} patterns per (family, bucket) ready in {p_s:.0f} s")
        c_s = stream.compile()
        if progress is not None:
            what = "the noise step" if stream.pool_size else f"{len(stream._fns)} (family, bucket) pairs"
            progress(f"data generators compiled in {c_s:.0f} s ({what})")
    weights = {k: float(v) for k, v in t["loss_weights"].items()}
    twins = loss_twins(cfg)
    step0 = int(meta["step"])
    t0 = t_start = time.perf_counter()
    t_warm = None  # after step step0 + 1
    acc: list = []
    meta.pop("stopped", None)
    for step in range(step0, int(t["steps"])):
        x, tg = stream.batch(step)
        x, tg = jax.device_put((x, tg), shard)
        model, opt_state, loss, parts = _step(model, opt_state, opt, x, tg, weights, twins)
        acc.append([float(loss)] + [float(parts[k]) for k in LOSS_TERMS if k in parts])
        done = step + 1
        if done - step0 == 1:  # throughput after the compiling step (the data generators compiled before)
            jax.block_until_ready(loss)
            t_warm = time.perf_counter()
        out_of_time = time_limit is not None and time.perf_counter() - t_start >= time_limit
        if done % int(t["log_every"]) == 0 or done == int(t["steps"]):
            m = np.mean(acc, 0).tolist()
            meta["loss_curve"].append([done, *m])
            acc = []
            if progress is not None:
                sh = f"  harmonics {m[5]:.4f}" if len(m) > 5 else ""
                progress(
                    f"step {done}/{t['steps']}  loss {m[0]:.4f}  size {m[1]:.4f}  class {m[2]:.3f}  "
                    f"axes {m[3]:.4f}  orient {m[4]:.3f}{sh}  ({time.perf_counter() - t0:.0f} s)"
                )
        if out_of_time:
            meta["stopped"] = f"time limit {time_limit} s at step {done} of {t['steps']}"
        if done % int(t["checkpoint_every"]) == 0 or done == int(t["steps"]) or out_of_time:
            jax.block_until_ready(loss)
            now = time.perf_counter()
            if t_warm is not None and done > step0 + 1:
                meta["samples_per_s"] = (done - step0 - 1) * bsz / (now - t_warm)
            else:
                meta["samples_per_s"] = (done - step0) * bsz / (now - t_start)
            meta["step"] = done
            meta["samples_seen"] = done * bsz
            meta["train_seconds"] = float(meta.get("train_seconds", 0.0)) + time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(out, model, opt_state, meta)
        if out_of_time:
            if progress is not None:
                progress(
                    f"stopped at step {done} of {t['steps']}: time limit {time_limit} s (resume continues)"
                )
            break
    if step0 >= int(t["steps"]) and progress is not None:
        progress(f"{out} is already at step {step0} >= train.steps = {t['steps']}: nothing to do")
    return meta


train_network = train  # the name `fitting` exports
