"""Random parameters for dataset mode: per-pattern shape constructor kwargs and fluences from [dataset.vary]."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ._config import config_photon_energy_eV, shape_kwargs

__all__ = ["sample_parameters", "random_rotations"]


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """n rotation matrices uniform on SO(3) (Haar measure): normalised 4-D Gaussian quaternions."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def _draw(rng, spec: dict, n: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    dist = spec["dist"]
    full = (n, *shape)

    def arr(k):
        a = np.asarray(spec[k], float)
        try:
            return np.broadcast_to(a, shape)
        except ValueError:
            raise ValueError(f"dataset.vary.{name}.{k} has shape {a.shape}, the field has {shape}") from None

    if dist == "fixed":
        return np.broadcast_to(arr("value"), full).copy()
    if dist == "uniform":
        return rng.uniform(arr("low"), arr("high"), full)
    if dist == "loguniform":
        return np.exp(rng.uniform(np.log(arr("low")), np.log(arr("high")), full))
    if dist == "normal":
        return rng.normal(arr("mean"), arr("std"), full)
    if dist == "choice":
        vals = np.asarray(spec["values"], float)
        return (
            vals[rng.integers(0, len(vals), n)].reshape(full)
            if vals.ndim == 1 and not shape
            else np.stack([np.broadcast_to(vals[i], shape) for i in rng.integers(0, len(vals), n)])
        )
    raise ValueError(f"dataset.vary.{name}: unknown dist {dist!r}")


def sample_parameters(cfg: dict, n: int, seed: int) -> tuple[type, list[dict[str, Any]], np.ndarray | None]:
    """(shape class, n constructor kwargs, n fluences or None) for a validated config with [dataset].

    Each varied field is drawn with the field's own shape (the [shape] value, or the constructor's default);
    `mode` "set" replaces the base value, "add" adds to it, "scale" multiplies it. `size` + `axis_ratios`
    (2 entries: b/a, c/a) set semi_axes = size * (1, r1, r2) / (r1 r2)^(1/3) (size = equal-volume radius).
    """
    cls, base_kw = shape_kwargs(cfg["shape"], config_photon_energy_eV(cfg))
    base = cls(**base_kw)
    vary = cfg.get("dataset", {}).get("vary", {})
    rng = np.random.default_rng(seed)
    draws: dict[str, np.ndarray] = {}
    fluence = None
    for name in sorted(vary):  # sorted: the same config gives the same draws whatever the key order
        spec = vary[name]
        if name == "rotation" and spec["dist"] == "uniform_so3":
            draws[name] = random_rotations(rng, n)
            continue
        if name == "fluence":
            fluence = _draw(rng, spec, n, (), name)
            continue
        if name == "size":
            val = _draw(rng, spec, n, (), name)
        elif name == "axis_ratios":
            val = _draw(rng, spec, n, (2,), name)
        else:
            b = np.asarray(getattr(base, name))
            val = _draw(rng, spec, n, b.shape, name)
            mode = spec.get("mode", "set")
            if mode == "add":
                val = b + val
            elif mode == "scale":
                val = b * val
        draws[name] = val
    if "size" in draws:
        s, r = draws.pop("size"), draws.pop("axis_ratios")
        k = s / np.cbrt(r[:, 0] * r[:, 1])
        draws["semi_axes"] = np.stack([k, k * r[:, 0], k * r[:, 1]], axis=1)
    kws = []
    for i in range(n):
        kw = dict(base_kw)
        for name, v in draws.items():
            kw[name] = jnp.asarray(v[i])  # default float: float32 unless x64 is on
        kws.append(kw)
    if fluence is not None and np.any(fluence < 0):
        raise ValueError("dataset.vary.fluence drew negative fluences: use a positive distribution")
    return cls, kws, fluence
