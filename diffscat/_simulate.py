"""`simulate`: shape + experiment -> far field Psi or dsigma/dOmega at every pixel (eq. 9)."""

from __future__ import annotations

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from ._custom_types import complex_dtype, is_concrete
from ._experiment import Experiment
from ._grid import VoxelGrid, default_pitch, nyquist_pitch
from ._preflight import check_memory
from .engines import (
    INTERP_TAPS,
    compressed_far_field,
    direct_far_field,
    interpolated_far_field,
    separable_far_field,
    slice_sources,
    uniform_grid_spec,
)
from .shapes import AbstractShape, VolumeMap
from .shapes._base import with_extent_hint

__all__ = ["simulate", "far_field", "default_grid", "check_sampling", "ValidityWarning"]

TRANSFORMS = ("auto", "separable", "direct", "fast")

# Margin on the static qz interval of the slice compression (covers small drifts of a fitted wavelength or
# detector geometry); leaving it raises a run-time error that names transform="separable"/"direct".
_QZ_MARGIN = 1.05


def _static_qz_range(experiment: Experiment) -> tuple[float, float] | None:
    """A static interval [0, hi] (inverse length) holding qz = k0 (1 - cos theta) of every valid pixel, from
    the experiment's concrete sampling hint; None when the geometry was traced at construction."""
    if experiment.sampling_hint is None:
        return None
    lam, tmax = experiment.sampling_hint
    th = experiment.detector.theta_bound(tmax, _QZ_MARGIN)  # grids: their corners reach beyond tmax
    omc = 2.0 * math.sin(th / 2.0) ** 2
    return 0.0, 2 * math.pi / lam * omc * _QZ_MARGIN


class ValidityWarning(UserWarning):
    """Inputs outside the range where the MSFT is quantitative, or a voxel pitch too coarse."""


def _concrete_call(*trees) -> bool:
    """True when no array leaf of `trees` is traced (not under jit / vmap / grad)."""
    return all(is_concrete(x) for x in jax.tree.leaves(eqx.filter(trees, eqx.is_array)))


def _concrete_float(x) -> float | None:
    return float(np.asarray(x)) if is_concrete(x) else None


def default_grid(shape: AbstractShape, experiment: Experiment, pitch=None) -> VoxelGrid:
    """The voxel grid `simulate` uses when none is given.

    A `VolumeMap` keeps its own grid. Other shapes get an isotropic grid of `pitch` (default
    `default_pitch(lambda, theta_max)`, lambda/4 at 30 deg) around a ball of the shape's static
    `extent_hint` (its bounding radius on a 9 % ladder) plus two voxels of margin for the soft edge.
    Needs concrete geometry: under `jit`, the wavelength and flat-detector geometry must be static, or pass
    `grid=` yourself (e.g. computed once outside the jitted function).
    """
    if isinstance(shape, VolumeMap) and pitch is None:
        return shape.grid
    if pitch is None:
        if experiment.sampling_hint is None:
            raise ValueError(
                "the default voxel grid needs a concrete wavelength and detector geometry; pass "
                "grid=diffscat.default_grid(shape, experiment) computed outside jit/vmap/grad"
            )
        pitch = default_pitch(*experiment.sampling_hint)
    radius = shape.extent_hint
    if radius is None:
        r = shape.bounding_radius()
        if not is_concrete(r):
            raise ValueError(
                f"{type(shape).__name__} was built from traced values, so its size is unknown when the "
                "voxel grid must be fixed; pass grid=diffscat.default_grid(template_shape, experiment) "
                "(or diffscat.VoxelGrid(...)) explicitly"
            )
        radius = float(r)
    return VoxelGrid.around(radius, pitch, margin=2)


