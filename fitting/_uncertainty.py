"""Uncertainties from the curvature of the negative log-likelihood at the optimum (Fisher information / Laplace).

cov(u) = the u-block of H^-1, with H the curvature of the summed NLL in the O(1) unconstrained parameters and
the log scale (so correlations with the fluence are included; `fit` uses the expected Fisher information
J^T W J, which needs only forward-mode derivatives); physical sigmas by the delta method,
sigma_i = sqrt((J cov J^T)_ii), J = d physical / d u. Orientation is reported as the standard deviation of a
small rotation about the fitted orientation's body axes, in degrees.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float

from diffscat._custom_types import mm

from ._params import Parametrisation

__all__ = ["laplace_sigmas", "covariance"]


def _local_physical(prob: Parametrisation, u0: dict[str, Array]):
    """Map u -> flat physical vector; orientation as the rotation vector (deg) of R(u0)^T R(u)."""
    R0 = {n: prob.physical(u0)[n] for n, k in zip(prob.names, prob.kinds, strict=True) if k == "orientation"}

    def g(u):
        vals = prob.physical(u)
        out = []
        for n, k in zip(prob.names, prob.kinds, strict=True):
            if k == "orientation":
                A = mm(R0[n].T, vals[n])
                w = 0.5 * jnp.stack([A[2, 1] - A[1, 2], A[0, 2] - A[2, 0], A[1, 0] - A[0, 1]])
                out.append(jnp.degrees(w))
            else:
                out.append(jnp.ravel(vals[n]))
        return jnp.concatenate(out)

    return g


def covariance(
    hessian: Float[ArrayLike, "n n"] | Callable[[dict[str, Array]], Float[Array, ""]],
    u=None,
    nuisance: int = 0,
):
    """Covariance of the unconstrained parameters: the inverse Hessian of a summed NLL.

    `hessian`: the Hessian matrix in the flattened (`ravel_pytree`) order of u, or a function nll(u) whose
    Hessian at `u` is taken. Returns (cov, ok): ok is False when the Hessian is not positive definite (a flat
    or saddle direction); those directions then get a huge variance instead of a silent small one.
    `nuisance`: the last `nuisance` rows/columns are nuisance parameters (e.g. the log scale) that are
    marginalised: the returned covariance is the leading block of the full inverse.
    """
    if callable(hessian):
        nll = hessian
        x0, unravel = ravel_pytree(u)
        hessian = jax.hessian(lambda x: nll(unravel(x)))(x0)
    H = np.asarray(hessian, dtype=float)
    H = 0.5 * (H + H.T)
    lam, V = np.linalg.eigh(H)
    ok = bool(np.all(lam > 1e-12 * max(np.max(np.abs(lam)), 1e-300)))
    lam_c = np.where(lam > 1e-12 * max(np.max(np.abs(lam)), 1e-300), lam, 1e-30)
    cov = (V / lam_c) @ V.T
    n = cov.shape[0] - int(nuisance)
    return cov[:n, :n], ok


def laplace_sigmas(
    hessian: Float[ArrayLike, "n n"] | Callable[[dict[str, Array]], Float[Array, ""]],
    u: dict[str, Array],
    prob: Parametrisation,
    nuisance: int = 0,
    active: dict[str, Array] | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """Per-parameter standard deviations in physical units (orientation: degrees), and the Hessian's health.

    `hessian`: Hessian of the summed NLL in flattened u (or the NLL function itself); `u`: the optimum;
    `prob`: the fit's parametrisation; `nuisance`: trailing nuisance rows of `hessian` (marginalised);
    `active`: {name: bool array like u[name]}, frozen (False) entries are held fixed: their rows and
    columns are dropped before the inversion and their sigma is 0."""
    x0, unravel = ravel_pytree(u)
    if active is not None and not callable(hessian):
        keep, _ = ravel_pytree({n: jnp.broadcast_to(jnp.asarray(active[n]), jnp.shape(u[n])) for n in u})
        keep = np.concatenate([np.asarray(keep, bool), np.ones(int(nuisance), bool)])
        if not keep.all():
            H = np.asarray(hessian, dtype=float)
            cov_a, ok = covariance(H[np.ix_(keep, keep)], None, nuisance)
            n = x0.shape[0]
            idx = np.flatnonzero(keep[:n])
            cov = np.zeros((n, n))
            cov[np.ix_(idx, idx)] = cov_a
            return _sigmas_from_cov(cov, ok, u, prob, x0, unravel)
    cov, ok = covariance(hessian, u, nuisance)
    return _sigmas_from_cov(cov, ok, u, prob, x0, unravel)


def _sigmas_from_cov(cov, ok, u, prob, x0, unravel):
    g = _local_physical(prob, u)
    J = np.asarray(jax.jacfwd(lambda x: g(unravel(x)))(x0), dtype=float)
    var = np.einsum("ij,jk,ik->i", J, cov, J)
    sig = np.sqrt(np.maximum(var, 0.0))
    out, i = {}, 0
    vals = prob.physical(u)
    for n, k in zip(prob.names, prob.kinds, strict=True):
        shp = (3,) if k == "orientation" else np.shape(vals[n])
        size = int(np.prod(shp))
        out[n] = sig[i : i + size].reshape(shp)
        i += size
    return out, ok
