"""`fit`: maximum-likelihood shape retrieval from one pattern with optax, one jit-compiled step.

The unknowns are the free leaves of (shape, experiment, background) (see `_params.py`) plus the scale
(fluence), which is profiled out of the loss. The voxel grid is fixed once from the initial model(s) with a
margin, so the step compiles once; starts are batched with `jax.vmap` (multi-start).

Compile once per geometry: everything that shapes the compiled step is kept coarse so that fits of other
patterns (and the stages of a ladder) reuse it. The default grid's half-width is rounded up on a geometric
ladder (`GRID_LADDER`, `ladder_grid`), the start batch is padded to a power of two (padding starts repeat
start 0 and are ignored in the result), parameter kinds depend on names only, and entries can be frozen by a
data mask (`active=`) instead of a smaller parameter vector.
"""

from __future__ import annotations

import functools
import math
import time
import types
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float

import diffscat as ds
from diffscat._custom_types import mm
from diffscat._preflight import check_memory
from diffscat.detectors import POLARISATIONS, pixel_weight

from ._lockstep import current_batcher
from ._losses import AbstractLoss, as_loss, check_data
from ._params import Parametrisation, stack_parametrisations
from ._result import Alternative, FitResult
from ._uncertainty import laplace_sigmas

__all__ = [
    "fit",
    "fit_batch",
    "expected_signal",
    "make_optimizer",
    "ladder_grid",
    "POLARISATIONS",
    "GRID_LADDER",
]

GRID_LADDER = 2.0**0.25  # ratio between consecutive default grid half-widths (4 rungs per doubling)
# default voxel-grid half-width of `fit`, in bounding radii of the largest start (room for it to grow)
GRID_MARGIN = 1.3

OPTIMIZERS = ("lbfgs", "lbfgs-zoom", "adam", "gn")


def expected_signal(
    shape: ds.AbstractShape,
    experiment: ds.Experiment,
    grid: ds.VoxelGrid,
    *,
    method: str = "msft",
    solid_angle: bool = True,
    polarisation: str = "none",
) -> Float[Array, "*image"]:
    """Expected signal per pixel up to the fluence: dsigma/dOmega [length^2/sr] times, when `solid_angle`,
    the pixel's solid angle [sr], times the polarisation factor (`diffscat.detectors.polarisation_factor`:
    "x", "y", "unpolarised" or "none"). Result in length^2 (photons per unit fluence, as
    `diffscat.detectors.expected_photons` with fluence 1), or length^2/sr without the solid angle."""
    polarisation = _check_polarisation(polarisation)
    img = ds.simulate(shape, experiment, grid=grid, method=method)
    if solid_angle or polarisation != "none":
        img = img * pixel_weight(experiment, polarisation, solid_angle=solid_angle).astype(img.dtype)
    return img


def _check_polarisation(polarisation):
    if polarisation is None:
        return "none"
    if polarisation not in POLARISATIONS:
        raise ValueError(f"polarisation must be one of {POLARISATIONS}, got {polarisation!r}")
    return polarisation


class _Static(eqx.Module):
    """Hashable settings of a fit (static under jit)."""

    loss: AbstractLoss  # a pytree: array fields (if any) are traced, Python numbers static
    method: str = eqx.field(static=True)
    solid_angle: bool = eqx.field(static=True)
    polarisation: str = eqx.field(static=True)
    grid: ds.VoxelGrid = eqx.field(static=True)
    regularizer: Callable | None = eqx.field(static=True)


def _nll(u, prob: Parametrisation, data, mask, st: _Static):
    """Negative log-likelihood (sum over pixels, scale profiled) plus the regulariser; aux: scale."""
    shape, exp, bg = prob.build(u)
    sig = expected_signal(
        shape, exp, st.grid, method=st.method, solid_angle=st.solid_angle, polarisation=st.polarisation
    )
    sig = sig.astype(data.dtype)
    bg = bg.astype(data.dtype)
    scale = st.loss.profile_scale(sig, data, mask, bg)
    val = st.loss.value(sig, data, mask, scale=scale, background=bg)
    if st.regularizer is not None:
        val = val + st.regularizer(shape)
    return val, scale


# Slack of the L-BFGS line search's sufficient-decrease test, relative to the loss (per used pixel, >= 0
# for the shipped losses): a trial step whose loss rose by less than this is accepted. Near an optimum the
# float32 loss sum is noise at this level, and without the slack every step there halved the step 6-12
# times (each halving a full value_and_grad) before `fit`'s stall test (`patience` steps below rtol) could
# stop it: a 64^2 ellipsoid fit took 85 loss evaluations for 17 steps, 37 with the slack, same optimum.
LINESEARCH_RTOL = 1e-6


# L-BFGS memory (curvature pairs kept) for a fit with n free parameters (`lbfgs_memory`): optax's default 10
# up to n = 10 (sphere, ellipsoid, polyhedra, optics), n + 5 beyond (the harmonic body), so that the pairs can
# span its whole parameter space. Session 32, 16 harmonic batch patterns (lmax 4: 25 coefficients, 64^2, the
# network-started refinement of `configs/batch-harmonics.toml`): memory 10 / 20 / 30 / 50 took 1614 / - / 1203
# / 1052 L-BFGS steps in all; 30 ended every pattern at memory 10's optimum or lower (one 2.3 NLL units lower),
# 50 stopped two 0.3-0.6 units higher; on 4 of them 20 took 439 steps against 30's 390, one 0.6 higher. Most
# of memory 10's extra steps were a slow tail (within 0.3 NLL units of the end after 42-83 steps, ended at
# 99-165). The memory costs O(memory x n) per step, nothing beside a forward model.
LBFGS_MEMORY_MIN = 10
LBFGS_MEMORY_EXTRA = 5


def lbfgs_memory(n_free: int) -> int:
    """L-BFGS memory for `n_free` free parameters (scalars): `LBFGS_MEMORY_MIN` up to that many parameters,
    else n_free + `LBFGS_MEMORY_EXTRA`."""
    if isinstance(n_free, bool) or not isinstance(n_free, int | np.integer) or n_free < 0:
        raise ValueError(f"n_free must be an int >= 0, got {n_free!r}")
    n = int(n_free)
    return LBFGS_MEMORY_MIN if n <= LBFGS_MEMORY_MIN else n + LBFGS_MEMORY_EXTRA