def check_sampling(grid: VoxelGrid, experiment: Experiment) -> None:
    """Warn (ValidityWarning) when the transverse pitch cannot reach the detector's largest angle."""
    if experiment.sampling_hint is None:
        return
    lam, tmax = experiment.sampling_hint
    limit = nyquist_pitch(lam, tmax)
    worst = max(grid.pitch[0], grid.pitch[1])
    if worst > limit * (1 + 1e-9):
        warnings.warn(
            f"voxel pitch {worst:.4g} is coarser than lambda/(2 sin theta_max) = {limit:.4g} for "
            f"theta_max = {math.degrees(tmax):.1f} deg: the pattern aliases. Set pitch <= {limit:.4g} "
            f"(accurate default: pitch={default_pitch(lam, tmax):.4g}, about lambda/4 at 30 deg).",
            ValidityWarning,
            stacklevel=3,
        )


# |n - 1| above which `simulate` warns, per method (docs/accuracy.md: the accuracy map vs Mie)
_VALID_DN = {"msft": 0.1, "born": 0.1, "propagating": 0.2}


def _check_validity(shape: AbstractShape, method: str = "msft") -> None:
    m = shape.max_abs_dn()
    if m is None or not is_concrete(m):
        return
    m = float(np.max(np.asarray(m)))
    limit = _VALID_DN.get(method, 0.1)
    if m <= limit:
        return
    if method == "propagating":
        msg = (
            f"|n - 1| = {m:.3g} > {limit}: beyond the range where method='propagating' was accurate vs Mie "
            "(docs/accuracy.md); the wide-angle slice step loses accuracy for large strongly refracting bodies"
        )
    else:
        msg = (
            f"|n - 1| = {m:.3g} > {limit}: eq. 9 (MSFT) is not quantitative there (paper Sec. 4); expect errors "
            "of tens of percent. method='propagating' (beam-propagation multislice) stays within a few "
            "percent to |delta| ~ 0.2 (docs/accuracy.md)"
        )
    warnings.warn(msg, ValidityWarning, stacklevel=3)


def _fast_nonseparable(U, grid, k0, pix, qz, qz_range, experiment, rdt):
    """Non-separable detectors: interpolation from an oversampled uniform q grid computed by the fast
    separable route (engines/_interp.py) when the detector stays below 64 deg, else the compressed direct sum."""
    lam, tmax = experiment.sampling_hint
    smax = math.sin(experiment.detector.theta_bound(tmax, _QZ_MARGIN))
    sx = jnp.where(pix.valid, pix.sx, 0).astype(rdt).reshape(-1)
    sy = jnp.where(pix.valid, pix.sy, 0).astype(rdt).reshape(-1)
    if smax < 0.9:
        k0s = 2 * math.pi / lam
        taps = INTERP_TAPS if jnp.dtype(rdt) != jnp.float64 else 2 * INTERP_TAPS
        n, ds = uniform_grid_spec(grid, k0s, smax, taps=taps)
        lim = ((n - 1) / 2 - taps / 2) * ds
        sx = eqx.error_if(
            sx,
            jnp.any((jnp.abs(sx) > lim) | (jnp.abs(sy) > lim)),
            "pixel directions left the static range of the interpolation grid (detector geometry moved "
            "more than 5 % from construction): use transform='direct'",
        )
        sc = min(1.0, math.sqrt(2.0) * (n - 1) / 2 * ds)
        hi = k0s * sc * sc / (1.0 + math.sqrt(1.0 - sc * sc)) * _QZ_MARGIN
        psi = interpolated_far_field(U, grid, k0, sx, sy, (n, ds), (0.0, hi), taps=taps)
    else:
        psi = compressed_far_field(U, grid, k0 * sx, k0 * sy, qz.reshape(-1), qz_range, layout="direct")
    return psi.reshape(qz.shape)


