"""Parametrisation: which leaves of (shape, experiment, background) are free, their bounds and their scale.

The optimiser sees a dict {name: u} of unconstrained arrays of order one. Each free parameter maps to its
physical value through a smooth transform fixed at the start of the fit:

| kind | parameters | physical value |
|---|---|---|
| positive | sizes (radius, semi_axes, ...), distance, wavelength, pixel_size | initial * exp(0.1 u) |
| nonneg | beta, background | unit * softplus(u) |
| real | delta, centre, beam_center, unbounded coefficients | initial + unit * u |
| orientation | rotation | R0 @ R(q), q = (1, 0.1 u) / norm (unnormalised quaternion: no gimbal lock) |

`unit` is the typical size of the parameter (one pixel for a beam centre, 10 % of the largest coefficient,
...), so every u moves by O(1) over the fit whatever the length unit: one unit of u is a ~10 % change of a
size or a ~11 deg rotation (the scale of a rough initial guess; L-BFGS's unit-norm first step then stays in
the starting basin instead of jumping across fringe minima). Names are the shape's field names
(`radius`, `semi_axes`, `delta`, `beta`, `centre`, `orientation` for `rotation`, ...) plus the experiment's
`wavelength`, `distance`, `pixel_size`, `beam_center` (FlatDetector `center`, fractional pixels (cy, cx)) and
`background` (counts per pixel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import diffscat as ds
from diffscat._custom_types import mm

__all__ = ["Parametrisation", "valid_parameter_names", "default_free", "stack_parametrisations"]

STEP = 0.1  # one unit of u: a 10 % change of a positive size, a ~11 deg rotation
OPTICAL = ("delta", "beta")


def _softplus_inv(x):
    x = jnp.asarray(x)
    return jnp.where(x > 20.0, x, jnp.log(jnp.expm1(jnp.minimum(x, 20.0))))


def _shape_fields(shape: ds.AbstractShape) -> dict[str, str]:
    """Fittable array fields of a shape -> parameter name (rotation -> orientation)."""
    out = {}
    for f in dataclasses.fields(shape):
        if f.metadata.get("static", False):
            continue
        v = getattr(shape, f.name, None)
        if not eqx.is_inexact_array(v) or jnp.iscomplexobj(v):
            continue
        if f.name == "rotation":
            if isinstance(shape, ds.Sphere):
                continue  # a sphere is invariant under rotation
            out["orientation"] = f.name
        else:
            out[f.name] = f.name
    return out


def _experiment_fields(experiment: ds.Experiment) -> dict[str, tuple[str, ...]]:
    out = {"wavelength": ("wavelength",)}
    # The detector's fittable geometry leaves (FlatDetector: distance, pixel_size, beam_center).
    for name, path in experiment.detector.fittable_fields().items():
        out[name] = ("detector", *path)
    return out


def valid_parameter_names(shape: ds.AbstractShape, experiment: ds.Experiment) -> tuple[str, ...]:
    """All names `free=` accepts for this model and experiment."""
    return tuple(_shape_fields(shape)) + tuple(_experiment_fields(experiment)) + ("background",)


def default_free(shape: ds.AbstractShape) -> tuple[str, ...]:
    """Default free parameters: the shape's geometric leaves (sizes, coefficients, orientation).

    Excluded by default: `delta`/`beta` (with an unknown fluence only their ratio and the weak MSFT
    nonlinearity are measurable: |n - 1| trades off against the scale), `centre` (a translation only changes
    the phase of the far field), and all experiment leaves and the background (opt in by name).
    """
    return tuple(n for n in _shape_fields(shape) if n not in OPTICAL + ("centre",))


# Shape fields that are positive by construction (sizes, exponents): log-parametrised. Every other shape
# field (spherical-harmonic coefficients, ...) is "real" whatever the sign of its initial value, so the
# parameter structure (and with it the compiled step) does not depend on the starting values.
POSITIVE_FIELDS = (
    "radius",
    "semi_axes",
    "edge",
    "length",
    "half_length",
    "separation",
    "neck",
    "exponents",
    "radii",
    "distances",
)


def _kind(name: str) -> str:
    """The transform kind of a parameter, from its name only (never from its value)."""
    if name == "orientation":
        return "orientation"
    if name in ("beta", "background"):
        return "nonneg"
    if name in ("wavelength", "distance", "pixel_size") or name in POSITIVE_FIELDS:
        return "positive"
    return "real"


def _get(obj, path):
    for p in path:
        obj = getattr(obj, p)
    return obj


class Parametrisation(eqx.Module):
    """The map from unconstrained O(1) parameters u to (shape, experiment, background).

    Build with `Parametrisation.create`; `initial_u()` gives u at the initial model; `build(u)` the model;
    `physical(u)` the free parameters' values in physical units. A pytree (templates and units are leaves), so
    several can be stacked for a vmapped multi-start.

    `active` ({name: bool array shaped like the parameter}) freezes entries of "positive"/"real" parameters at
    their reference value: an inactive entry's u is ignored (its gradient is zero), so L-BFGS never moves it.
    The mask is data (an array leaf), not structure: fits that free different entries (the spherical-harmonic
    ladder's degrees) share one compiled step.
    """

    shape: ds.AbstractShape
    experiment: ds.Experiment
    background: Float[Array, ""]
    ref: dict[str, Array]
    unit: dict[str, Array]
    active: dict[str, Array]
    names: tuple[str, ...] = eqx.field(static=True)
    kinds: tuple[str, ...] = eqx.field(static=True)

    @classmethod
    def create(
        cls,
        shape: ds.AbstractShape,
        experiment: ds.Experiment,
        free: Sequence[str] | None = None,
        background=0.0,
        data_level: float = 1.0,
        active: dict[str, object] | None = None,
    ) -> Parametrisation:
        """Choose the free parameters by name (`free=None`: `default_free(shape)`).

        `data_level`: a typical count per pixel, the unit of a fitted background. `active`: optional
        {name: boolean array shaped like the parameter}, False freezes that entry at its initial value (only
        for sizes and real-valued leaves, e.g. spherical-harmonic coefficients). Unknown names raise
        `ValueError` listing the valid ones.
        """
        if not isinstance(shape, ds.AbstractShape):
            raise TypeError(f"model must be a diffscat shape, got {type(shape).__name__}")
        if not isinstance(experiment, ds.Experiment):
            raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
        valid = valid_parameter_names(shape, experiment)
        if free is None:
            free = default_free(shape)
        if isinstance(free, str):
            free = (free,)
        free = tuple(free)
        bad = [n for n in free if n not in valid]
        if bad:
            raise ValueError(f"unknown parameter name(s) {bad} in free; valid names: {list(valid)}")
        if len(set(free)) != len(free):
            raise ValueError(f"free lists a parameter twice: {list(free)}")
        if not free:
            raise ValueError(f"free must name at least one parameter; valid names: {list(valid)}")
        dt = shape.dtype
        bg = jnp.asarray(background, dt)
        if bg.shape != () or not np.isfinite(float(bg)) or float(bg) < 0:
            raise ValueError(f"background must be a finite number >= 0 (counts per pixel), got {background}")
        sf, ef = _shape_fields(shape), _experiment_fields(experiment)
        R = float(np.asarray(shape.bounding_radius()))
        active = {} if active is None else dict(active)
        bad_act = [n for n in active if n not in free]
        if bad_act:
            raise ValueError(f"active names parameters that are not free: {bad_act}; free: {list(free)}")
        ref, unit, kinds, act = {}, {}, [], {}
        for n in free:
            if n in sf:
                v = jnp.asarray(getattr(shape, sf[n]))
            elif n in ef:
                v = jnp.asarray(_get(experiment, ef[n]))
            else:
                v = bg
            k = _kind(n)
            kinds.append(k)
            if n in active:
                a = np.asarray(active[n])
                if a.dtype != bool or a.shape != v.shape:
                    raise ValueError(
                        f"active[{n!r}] must be a boolean array of shape {v.shape}, got {a.dtype} {a.shape}"
                    )
                if k not in ("positive", "real") and not a.all():
                    raise ValueError(f"active can freeze entries of sizes and real leaves only, not {n!r}")
            else:
                a = np.ones((3,) if k == "orientation" else v.shape, bool)
            act[n] = jnp.asarray(a)
            vn = np.asarray(v, dtype=float)
            if k == "positive":
                u_ = vn
            elif k == "nonneg":
                if n == "beta":
                    d = float(abs(np.asarray(getattr(shape, "delta", 0.0))))
                    u_ = np.full(vn.shape, max(float(vn.max(initial=0.0)), 0.1 * d, 1e-4))
                else:
                    u_ = np.full(vn.shape, max(float(vn.max(initial=0.0)), 1e-3 * data_level, 1e-12))
            elif k == "orientation":
                u_ = np.ones(())
            elif n == "delta":
                b = float(np.asarray(getattr(shape, "beta", 0.0)))
                u_ = np.full(vn.shape, max(abs(float(vn)), b, 1e-3))
            elif n == "centre":
                u_ = np.full(vn.shape, 0.1 * R)
            elif n == "beam_center":
                u_ = np.ones(vn.shape)
            else:
                m = float(np.max(np.abs(vn), initial=0.0))
                u_ = np.full(vn.shape, 0.1 * m if m > 0 else 0.1 * R)
            ref[n] = v.astype(dt)
            unit[n] = jnp.asarray(u_, dt)
        return cls(shape, experiment, bg, ref, unit, act, free, tuple(kinds))

    def initial_u(self) -> dict[str, Array]:
        """Unconstrained parameters of the initial model."""
        out = {}
        for n, k in zip(self.names, self.kinds, strict=True):
            r, un = self.ref[n], self.unit[n]
            if k == "nonneg":
                out[n] = _softplus_inv(jnp.maximum(r, 1e-3 * un) / un).astype(r.dtype)
            elif k == "orientation":
                out[n] = jnp.zeros(3, r.dtype)
            else:
                out[n] = jnp.zeros(r.shape, r.dtype)
        return out

    def physical(self, u: dict[str, Array]) -> dict[str, Array]:
        """Free parameters in physical units (orientation: the 3x3 rotation matrix)."""
        out = {}
        for n, k in zip(self.names, self.kinds, strict=True):
            r, un, x = self.ref[n], self.unit[n], u[n]
            if k in ("positive", "real"):
                x = jnp.where(self.active[n], x, jnp.zeros_like(x))  # inactive entries: the reference value
            if k == "positive":
                out[n] = r * jnp.exp(STEP * x)
            elif k == "nonneg":
                out[n] = un * jax.nn.softplus(x)
            elif k == "orientation":
                q = jnp.concatenate([jnp.ones((1,), x.dtype), STEP * x])
                out[n] = mm(r, ds.rotation_from_quaternion(q / jnp.linalg.norm(q), normalise=True))
            else:
                out[n] = r + un * x
        return out

    def build(self, u: dict[str, Array]) -> tuple[ds.AbstractShape, ds.Experiment, Array]:
        """(shape, experiment, background) at unconstrained parameters u."""
        vals = self.physical(u)
        shape, exp, bg = self.shape, self.experiment, self.background
        sf, ef = _shape_fields(shape), _experiment_fields(exp)
        for n, v in vals.items():
            if n in sf:
                shape = eqx.tree_at(lambda s, a=sf[n]: getattr(s, a), shape, v)
            elif n in ef:
                exp = eqx.tree_at(lambda e, p=ef[n]: _get(e, p), exp, v)
            else:
                bg = v
        return shape, exp, bg


def stack_parametrisations(ps: Sequence[Parametrisation]) -> Parametrisation:
    """Stack parametrisations with the same free parameters into one batched pytree (for `jax.vmap`)."""
    ps = list(ps)
    names = {p.names for p in ps}
    if len(names) != 1:
        raise ValueError(f"all starts must free the same parameters, got {names}")
    # The fit passes its own voxel grid, so the shapes' static grid-size hints are dropped: starts of any size
    # then share one pytree structure, and one compilation serves every fit with the same settings.
    rest = [eqx.tree_at(lambda p: p.shape, p, _with_hint(p.shape, None)) for p in ps]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *rest)


def _with_hint(shape, hint):
    import copy

    new = copy.copy(shape)
    object.__setattr__(new, "extent_hint", hint)
    return new