@functools.lru_cache(maxsize=32)
def make_optimizer(
    name: str = "lbfgs", learning_rate: float | None = None, max_steps: int = 200, memory_size: int = 10
):
    """An optax optimiser for O(1)-scaled parameters (cached, so equal settings reuse one compilation).

    "lbfgs" (default): optax.lbfgs with a backtracking (Armijo) line search, about half the compile time of
    "lbfgs-zoom" (optax's default zoom line search, strong Wolfe conditions); "adam": Adam with a 5 % warm-up and cosine decay
    from `learning_rate` (default 0.1). `memory_size`: L-BFGS curvature pairs kept (`fitting.fit` passes
    `lbfgs_memory` of its number of free parameters).
    """
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"memory_size must be an int >= 1, got {memory_size!r}")
    if name == "lbfgs":
        ls = optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=12, decrease_factor=0.5, store_grad=True, rtol=LINESEARCH_RTOL
        )
        return optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size, linesearch=ls)
    if name == "lbfgs-zoom":
        return optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size)
    if name == "adam":
        lr = 0.1 if learning_rate is None else float(learning_rate)
        sched = optax.warmup_cosine_decay_schedule(
            0.1 * lr, lr, max(1, max_steps // 20), max(2, max_steps), end_value=0.01 * lr
        )
        return optax.adam(sched)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def _tree_norm(t):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(t)))


@eqx.filter_jit
def _step(u, opt_state, prob, data, mask, norm, st: _Static, optimizer, is_lbfgs: bool):
    """One optimiser step for a batch of starts (leading axis on every argument but `st`, `optimizer`:
    each start carries its own pattern, so starts of several patterns run in one vmapped call).

    L-BFGS: the line search stored the value and gradient at the point it accepted, so they are taken from
    the state and recomputed only when some start lacks them (the first step; a search that ended on a
    non-finite value). The test is ONE predicate for the batch, so `lax.cond` runs one branch; optax's
    `value_and_grad_from_state` tests per start, which under `vmap` turns the cond into a select that
    evaluates both branches: a full value_and_grad every step, half the cost of a typical step."""

    def f(v, prob, data, mask, norm):
        return _nll(v, prob, data, mask, st)[0] / norm

    value_and_grad = jax.vmap(jax.value_and_grad(f))
    if is_lbfgs:
        stored = (optax.tree_utils.tree_get(opt_state, "value"), optax.tree_utils.tree_get(opt_state, "grad"))
        value, grad = jax.lax.cond(
            jnp.all(jnp.isfinite(stored[0])),
            lambda: stored,
            lambda: jax.tree.map(
                lambda x, s: x.astype(s.dtype), value_and_grad(u, prob, data, mask, norm), stored
            ),
        )
    else:
        value, grad = value_and_grad(u, prob, data, mask, norm)

    def one(u, opt_state, prob, data, mask, norm, value, grad):
        if is_lbfgs:
            fn = lambda v: f(v, prob, data, mask, norm)  # noqa: E731
            updates, opt_state = optimizer.update(grad, opt_state, u, value=value, grad=grad, value_fn=fn)
        else:
            updates, opt_state = optimizer.update(grad, opt_state, u)
        return optax.apply_updates(u, updates), opt_state, value, _tree_norm(grad)

    return jax.vmap(one)(u, opt_state, prob, data, mask, norm, value, grad)


@eqx.filter_jit
def _gn_step(u, lam, prob, data, mask, norm, st: _Static):
    """One Levenberg-Marquardt step (Fisher scoring) for a batch of starts; `lam` (batch,) the damping;
    `data`, `mask`, `norm` per start (leading axis), as for `_step`.

    Direction: (F + lam diag(F) + eps I) d = -g, with g the gradient of the profiled NLL (autodiff) and F the
    expected Fisher information of (u, log scale) with the log scale profiled out (Schur complement),
    J^T diag(`st.loss.fisher_weight`) J from n forward-mode passes, plus the regulariser's Hessian. The
    trial point is evaluated inside the step: accepted (lam / 3) if it lowers the NLL, else kept (lam * 4).
    Returns (u_next, (lam_next, value at u_next), value at u, |g|), values divided by `norm`."""

    def one(u, lam, prob, data, mask, norm):
        x0, unravel = ravel_pytree(u)
        f = lambda x: _nll(unravel(x), prob, data, mask, st)
        (val, scale), g = jax.value_and_grad(f, has_aux=True)(x0)
        t = jnp.log(scale)
        z0 = jnp.concatenate([x0, t[None]])
        mu_fn = lambda z: _counts(unravel(z[:-1]), z[-1], prob, st)[0]
        mu = mu_fn(z0)
        J = jax.jacfwd(mu_fn)(z0).reshape(-1, z0.shape[0])
        w = st.loss.fisher_weight(mu, data, mask).reshape(-1).astype(J.dtype)
        F = mm((J * w[:, None]).T, J)
        A = F[:-1, :-1] - jnp.outer(F[:-1, -1], F[-1, :-1]) / jnp.maximum(F[-1, -1], 1e-30)
        if st.regularizer is not None:
            A = A + jax.hessian(lambda x: st.regularizer(prob.build(unravel(x))[0]))(x0)
        dA = jnp.maximum(jnp.diag(A), 0.0)
        eps = 1e-9 * jnp.maximum(jnp.max(dA), 1e-30)
        step = -jnp.linalg.solve(A + jnp.diag(lam * dA + eps), g)
        step = jnp.where(jnp.isfinite(step), step, 0.0)
        x1 = x0 + step
        val1 = f(x1)[0]
        ok = jnp.isfinite(val1) & (val1 < val)
        x_next = jnp.where(ok, x1, x0)
        lam_next = jnp.clip(jnp.where(ok, lam / 3.0, lam * 4.0), 1e-7, 1e7)
        v_next = jnp.where(ok, val1, val)
        return unravel(x_next), (lam_next, v_next / norm), val / norm, jnp.sqrt(jnp.sum(g**2)) / norm

    return jax.vmap(one)(u, lam, prob, data, mask, norm)


@eqx.filter_jit
def _init_state(u, optimizer):
    state = jax.vmap(optimizer.init)(u)
    # strong dtypes, as the step returns them (a weak-typed leaf would recompile the step once)
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x, state)


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _counts(u, t, prob: Parametrisation, st: _Static):
    """Expected counts mu = exp(t) * signal + background at unconstrained u and log-scale t."""
    shape, exp, bg = prob.build(u)
    sig = expected_signal(
        shape, exp, st.grid, method=st.method, solid_angle=st.solid_angle, polarisation=st.polarisation
    )
    return jnp.exp(t) * sig + bg, sig, bg