def far_field(
    shape: object,  # AbstractShape; `object` so the function's own check gives its one-line message
    experiment: object,  # Experiment (same)
    *,
    method: str = "msft",
    grid: object = None,  # VoxelGrid | None (same)
    pitch: float | None = None,
    transform: str = "auto",
    memory_budget: object = None,  # bytes, "8GiB", "75%", "off" or None: parsed with a message
) -> Complex[Array, "*image"]:
    """Complex scattering amplitude Psi at every pixel, image-shaped [iy, ix] (length units).

    |Psi|^2 = dsigma/dOmega. Conventions: docs/conventions.md; see `simulate` for the arguments.
    """
    if not isinstance(shape, AbstractShape):
        raise TypeError(f"shape must be a diffscat shape, got {type(shape).__name__}")
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if grid is None:
        grid = default_grid(shape, experiment, pitch)
    elif not isinstance(grid, VoxelGrid):
        raise TypeError(f"grid must be a diffscat.VoxelGrid, got {type(grid).__name__}")
    check_sampling(grid, experiment)
    _check_validity(shape, method)
    if _concrete_call(shape, experiment):  # a plain Python-level call: refuse a grid that cannot fit memory
        check_memory(
            grid.shape,
            math.prod(experiment.shape),
            itemsize=jnp.dtype(shape.dtype).itemsize,
            budget=memory_budget,
            what=f"simulate({type(shape).__name__})",
            knobs="a coarser pitch=, a smaller shape, an explicit smaller grid= or fewer detector pixels",
        )
        # A plain call runs as one compiled program, cached on (shape class, grid, detector, method): a loop
        # over sizes or other parameters on one fixed grid compiles once (run op by op, the engines'
        # lax.map / scan loops would compile anew on every call). The static size hint is dropped from the
        # cache key: it only chooses the default grid, which is fixed by now.
        return _far_field_jit(with_extent_hint(shape, None), experiment, method, grid, transform)
    return _far_field_impl(shape, experiment, method, grid, transform)


def _far_field_impl(shape, experiment, method, grid, transform):
    """The traced body of `far_field` (arguments validated, grid fixed)."""
    rdt = jnp.result_type(shape.dtype, experiment.wavelength.dtype)
    cdt = complex_dtype(rdt)
    k0 = experiment.k0.astype(rdt)
    dn = shape.render(grid).astype(cdt)
    U = slice_sources(dn, grid, k0, method)
    pix = experiment.pixels()
    qz = (k0 * pix.omc).astype(rdt)

    axes = experiment.detector.separable_axes()
    if transform == "separable" and axes is None:
        raise ValueError(f"transform='separable' needs a QGrid-like detector, got {experiment.detector}")
    qz_range = _static_qz_range(experiment) if transform in ("auto", "fast") else None
    if transform == "fast" and qz_range is None:
        raise ValueError(
            "transform='fast' needs an experiment built from concrete values (its qz range fixes the slice "
            "compression); use transform='separable' or 'direct'"
        )
    if qz_range is not None:
        lo, hi = qz_range
        qz = jnp.where(pix.valid, qz, jnp.asarray(0.5 * (lo + hi), rdt))
        qz = eqx.error_if(
            qz,
            jnp.any((qz < lo) | (qz > hi)),
            "qz left the static range of the slice compression (wavelength or detector geometry moved "
            "more than 5 % from construction): use transform='separable' or 'direct'",
        )
        if axes is not None:
            layout = experiment.detector.separable_layout()
            psi = compressed_far_field(
                U, grid, k0 * axes[0].astype(rdt), k0 * axes[1].astype(rdt), qz, qz_range, layout=layout
            )
        else:
            psi = _fast_nonseparable(U, grid, k0, pix, qz, qz_range, experiment, rdt)
    elif axes is not None and transform != "direct":
        psi = separable_far_field(U, grid, k0 * axes[0].astype(rdt), k0 * axes[1].astype(rdt), qz)
    else:
        qx = (k0 * pix.sx).astype(rdt).reshape(-1)
        qy = (k0 * pix.sy).astype(rdt).reshape(-1)
        psi = direct_far_field(U, grid, qx, qy, qz.reshape(-1)).reshape(qz.shape)

    # Undo the smoothing of the partial-volume renderer: divide by its kernel's Fourier transform at q.
    q = pix.q(k0).astype(rdt)
    transfer = shape.blur_transfer(grid, q)
    if transfer is not None:
        psi = psi / transfer.astype(cdt)
    return jnp.where(pix.valid, psi, 0)