# Columns of the Fisher Jacobian computed together (`_jacobian_blocked`). `jax.jacfwd` pushes all n + 1 tangents
# through the forward model at once: for a harmonic body (lmax 4, ~30 parameters, 58^3 voxels at 64^2) that
# held ~660 MB more than the fit itself. Session 27: most of what remained was not the tangents but XLA's
# loop-invariant code motion: the primal (the forward model at z0) does not depend on the loop's tangent, so XLA
# hoisted it out of the `lax.map` and kept every intermediate the tangents need alive at once. For an
# octahedron at 64^2 (95^3 voxels) that was 27 buffers f32[95, 95, 95, 8] (the renderer's sub-voxel samples x
# facets): 754 MiB of temporaries (XLA's memory analysis of `_finalize`), the peak of a polyhedron batch-fit.
# An `optimization_barrier` on (z0, tangent) in the loop body ties the primal to the iteration, so each
# iteration recomputes it fused with its tangent: 76 MiB, for the octahedron and for a harmonic body (lmax 4,
# 27 parameters; 256 MiB before). Cost (compiled `_finalize`, CPU): octahedron 2.35 -> 2.63 s, harmonic body
# 2.0 -> 2.7 s. Block 1 because several tangents in one iteration (vmapped) share one primal, whose
# intermediates are then materialised again (block 2: 504 MiB for the octahedron). Unrolling all n JVPs in one
# program was faster for the octahedron (1.56 s, 109 MiB) but held 900 MiB for the harmonic body.
FISHER_BLOCK = 1


def _jacobian_blocked(f, z0, block: int = FISHER_BLOCK):
    """d f / d z at z0 as an (m, n) array, for f: (n,) -> (m,): forward mode, `block` tangents at a time
    (`lax.map` over blocks of the identity, each a vmapped JVP), so the transient memory is that of `block`
    tangents, not n. The primal is recomputed in every block (an optimisation barrier keeps XLA from
    hoisting it out of the loop, which would keep all its intermediates alive; see `FISHER_BLOCK`)."""
    n = z0.shape[0]
    b = max(1, min(int(block), n))
    nb = -(-n // b)
    basis = jnp.eye(nb * b, n, dtype=z0.dtype).reshape(nb, b, n)  # rows past n are zero (discarded)

    def columns(E):
        z, E = jax.lax.optimization_barrier((z0, E))
        if b == 1:  # no vmap: a batch of one does not fuse the primal into the tangent either
            return jax.jvp(f, (z,), (E[0],))[1][None]
        return jax.vmap(lambda e: jax.jvp(f, (z,), (e,))[1])(E)

    cols = jax.lax.map(columns, basis)
    return cols.reshape(nb * b, -1)[:n].T


@eqx.filter_jit
def _finalize(u, prob, live, data, mask, st: _Static, with_fisher: bool):
    """For a batch of starts: every start's NLL and scale; for the best one its expected signal, background
    and (optionally) the Fisher information of (u, log scale). One compilation.

    Fisher information (expected curvature of the NLL), J^T diag(w) J with J = d mu / d(u, log s) over used
    pixels, w = `st.loss.fisher_weight` (Poisson 1 / mu; Anscombe 1 / (mu + 3/8), its Gauss-Newton curvature;
    log intensity 1 / ((mu + floor)^2 var), var the fitted residual variance). Forward-mode only (n + 1 JVPs,
    `FISHER_BLOCK` at a time).
    """
    nll, scales = jax.vmap(lambda v, p: _nll(v, p, data, mask, st))(u, prob)
    ib = jnp.argmin(jnp.where(jnp.isfinite(nll) & live, nll, jnp.inf))
    u_b, p_b = _take(u, ib), _take(prob, ib)
    t = jnp.log(scales[ib])
    mu, sig, bg = _counts(u_b, t, p_b, st)
    F = None
    if with_fisher:
        x0, unravel = ravel_pytree(u_b)
        z0 = jnp.concatenate([x0, t[None]])
        J = _jacobian_blocked(
            lambda z: _counts(unravel(z[:-1]), z[-1], p_b, st)[0].reshape(-1), z0, block=FISHER_BLOCK
        )
        w = st.loss.fisher_weight(mu, data, mask).reshape(-1).astype(J.dtype)
        F = mm((J * w[:, None]).T, J)
        if st.regularizer is not None:
            Hr = jax.hessian(lambda x: st.regularizer(p_b.build(unravel(x))[0]))(x0)
            F = F.at[:-1, :-1].add(Hr)
    return nll, scales, ib, sig, bg, F


def ladder_grid(radius: float, pitch: float, margin: int = 2) -> ds.VoxelGrid:
    """`VoxelGrid.around` a ball of `radius` (length units, > 0) rounded UP to the next rung
    pitch * GRID_LADDER^k (k integer): patterns of similar size get the same grid (and so share compiled
    steps), at most ~19 % wider than needed. `pitch`: isotropic voxel pitch (length units); `margin`: voxels."""
    radius, pitch = float(radius), float(pitch)
    if not (radius > 0 and pitch > 0 and np.isfinite(radius) and np.isfinite(pitch)):
        raise ValueError(f"radius and pitch must be finite and > 0, got radius={radius}, pitch={pitch}")
    k = math.ceil(math.log(radius / pitch) / math.log(GRID_LADDER) - 1e-9)
    return ds.VoxelGrid.around(pitch * GRID_LADDER**k, pitch, margin=margin)


def _fit_grid(models, experiment, pitch, margin):
    if pitch is None:
        if experiment.sampling_hint is None:
            raise ValueError("pass pitch= (the experiment has traced geometry)")
        pitch = ds.default_pitch(*experiment.sampling_hint)
    r = max(float(np.asarray(m.bounding_radius())) for m in models)
    return ladder_grid(margin * r, pitch)


def _batch_size(n: int) -> int:
    """Padded number of starts: the next power of two (1, 2, 4, 8, ...), so few batch sizes get compiled."""
    return 1 << max(0, int(n) - 1).bit_length()


def fit(
    data: ArrayLike,  # real, image-shaped: checked by `check_data` with a message naming `data`
    experiment: object,  # ds.Experiment: checked below with a message naming `experiment`
    model: object,  # AbstractShape | Sequence[AbstractShape]: checked below with a message naming `model`
    mask: ArrayLike | None = None,
    free: Sequence[str] | None = None,
    loss: str | AbstractLoss = "poisson",
    *,
    background: float = 0.0,
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    max_steps: int = 200,
    rtol: float = 1e-7,
    gtol: float = 1e-6,
    patience: int = 5,
    method: str = "msft",
    solid_angle: bool = True,
    polarisation: str = "none",
    floor: float | None = None,
    pitch: float | None = None,
    grid: object = None,  # ds.VoxelGrid | None: checked below
    grid_margin: float = GRID_MARGIN,
    regularizer: Callable[[ds.AbstractShape], Array] | None = None,
    uncertainties: bool = True,
    alternatives_tol: float = 5.0,
    progress: bool | int = False,
    memory_budget: object = None,  # bytes, "8GiB", "75%", "off" or None: parsed with a message
    active: dict[str, ArrayLike] | None = None,
    init: object = None,  # None | "network" | NetworkPredictor | path: checked by `fitting.resolve_network`
) -> FitResult:
    """Fit `model` (a shape, or a list of starting shapes of one class for a vmapped multi-start) to `data`.

    **Arguments:**
    - `data`: measured pattern, image-shaped like `experiment.shape`, photon counts (>= 0; NaN refused).
    - `experiment`: wavelength and detector; its leaves named in `free` are fitted too.
    - `model`: initial shape(s); the result's `.model` has the same type.
    - `mask`: boolean, True = use the pixel (beamstop, gaps: False). Default all pixels.
    - `free`: parameter names (`fitting.valid_parameter_names`); default `fitting.default_free(model)`.
    - `loss`: a name in `fitting.LOSSES` ("poisson" for counts, "anscombe", "log") or an instance of any
      `fitting.AbstractLoss` subclass (e.g. `fitting.LogIntensity(floor=10.0)`, or your own).
    - `floor`: shorthand for `loss="log"`'s floor (data units; same as `loss=fitting.LogIntensity(floor)`).
    - `background`: flat background, counts per pixel; fixed unless "background" is in `free`.
    - `optimizer`: "lbfgs" (default, backtracking line search), "lbfgs-zoom", "adam" or "gn"
      (Levenberg-Marquardt on the expected Fisher information, n + 1 forward passes per step: for few
      parameters); `learning_rate` (Adam, default 0.1; L-BFGS: line search; "gn": initial damping 1e-3).
    - `max_steps`, `rtol`, `gtol`, `patience`: stop after `max_steps`, or when for `patience` steps in a row
      no step lowered the best loss by more than `rtol` (relative), or the gradient norm (in O(1) units) is
      below `gtol`.
    - `method`, `solid_angle`, `polarisation`: the forward model (see `expected_signal`).
    - `pitch`/`grid`/`grid_margin`: the fixed voxel grid; default `ladder_grid(grid_margin * largest
      initial bounding radius, default pitch)` (the radius rounded up on a coarse ladder, so patterns of
      similar size reuse one compilation). Pass the same `grid` to every stage of a ladder.
    - `active`: {parameter name: boolean array shaped like it}; False entries stay at their initial value
      (held as data: changing the mask does not recompile; e.g. the harmonic ladder's degrees).
    - `regularizer`: function of the shape adding to the negative log-likelihood (e.g. `fitting.sh_smoothness`).
    - `uncertainties`: compute Laplace sigmas at the optimum (a Hessian: one extra pass per free parameter).
    - `alternatives_tol`: starts whose final NLL is within this of the best (and whose parameters differ)
      are reported as `result.alternatives` (e.g. the twin/mirror solution).
    - `progress`: print a line to stderr after the first (compiling) step and every 10 steps (or every
      `progress` steps when an int > 0): step, loss per pixel of the best start, elapsed seconds. Default off.
    - `memory_budget`: bytes (or "8GiB", "off") for the estimated peak memory of the fit; default
      $DIFFSCAT_MEMORY_BUDGET, else 50 % of the available memory (docs/errors.md).
    - `init`: None (start from `model`), or a network (`fitting.NetworkPredictor`, a model file written by
      `diffscat train`, or "network" / "default" for the shipped model): the starts are then
      `fitting.network_starts` for `model`'s class (its predicted size, axes, orientation and twins, with
      `model`'s delta and beta); `model` gives the class and optical constants only. Classes the network
      knows: `fitting.START_CLASSES`.

    Refused before any work (`ValueError`): data 0 in every used pixel, no used pixel, NaN/inf or negative
    counts in used pixels; a plan over the memory budget raises `diffscat.MemoryBudgetError`. Non-integer
    data with a counting loss (Poisson, Anscombe) give a `fitting.DataWarning`. `converged` is False when
    the optimiser never moved the parameters from the start nor lowered the loss.

    Returns a `FitResult`. Raises `ValueError`/`TypeError` naming the argument for bad input.
    """
    t_start = time.perf_counter()
    models, loss, polarisation = _check_arguments(
        model, experiment, loss, floor, optimizer, polarisation, max_steps
    )
    d, m = check_data(
        data, mask, tuple(experiment.shape), nonnegative=loss.nonnegative, counts=loss.nonnegative
    )
    if init is not None:
        models = _network_models(init, d, experiment, m, models[0])
    options = dict(
        free=free, background=background, optimizer=optimizer, learning_rate=learning_rate,
        max_steps=max_steps, rtol=rtol, gtol=gtol, patience=patience, method=method, solid_angle=solid_angle,
        regularizer=regularizer, uncertainties=uncertainties, alternatives_tol=alternatives_tol, active=active,
    )  # fmt: skip
    batcher = current_batcher()
    if batcher is not None:
        # inside `fitting.lockstep_map`: this fit joins the other patterns' compatible fits (one vmapped call)
        return batcher.submit(
            d, m, experiment, models, loss, polarisation,
            grid=_grid_for(grid, models, experiment, pitch, grid_margin),
            memory_budget=memory_budget, progress=progress, options=options,
        )  # fmt: skip
    return _run(
        [d], [m], experiment, [models], loss, polarisation, t_start,
        grid=grid, pitch=pitch, grid_margin=grid_margin, memory_budget=memory_budget, progress=progress,
        what=f"fit of {len(models)} start(s)",
        knobs="a coarser pitch=, a smaller grid= or grid_margin, fewer starts or fewer detector pixels",
        **options,
    )[0]  # fmt: skip


def fit_batch(
    data: ArrayLike,  # (N, *image): checked pattern by pattern by `check_data`, messages name `data`
    experiment: object,  # ds.Experiment, shared by every pattern
    model: object,  # a shape, N shapes, or N lists of K shapes: checked below
    mask: ArrayLike | None = None,
    free: Sequence[str] | None = None,
    loss: str | AbstractLoss = "poisson",
    *,
    background: float = 0.0,
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    max_steps: int = 200,
    rtol: float = 1e-7,
    gtol: float = 1e-6,
    patience: int = 5,
    method: str = "msft",
    solid_angle: bool = True,
    polarisation: str = "none",
    floor: float | None = None,
    pitch: float | None = None,
    grid: object = None,
    grid_margin: float = GRID_MARGIN,
    regularizer: Callable[[ds.AbstractShape], Array] | None = None,
    uncertainties: bool = True,
    alternatives_tol: float = 5.0,
    progress: bool | int = False,
    memory_budget: object = None,
    active: dict[str, ArrayLike] | None = None,
) -> list[FitResult]:
    """`fit` of N patterns of one experiment in one vmapped optimisation: every (pattern, start) pair is a
    start of the same compiled step (`fit`'s), each with its own data, so a chunk of a dataset costs one
    compiled program and its batch axis is what a GPU parallelises.

    **Arguments** (as `fit`, except):
    - `data`: (N, *image) photon counts, one pattern per row, all on `experiment`'s detector.
    - `mask`: None, one image-shaped mask for every pattern, or (N, *image).
    - `model`: one shape (the start of every pattern), a list of N shapes (one start each), or a list of N
      lists of K shapes (K starts each, the same K for every pattern; one class throughout).
    - `grid`: one voxel grid for every pattern; default `ladder_grid` around the largest start.

    Every pattern runs until its own starts stop (`rtol`, `patience`, `gtol`) or `max_steps`; the call
    returns when every pattern has stopped. Each result is what `fit` returns for that pattern (its
    `converged` flag, best start, alternatives, uncertainties); `time_s` is the call's wall time divided
    by N and `compile_s` the first step's time. Different N compile anew (pad the batch, as
    `fitting.batch_fit` does, to reuse one program).
    """
    t_start = time.perf_counter()
    if not isinstance(experiment, ds.Experiment):
        raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
    img = tuple(experiment.shape)
    arr = np.asarray(data)
    if arr.ndim != len(img) + 1 or tuple(arr.shape[1:]) != img or arr.shape[0] < 1:
        raise ValueError(f"data must have shape (N, *{img}) with N >= 1, got {arr.shape}")
    n = arr.shape[0]
    per = _starts_per_pattern(model, n)
    models, loss, polarisation = _check_arguments(
        [s for ss in per for s in ss], experiment, loss, floor, optimizer, polarisation, max_steps
    )
    if mask is None or np.ndim(mask) == len(img):
        masks = [mask] * n
    elif np.shape(mask) == arr.shape:
        masks = list(np.asarray(mask))
    else:
        raise ValueError(f"mask must be None, {img}- or {arr.shape}-shaped, got {np.shape(mask)}")
    ds_, ms_ = [], []
    for i in range(n):
        d, m = check_data(arr[i], masks[i], img, nonnegative=loss.nonnegative, counts=loss.nonnegative)
        ds_.append(d)
        ms_.append(m)
    results = _run(
        ds_, ms_, experiment, per, loss, polarisation, t_start,
        grid=grid, pitch=pitch, grid_margin=grid_margin, memory_budget=memory_budget, progress=progress,
        what=f"fit of {n} pattern(s) x {len(per[0])} start(s)",
        knobs="fewer patterns per call, a coarser pitch=, a smaller grid= or fewer starts",
        free=free, background=background, optimizer=optimizer, learning_rate=learning_rate,
        max_steps=max_steps, rtol=rtol, gtol=gtol, patience=patience, method=method, solid_angle=solid_angle,
        regularizer=regularizer, uncertainties=uncertainties, alternatives_tol=alternatives_tol, active=active,
    )  # fmt: skip
    for r in results:
        r.time_s = (time.perf_counter() - t_start) / n
    return results


def _network_models(init, data, experiment, mask, like: ds.AbstractShape) -> list:
    """`fit(init=network)`: the network's starts for `like`'s class, with `like`'s optical constants."""
    from ._netinit import NO_HARMONICS, START_CLASSES, has_harmonics, network_starts

    name = type(like).__name__
    if name not in START_CLASSES:
        raise ValueError(f"init: the network has no starts for {name}; its classes are {START_CLASSES}")
    lmax = None
    if name == "SphericalHarmonics":  # the starts at the model's degree
        if not has_harmonics(init):
            raise ValueError(f"init: {NO_HARMONICS}: no SphericalHarmonics starts")
        lmax = like.lmax
    delta, beta = float(np.asarray(like.delta)), float(np.asarray(like.beta))
    return network_starts(init, data, experiment, mask, delta=delta, beta=beta, classes=[name], lmax=lmax)[
        name
    ]


def _run(ds_, ms_, experiment, per, loss, polarisation, t_start, *, grid, pitch, grid_margin, memory_budget,
         progress, what, knobs, **options) -> list[FitResult]:  # fmt: skip
    """`fit` / `fit_batch` after their argument checks: the voxel grid, the memory check (`what`, `knobs`
    name the fit in its message), the settings (`options`: `fit`'s remaining keywords), the shared core."""
    models = [s for ss in per for s in ss]
    grid = _grid_for(grid, models, experiment, pitch, grid_margin)
    check_memory(
        grid.shape,
        int(np.prod(experiment.shape)),
        batch=_pattern_batch(len(per)) * _batch_size(max(len(p) for p in per)),
        itemsize=np.dtype(models[0].dtype).itemsize,
        grad=True,
        budget=memory_budget,
        what=what,
        knobs=knobs,
    )
    o = options
    settings = _Settings(
        free=o["free"],
        loss=loss,
        background=o["background"],
        optimizer=o["optimizer"],
        learning_rate=o["learning_rate"],
        max_steps=int(o["max_steps"]),
        rtol=float(o["rtol"]),
        gtol=float(o["gtol"]),
        patience=int(o["patience"]),
        method=o["method"],
        solid_angle=bool(o["solid_angle"]),
        polarisation=polarisation,
        grid=grid,
        regularizer=o["regularizer"],
        uncertainties=bool(o["uncertainties"]),
        alternatives_tol=float(o["alternatives_tol"]),
        every=_progress_every(progress),
        active=o["active"],
    )
    return _fit_patterns(ds_, ms_, experiment, per, settings, t_start)


def _starts_per_pattern(model, n: int) -> list[list]:
    """`fit_batch`'s `model` as N lists of K starts (errors name `model`)."""
    if isinstance(model, ds.AbstractShape):
        return [[model] for _ in range(n)]
    if not isinstance(model, list | tuple) or len(model) != n:
        raise ValueError(f"model must be a shape or a list of {n} shapes / lists of starts (one per pattern)")
    per = [list(x) if isinstance(x, list | tuple) else [x] for x in model]
    if len({len(p) for p in per}) != 1 or not per[0]:
        raise ValueError("model: every pattern needs the same (non-zero) number of starts")
    return per


def _grid_for(grid, models, experiment, pitch, margin) -> ds.VoxelGrid:
    if grid is None:
        return _fit_grid(models, experiment, pitch, margin)
    if not isinstance(grid, ds.VoxelGrid):
        raise TypeError(f"grid must be a diffscat.VoxelGrid, got {type(grid).__name__}")
    return grid


class _Settings(types.SimpleNamespace):
    """`fit`'s settings after the argument checks, by keyword (free, loss, background, optimizer,
    learning_rate, max_steps, rtol, gtol, patience, method, solid_angle, polarisation, grid, regularizer,
    uncertainties, alternatives_tol, every (progress lines), active): one object for the shared core."""


def _fit_patterns(ds_, ms_, experiment, per, cfg: _Settings, t_start) -> list[FitResult]:
    """The core of `fit` and `fit_batch`: N patterns (`ds_`, `ms_` checked arrays), `per` = N lists of
    starts (`fit_batch`: K each; `fitting.lockstep_map`: K_i each). Start b of the vmapped batch belongs to
    pattern b // Kp (Kp = the largest K_i padded to a power of two, the padding repeating the pattern's first
    start, not live). On an accelerator the number of patterns is padded too (`_pattern_batch`)."""
    n_real = len(per)
    n = _pattern_batch(n_real)
    if n > n_real:  # padding patterns: copies of the first, not live (their rows never stop the loop)
        per, ds_, ms_ = (list(x) + [x[0]] * (n - n_real) for x in (per, ds_, ms_))
    k = [len(p) for p in per]
    kp = _batch_size(max(k))
    dt = per[0][0].dtype
    ds_ = [jnp.asarray(d, dt) for d in ds_]
    n_used = [int(np.sum(np.asarray(m))) for m in ms_]
    probs = []
    for i in range(n):
        level = float(np.sum(np.asarray(ds_[i])[np.asarray(ms_[i])])) / n_used[i]
        ps = [
            Parametrisation.create(
                s, experiment, cfg.free, cfg.background, max(level, 1e-12), active=cfg.active
            )
            for s in per[i]
        ]
        probs += ps + [ps[0]] * (kp - k[i])
    group = np.repeat(np.arange(n), kp)
    live_all = ((np.arange(n * kp) % kp) < np.repeat(k, kp)) & (group < n_real)
    prob = stack_parametrisations(probs)
    st = _Static(cfg.loss, cfg.method, cfg.solid_angle, cfg.polarisation, cfg.grid, cfg.regularizer)
    d_b = jnp.stack([ds_[i] for i in group])
    m_b = jnp.stack([jnp.asarray(ms_[i]) for i in group])
    norm = jnp.asarray(np.asarray(n_used, float)[group], dt)
    u0 = jax.tree.map(lambda *xs: jnp.stack(xs), *[p.initial_u() for p in probs])
    u0, prob, d_b, m_b, norm = _shard_starts((u0, prob, d_b, m_b, norm))
    rows = CPU_START_BATCH if _compacting() else None
    run = _optimise_rows(u0, prob, d_b, m_b, norm, st, cfg, dt, t_start, live_all, rows)
    best_u, history, done, steps_run, t_compile = run

    results = []
    for i in range(n_real):
        sl = slice(i * kp, (i + 1) * kp)
        u_i, p_i = _take(best_u, sl), _take(prob, sl)
        hist_i = [h[sl] for h in history]
        converged = bool(np.all(done[sl]))
        if converged and not _moved(_take(u0, sl), u_i, hist_i):
            converged = (
                False  # "converged" at the start: the data gave no gradient to follow (no silent success)
            )
        results.append(
            _result(
                u_i,
                p_i,
                live_all[sl],
                ds_[i],
                ms_[i],
                st,
                cfg,
                per[i],
                hist_i,
                n_used[i],
                int(steps_run[sl][live_all[sl]].max()),
                converged,
                t_start,
                t_compile,
            )  # fmt: skip
        )
    return results


# Whether `_fit_patterns` pads the number of patterns of a batch to a power of two (None: where it does not
# compact, i.e. on an accelerator or over several devices). `fitting.lockstep_map` merges the fits of a chunk
# into groups whose size changes as patterns finish or branch (15, 14, 3, ... of 16); each size is another
# compiled program (XLA:GPU: seconds each, plus the tracing), while a padded row costs little on a GPU. On one
# CPU device a row costs its share of the step, so there it does not pad.
PAD_PATTERNS: bool | None = None


def _pattern_batch(n: int) -> int:
    """The number of pattern rows `_fit_patterns` runs for `n` patterns (`PAD_PATTERNS`)."""
    pad = (not _compacting()) if PAD_PATTERNS is None else bool(PAD_PATTERNS)
    return _batch_size(n) if pad else int(n)


def _shard_starts(tree):
    """Spread the start axis (leading axis of every leaf) over the local devices when there are several
    and they divide it (the compiled step then runs data-parallel; one device: unchanged)."""
    n_dev = jax.local_device_count()
    n_b = jax.tree.leaves(tree)[0].shape[0]
    if n_dev < 2 or n_b % n_dev:
        return tree
    from jax.sharding import NamedSharding, PartitionSpec

    from ._batch import _local_mesh

    mesh, _ = _local_mesh()
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(*mesh.axis_names)))