_far_field_jit = eqx.filter_jit(_far_field_impl)


def simulate(
    shape: object,  # AbstractShape; `object` so the function's own check gives its one-line message
    experiment: object,  # Experiment (same)
    *,
    method: str = "msft",
    field: bool = False,
    grid: object = None,  # VoxelGrid | None (same)
    pitch: float | None = None,
    transform: str = "auto",
    memory_budget: object = None,  # bytes, "8GiB", "75%", "off" or None: parsed with a message
) -> Float[Array, "*image"] | Complex[Array, "*image"]:
    """Differential cross-section dsigma/dOmega [length^2 / sr] at every pixel, image-shaped [iy, ix].

    **Arguments:**
    - `shape`: any diffscat shape (Sphere, Ellipsoid, VolumeMap, ...). Its array leaves (sizes, delta, beta,
      rotation, centre, dn) are differentiable.
    - `experiment`: wavelength and detector.
    - `method`: "msft" (default; eq. 9: each slice driven by the incident field attenuated and phase-shifted by
      the slices before it), "born" (first Born approximation on the Ewald sphere, E_s = 1) or "propagating"
      (each slice driven by the total field carried through the slices before it by wide-angle beam
      propagation, so refraction and forward multiple scattering are included; for |n - 1| beyond ~0.02;
      engines/_propagate.py, docs/accuracy.md).
    - `field`: return the complex amplitude Psi (length units, |Psi|^2 = dsigma/dOmega) instead.
    - `grid`: the voxel grid (static). Default: `default_grid(shape, experiment, pitch)`.
    - `pitch`: voxel pitch for the default grid (length unit); default about lambda/4 at theta_max = 30 deg.
    - `transform`: "auto" (default: "fast" when the experiment was built from concrete values, else the exact
      slice sums), "fast" (slices compressed to Chebyshev planes in z, exact to the working precision, then a
      parity-folded separable DFT on QGrid detectors; other detectors below 64 deg interpolate that result
      from an oversampled uniform q grid, error ~1e-8 of max |Psi|; docs/performance.md),
      "separable" (per-slice separable DFT, QGrid only) or "direct" (per-slice sum at every pixel).
    - `memory_budget`: bytes (or "8GiB", "75%", "off") allowed for the estimated peak memory; default
      $DIFFSCAT_MEMORY_BUDGET, else 50 % of the available memory. A plain call (not under jit/vmap/grad)
      whose estimate exceeds it raises `diffscat.MemoryBudgetError` before any allocation (docs/errors.md).

    **Scans** (a loop over sizes or other shape parameters): the default grid follows the shape's size, so
    each new size compiles anew under jit. Pass one fixed grid for the whole scan, e.g.
    `grid = diffscat.default_grid(largest_shape, experiment)`, then `simulate(shape, experiment, grid=grid)`:
    one compilation for every size that fits in it.

    Parametric shapes render as partial-volume voxels (each voxel's filled fraction, smooth in the
    parameters); the Fourier transform of that voxel kernel is divided out of the far field, so the default is
    accurate to ~0.5 % vs Mie (docs/accuracy.md). Invalid pixels are 0.
    dtype: complex64 unless the shape or wavelength is float64 (x64 enabled). Matmuls use HIGHEST precision.
    """
    psi = far_field(
        shape,
        experiment,
        method=method,
        grid=grid,
        pitch=pitch,
        transform=transform,
        memory_budget=memory_budget,
    )
    if field:
        return psi
    return psi.real**2 + psi.imag**2