# `_optimise` shrinks the batch only when a step of it takes at least this long (wall seconds): a smaller batch
# is another compiled program (~1-5 s on a CPU), which the saved steps must repay. 64^2 and 128^2 fits
# (0.04-1 s per step) shrink; the test suite's tiny fits (a few milliseconds per step) do not. With 0.1 the
# 128^2 ellipsoid's crop refinement (64^2) no longer shrank: its second pattern took 25.7 s instead of 17.6 s.
COMPACT_MIN_STEP_S = 0.03


# On one CPU device (`_compacting`) `_fit_patterns` optimises the rows of its vmapped batch (starts x patterns)
# this many at a time, one `_optimise` after the other (None: the whole batch at once, where `_optimise`'s
# compaction then drops finished starts; with 1 it has nothing to drop). There a row costs its share of a step
# anyway, and one row at a time holds 1/B of the batch's memory. Session 23 (idle 2-core CPU,
# batch-fit, warm compilation cache, 64^2, same optima): 3 polyhedron patterns (six candidates, 4 starts per
# class) 302 -> 193 s and peak RSS 2635 -> 2040 MiB; 16 harmonic patterns (lmax 4, network starts) 161 -> 158 s,
# 1738 -> 1627 MiB.
CPU_START_BATCH: int | None = 1


def _optimise_rows(u, prob, d, m, norm, st: _Static, cfg: _Settings, dt, t_start, live, rows: int | None):
    """`_optimise` over the batch `rows` rows at a time (None, or a batch that small: all at once), with the
    same returns: the rows' best points and flags concatenated, the per-step losses padded per group with
    its last row (as `_optimise` repeats a finished start's last loss), the first group's first-step time.
    Groups with no live row are not run (their best point is the start, their losses +inf)."""
    n_batch = norm.shape[0]
    live = np.ones(n_batch, bool) if live is None else np.asarray(live, bool)
    if rows is None or n_batch <= rows:
        return _optimise(u, prob, d, m, norm, st, cfg, dt, t_start, live)
    groups = [slice(s, min(s + rows, n_batch)) for s in range(0, n_batch, rows)]
    outs = []
    for sl in groups:
        if not live[sl].any():
            outs.append(None)
            continue
        u_s, prob_s, d_s, m_s, norm_s = _take((u, prob, d, m, norm), sl)
        outs.append(_optimise(u_s, prob_s, d_s, m_s, norm_s, st, cfg, dt, t_start, live[sl]))
    ran = [o for o in outs if o is not None]
    n_hist = max(len(o[1]) for o in ran)
    best, hists, done, steps = [], [], [], []
    for sl, o in zip(groups, outs, strict=True):
        nb = sl.stop - sl.start
        if o is None:
            best.append(_take(u, sl))
            hists.append([np.full(nb, np.inf)] * n_hist)
            done.append(np.ones(nb, bool))
            steps.append(np.zeros(nb, int))
            continue
        best.append(o[0])
        hists.append([o[1][min(k, len(o[1]) - 1)] for k in range(n_hist)])
        done.append(np.asarray(o[2], bool))
        steps.append(np.asarray(o[3], int))
    best_u = jax.tree.map(lambda *xs: jnp.concatenate(xs), *best)
    history = [np.concatenate([h[k] for h in hists]) for k in range(n_hist)]
    return best_u, history, np.concatenate(done), np.concatenate(steps), ran[0][4]


def _compacting() -> bool:
    """Whether `_optimise` drops finished starts from the vmapped batch: on one CPU device, where a batch
    costs its size per step (a smaller batch compiles the step once more per geometry). Not on a GPU (a
    batch costs about one start there, and XLA:GPU compiles slowly) nor when starts are sharded."""
    return jax.default_backend() == "cpu" and jax.local_device_count() == 1


def _optimise(u, prob, d, m, norm, st: _Static, cfg: _Settings, dt, t_start, live=None):
    """The optimiser loop over a batch of starts (each with its own data); every start stops on its own
    (`rtol` for `patience` steps, or `gtol`), the loop when all have. Returns (best u per start, per-step
    losses [(B,)], done flags (B,), steps each start ran (B,), first step's seconds).

    Compaction (`_compacting`, CPU; steps of at least `COMPACT_MIN_STEP_S`): once the starts still running
    fit in a batch half the current size or less, the finished ones leave the batch (their optimiser state is
    sliced, not restarted; padding repeats a running start and is ignored), so a multi-start whose starts
    converge at different steps does not pay for the finished ones. `live` (B,) bool: rows that are real
    starts (False: `fit`'s power-of-two padding, dropped at the first compaction). A finished start's history
    repeats its last loss."""
    is_gn = cfg.optimizer == "gn"
    n_free = sum(int(np.prod(np.shape(x)[1:])) for x in jax.tree.leaves(u))  # per start (rows: starts)
    opt = (
        None
        if is_gn
        else make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.max_steps, lbfgs_memory(n_free))
    )
    is_lbfgs = cfg.optimizer.startswith("lbfgs")
    n_batch = norm.shape[0]
    if is_gn:
        lam0 = 1e-3 if cfg.learning_rate is None else float(cfg.learning_rate)
        state = (jnp.full(n_batch, lam0, dt), jnp.full(n_batch, jnp.inf, dt))
    else:
        state = _init_state(u, opt)
    history = []
    best_u, best_val = u, np.full(n_batch, np.inf)
    last_val = np.full(n_batch, np.nan)
    stall = np.zeros(n_batch, int)
    done = np.zeros(n_batch, bool)
    live = np.ones(n_batch, bool) if live is None else np.asarray(live, bool)
    compact = _compacting()
    rows = np.arange(n_batch)  # the start (row of the full batch) each row of the running batch belongs to
    real = np.ones(n_batch, bool)  # running rows that are not copies made to pad a compacted batch
    src = np.arange(n_batch)  # each start's row in the running batch (a finished start's: row 0, unused)
    t_compile = None
    n_steps = 0
    steps_run = np.zeros(n_batch, int)  # steps each start took part in (until it stopped)

    def keep(best_u, x, better):
        # the starts where `better` (full rows) take their running row of `x`; fixed shapes, so no eager op
        # compiles anew as the batch shrinks
        return jax.tree.map(lambda b, y: jnp.where(_bcast(better, b), y[src], b), best_u, x)

    def settle(best_u, u, state, sel):
        # L-BFGS / LM: the last update's point was already evaluated (its value is in the state); keep it
        # where it is better than the start's best (running rows `sel`, full rows `rows[sel]`)
        if not (is_lbfgs or is_gn) or not len(sel):
            return best_u
        v = np.asarray(state[1] if is_gn else optax.tree_utils.tree_get(state, "value"), float)[sel]
        better = np.zeros(n_batch, bool)
        better[rows[sel]] = np.isfinite(v) & (v < best_val[rows[sel]])
        return keep(best_u, u, better) if better.any() else best_u

    for k in range(cfg.max_steps):
        t0 = time.perf_counter()
        if is_gn:
            lam_prev = np.asarray(state[0])
            u_new, state, val, gnorm = _gn_step(u, state[0], prob, d, m, norm, st)
            # a rejected trial (damping raised, point kept) is not a stall
            rejected = np.asarray(state[0]) > lam_prev
        else:
            u_new, state, val, gnorm = _step(u, state, prob, d, m, norm, st, opt, is_lbfgs)
        val = np.asarray(val)  # loss at u (before this update), per running row
        gnorm = np.asarray(gnorm)
        if t_compile is None:
            t_compile = time.perf_counter() - t0
        n_steps = k + 1
        r = rows[real]  # the starts that ran this step
        steps_run[r[~done[r]]] = n_steps
        last_val[r] = val[real]
        history.append(last_val.copy())
        improved = np.zeros(n_batch, bool)
        improved[r] = val[real] < best_val[r]
        best_u = keep(best_u, u, improved)
        # a step that does not improve on the best loss by rtol (relative) is a stall: also when the optimiser
        # settles slightly ABOVE its best (L-BFGS after a failed line search) or float32 round-off of the
        # summed loss exceeds rtol
        gain = (best_val[r] - val[real]) / np.maximum(np.abs(val[real]), 1e-12)
        stall_r = np.where(np.isfinite(best_val[r]) & (gain < cfg.rtol), stall[r] + 1, 0)
        if is_gn:
            stall_r = np.where(rejected[real] & (np.asarray(state[0])[real] < 1e7), stall_r - 1, stall_r)
        stall[r] = stall_r
        best_val[r] = np.where(improved[r], val[real], best_val[r])
        done[r] = done[r] | (stall_r >= cfg.patience) | (gnorm[real] < cfg.gtol)
        u = u_new
        finished = bool(np.all(done | ~live))
        if cfg.every and (k == 0 or n_steps % cfg.every == 0 or finished or n_steps == cfg.max_steps):
            _print_progress(
                n_steps, cfg.max_steps, last_val, t_start, t_compile if k == 0 else None, finished
            )
        if finished:
            break
        running = np.flatnonzero(real & ~done[rows] & live[rows])
        size = _batch_size(len(running))
        step_s = time.perf_counter() - t0
        if compact and size < len(rows) and n_steps < cfg.max_steps and step_s >= COMPACT_MIN_STEP_S:
            # the finished rows leave (their last point settled now); the running ones are gathered, padded
            # by repeating the first
            best_u = settle(best_u, u, state, np.setdiff1d(np.flatnonzero(real), running))
            pick = np.concatenate([running, np.repeat(running[:1], size - len(running))])
            u, state, prob, d, m, norm = jax.tree.map(lambda x: x[pick], (u, state, prob, d, m, norm))
            rows = rows[pick]
            real = np.arange(size) < len(running)
            src = np.zeros(n_batch, int)
            src[rows[real]] = np.flatnonzero(real)
    best_u = settle(best_u, u, state, np.flatnonzero(real))
    return best_u, history, done | ~live, steps_run, float(t_compile or 0.0)


def _result(best_u, prob, live, d, m, st, cfg: _Settings, models, history, n_used, n_steps, converged,
            t_start, t_compile) -> FitResult:  # fmt: skip
    """One pattern's `FitResult` from its starts' best points (`best_u`, `prob`: its Kp starts)."""
    n_starts = len(models)
    nll, scales, ib, sig, bg_b, H = _finalize(best_u, prob, jnp.asarray(live), d, m, st, cfg.uncertainties)
    nll, scales, ib = np.asarray(nll), np.asarray(scales), int(ib)
    u_b, p_b = _take(best_u, ib), _take(prob, ib)
    shape_b, exp_b, _ = p_b.build(u_b)
    values = {k: np.asarray(v) for k, v in p_b.physical(u_b).items()}
    model_counts = np.asarray(scales[ib] * sig + bg_b)
    sigmas, hess_ok = {}, False
    if cfg.uncertainties:
        sigmas, hess_ok = laplace_sigmas(np.asarray(H), u_b, p_b, nuisance=1, active=p_b.active)
    nll = nll[:n_starts]
    alts = _alternatives(nll, ib, prob, best_u, values, cfg.alternatives_tol)
    hist = np.stack(history)[:, ib] * n_used if history else np.zeros(0)
    return FitResult(
        model=_restore_hint(shape_b, models[ib]),
        experiment=exp_b,
        scale=float(scales[ib]),
        background=float(bg_b),
        loss=float(nll[ib]),
        loss_kind=cfg.loss.name,
        loss_function=cfg.loss,
        loss_history=np.asarray(hist, float),
        free=p_b.names,
        values=values,
        sigmas=sigmas,
        hessian_ok=bool(hess_ok),
        n_steps=n_steps,
        converged=bool(converged),
        time_s=time.perf_counter() - t_start,
        compile_s=t_compile,
        n_used=n_used,
        n_starts=n_starts,
        start_losses=np.asarray(nll, float),
        alternatives=alts,
        data=np.asarray(d),
        mask=np.asarray(m),
        model_counts=model_counts,
        grid=st.grid,
    )


def _check_arguments(model, experiment, loss, floor, optimizer, polarisation, max_steps):
    """`fit`'s structural checks (errors name the argument); returns (starting models, loss, polarisation)."""
    models = list(model) if isinstance(model, list | tuple) else [model]
    if not models:
        raise ValueError("model must be a shape or a non-empty list of shapes")
    if not isinstance(experiment, ds.Experiment):
        raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
    for m in models:
        if not isinstance(m, ds.AbstractShape):
            raise TypeError(f"model must be a diffscat shape, got {type(m).__name__}")
    if len({type(m) for m in models}) != 1:
        raise TypeError("all starting models must be of one class")
    loss = as_loss(loss) if floor is None else as_loss(loss, floor=float(floor))
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    polarisation = _check_polarisation(polarisation)
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return models, loss, polarisation


def _alternatives(nll, ib: int, prob, best_u, values: dict, tol: float) -> list[Alternative]:
    """Other starts' optima within `tol` NLL units of the best (index `ib`) whose parameters differ from the best
    and from each other (e.g. a twin / mirror solution), best first."""
    alts = []
    for i in np.argsort(nll):
        i = int(i)
        if i == ib or not np.isfinite(nll[i]) or nll[i] - nll[ib] > tol:
            continue
        p_i, u_i = _take(prob, i), _take(best_u, i)
        vals = {k: np.asarray(v) for k, v in p_i.physical(u_i).items()}
        # the same solution reached from another start is not an alternative
        if _same_solution(vals, values) or any(_same_solution(vals, a_.values) for a_ in alts):
            continue
        alts.append(
            Alternative(model=p_i.build(u_i)[0], delta_loss=float(nll[i] - nll[ib]), values=vals, u=u_i)
        )
    return alts


def _progress_every(progress) -> int:
    """Steps between progress lines (0: off) from `fit(progress=...)`."""
    if isinstance(progress, bool) or progress is None:
        return 10 if progress else 0
    if not isinstance(progress, int | np.integer) or progress < 0:
        raise ValueError(f"progress must be a bool or a number of steps >= 0, got {progress!r}")
    return int(progress)


def _print_progress(step, max_steps, val, t_start, t_compile, converged) -> None:
    """One line on stderr (outside jit; `val` is already on the host): step, best loss per pixel, time."""
    import sys

    best = float(np.nanmin(val)) if np.any(np.isfinite(val)) else float("nan")
    extra = f" (first step incl. compilation {t_compile:.1f} s)" if t_compile is not None else ""
    extra += ", converged" if converged else ""
    print(
        f"fit step {step}/{max_steps}: loss/pixel {best:.5g}, {time.perf_counter() - t_start:.1f} s{extra}",
        file=sys.stderr,
        flush=True,
    )


def _same_solution(a: dict, b: dict, rtol: float = 1e-3, deg: float = 0.5) -> bool:
    """Two fitted parameter sets agree (relative 1e-3; rotations within `deg`)."""
    for k in a:
        x, y = np.asarray(a[k], float), np.asarray(b[k], float)
        if x.shape == (3, 3) and k == "orientation":
            c = (np.trace(x.T @ y) - 1.0) / 2.0
            if np.degrees(np.arccos(np.clip(c, -1.0, 1.0))) > deg:
                return False
        elif not np.allclose(x, y, rtol=rtol, atol=rtol * max(float(np.max(np.abs(y), initial=0.0)), 1e-12)):
            return False
    return True


def _moved(u0, u, history) -> bool:
    """True when any start's parameters left their initial values or its loss went down."""
    changed = any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(u0), jax.tree.leaves(u), strict=True)
    )
    h = np.asarray(history, float)
    lowered = h.shape[0] > 1 and bool(np.any(np.nanmin(h, axis=0) < h[0]))
    return changed or lowered


def _bcast(flags, x):
    return jnp.asarray(flags).reshape((-1,) + (1,) * (x.ndim - 1))


def _restore_hint(shape, like):
    """The fitted shape with a static grid-size hint matching its fitted size (as if built directly)."""
    from diffscat.shapes._base import extent_hint, with_extent_hint

    return with_extent_hint(shape, extent_hint(np.asarray(shape.bounding_radius())) or like.extent_hint)
