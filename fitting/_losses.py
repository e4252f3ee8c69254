"""Losses: negative log-likelihoods of a measured pattern given a model pattern, as pure functions.

Every loss takes `(model, data, mask)` of exactly equal shapes, where `model` is the expected signal up to an
unknown positive `scale` (fluence x efficiency) and `data` are the measured values (photon counts). The
expected value of a pixel is mu = scale * model + background. Masked pixels (mask False) are excluded. With
`scale=None` the scale is profiled out: set to its maximum-likelihood value for the given model (closed form
for Poisson without background, a few differentiable Newton steps otherwise), so the loss is the profile
likelihood and its curvature gives correct uncertainties for the other parameters.

All losses return the **sum** over used pixels of a negative log-likelihood (up to a data-only constant), so
that its Hessian is the observed Fisher information. Which to use (docs/fitting.md):

- `poisson_nll`: photon counts (any level, including many zeros). The default and the right one for counting
  detectors; it is the deviance sum(mu - d + d log(d / mu)), >= 0 and about the number of pixels at a good fit.
- `anscombe_nll`: 0.5 sum r^2 with r = 2 (sqrt(d + 3/8) - sqrt(mu + 3/8)), unit-variance for Poisson counts
  above a few photons; less sensitive to a few wrong bright pixels than Poisson (e.g. detector non-linearity
  near the centre).
- `log_intensity_nll`: Gaussian on log(d + floor) with an unknown variance profiled out; for integrating
  detectors with unknown or multiplicative noise (MCP + phosphor), where only relative intensities are trusted.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = [
    "LOSSES",
    "check_data",
    "poisson_nll",
    "anscombe_nll",
    "log_intensity_nll",
    "profile_scale",
    "residuals",
]

_TINY = 1e-30


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_data(
    data: Float[ArrayLike, "*image"],
    mask: Bool[ArrayLike, "*image"] | None = None,
    image_shape: tuple[int, ...] | None = None,
    *,
    nonnegative: bool = True,
) -> tuple[Float[Array, "*image"], Bool[Array, "*image"]]:
    """Validate measured data and mask; return them as arrays (mask defaults to all True).

    Masked pixels of the returned data are set to 0. Raises `ValueError` naming the argument for: shape mismatch (data vs `image_shape` or mask), a mask that is
    not boolean, NaN or inf in used pixels, negative values in used pixels (when `nonnegative`), no used pixels.
    Concrete values are checked in Python; traced ones through `eqx.error_if`.
    """
    if isinstance(data, jax.Array | np.ndarray) and jnp.issubdtype(data.dtype, jnp.complexfloating):
        raise TypeError(f"data must be real, got complex dtype {data.dtype}")
    d = jnp.asarray(data)
    if not jnp.issubdtype(d.dtype, jnp.floating):
        d = d.astype(jnp.result_type(float))
    if image_shape is not None and tuple(d.shape) != tuple(image_shape):
        raise ValueError(
            f"data shape {tuple(d.shape)} does not match the detector's image shape {image_shape}"
        )
    if mask is None:
        m = jnp.ones(d.shape, bool)
    else:
        m = jnp.asarray(mask)
        if m.dtype != jnp.bool_:
            raise TypeError(f"mask must be boolean (True = use the pixel), got dtype {m.dtype}")
        if m.shape != d.shape:
            raise ValueError(f"mask shape {tuple(m.shape)} does not match data shape {tuple(d.shape)}")
    if _is_concrete(d) and _is_concrete(m):
        dn, mn = np.asarray(d), np.asarray(m)
        if not mn.any():
            raise ValueError("mask excludes every pixel: nothing to fit")
        used = dn[mn]
        if not np.all(np.isfinite(used)):
            raise ValueError("data contain NaN or inf in used pixels (mask them out)")
        if nonnegative and np.any(used < 0):
            raise ValueError(f"data contain negative counts in used pixels (min {used.min():.3g})")
    else:
        d = eqx.error_if(d, ~jnp.any(m), "mask excludes every pixel: nothing to fit")
        d = eqx.error_if(d, jnp.any(m & ~jnp.isfinite(d)), "data contain NaN or inf in used pixels")
        if nonnegative:
            d = eqx.error_if(d, jnp.any(m & (d < 0)), "data contain negative counts in used pixels")
    # masked pixels may hold anything (NaN): replace them so no NaN reaches a value or a gradient
    return jnp.where(m, d, 0.0).astype(d.dtype), m


def _check_shapes(model, data, mask):
    model = jnp.asarray(model)
    data = jnp.asarray(data)
    if model.shape != data.shape:
        raise ValueError(f"model shape {tuple(model.shape)} does not match data shape {tuple(data.shape)}")
    if mask is None:
        mask = jnp.ones(data.shape, bool)
    else:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be boolean (True = use the pixel), got dtype {mask.dtype}")
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match data shape {tuple(data.shape)}")
    return model, data, mask


def _poisson_terms(mu, d):
    """Per-pixel Poisson deviance mu - d + d log(d / mu) (0 log 0 = 0)."""
    mu = jnp.maximum(mu, _TINY)
    pos = d > 0
    # double where: pixels with d = 0 (and masked ones, mu = TINY) must not put 0 * inf into 2nd derivatives
    dlog = jnp.where(pos, d * (jnp.log(jnp.where(pos, d, 1.0)) - jnp.log(jnp.where(pos, mu, 1.0))), 0.0)
    return mu - d + dlog


def _anscombe_terms(mu, d):
    r = 2.0 * (jnp.sqrt(jnp.maximum(d, 0.0) + 0.375) - jnp.sqrt(jnp.maximum(mu, 0.0) + 0.375))
    return 0.5 * r**2


def _log_residual(mu, d, floor):
    return jnp.log(jnp.maximum(d, 0.0) + floor) - jnp.log(jnp.maximum(mu, 0.0) + floor)


def profile_scale(
    kind: str,
    model: Float[Array, "*image"],
    data: Float[Array, "*image"],
    mask: Bool[Array, "*image"],
    background: Float[ArrayLike, ""] = 0.0,
    *,
    floor: float = 1.0,
    newton_steps: int = 6,
) -> Float[Array, ""]:
    """Maximum-likelihood scale s of mu = s * model + background over used pixels (differentiable).

    Starts from a closed form (Poisson: sum d / sum model, exact when background = 0; Anscombe: the
    least-squares fit of sqrt(d) by sqrt(s model); log: the mean log ratio) and refines log s by Newton steps on
    the exact loss (skipped for Poisson without background). Dimensionless model -> scale in data units per
    model unit.
    """
    w = mask.astype(model.dtype)
    model = jnp.where(mask, model, 0.0)
    data = jnp.where(mask, data, 0.0)
    msum = jnp.maximum(jnp.sum(w * model), _TINY)
    if kind == "poisson":
        s0 = jnp.maximum(jnp.sum(w * (data - background)), _TINY) / msum
        terms = _poisson_terms
    elif kind == "anscombe":
        s0 = (jnp.sum(w * jnp.sqrt(jnp.maximum(model * data, 0.0))) / msum) ** 2
        terms = _anscombe_terms
    elif kind == "log":
        lr = jnp.log(jnp.maximum(data, 0.0) + floor) - jnp.log(jnp.maximum(model, _TINY))
        s0 = jnp.exp(jnp.sum(w * lr) / jnp.maximum(jnp.sum(w), 1.0))
        terms = lambda mu, d: 0.5 * _log_residual(mu, d, floor) ** 2
    else:
        raise ValueError(f"unknown loss kind {kind!r}; valid: {tuple(LOSSES)}")
    s0 = jnp.maximum(s0, _TINY)
    if kind == "poisson" and _is_concrete(background) and float(np.asarray(background)) == 0.0:
        return s0

    def f(t):
        return jnp.sum(w * terms(jnp.exp(t) * model + background, data))

    g1 = jax.grad(f)
    g2 = jax.grad(g1)
    t = jnp.log(s0)
    for _ in range(newton_steps):
        h = g2(t)
        step = g1(t) / jnp.where(h > 0, h, 1.0)
        t = t - jnp.where(h > 0, jnp.clip(step, -2.0, 2.0), 0.0)
    return jnp.exp(t)


def _prepare(kind, model, data, mask, scale, background, floor):
    model, data, mask = _check_shapes(model, data, mask)
    background = jnp.asarray(background, model.dtype)
    data = jnp.where(mask, data, 0.0)
    model = jnp.where(mask, model, 0.0)
    if scale is None:
        scale = profile_scale(kind, model, data, mask, background, floor=floor)
    mu = scale * model + background
    return mu, data, mask


def poisson_nll(
    model: Float[ArrayLike, "*image"],
    data: Float[ArrayLike, "*image"],
    mask: Bool[ArrayLike, "*image"] | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, ""]:
    """Poisson negative log-likelihood (deviance form), summed over used pixels.

    sum over mask of mu - d + d log(d / mu), mu = scale * model + background (counts per pixel). Equals
    -log L + const; >= 0; about the number of used pixels at a correct model (a chi-square-like goodness of fit).
    `scale=None`: profiled (sum d / sum model without background). Data are photon counts (>= 0).
    """
    mu, d, m = _prepare("poisson", model, data, mask, scale, background, 1.0)
    return jnp.sum(jnp.where(m, _poisson_terms(mu, d), 0.0))


def anscombe_nll(
    model: Float[ArrayLike, "*image"],
    data: Float[ArrayLike, "*image"],
    mask: Bool[ArrayLike, "*image"] | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, ""]:
    """Gaussian likelihood on Anscombe-transformed counts: 0.5 sum r^2, r = 2 (sqrt(d + 3/8) - sqrt(mu + 3/8)).

    For Poisson counts r has unit variance once mu exceeds a few photons. `scale=None`: profiled.
    """
    mu, d, m = _prepare("anscombe", model, data, mask, scale, background, 1.0)
    return jnp.sum(jnp.where(m, _anscombe_terms(mu, d), 0.0))


def log_intensity_nll(
    model: Float[ArrayLike, "*image"],
    data: Float[ArrayLike, "*image"],
    mask: Bool[ArrayLike, "*image"] | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
    floor: float = 1.0,
) -> Float[Array, ""]:
    """Gaussian likelihood on log intensity with its variance profiled out: (n / 2) log(sum r^2 / n),
    r = log(d + floor) - log(mu + floor), n = number of used pixels.

    `floor` (data units, default 1 count) keeps empty pixels finite. Suits data whose noise is multiplicative
    or unknown; the profiled variance makes its curvature give honest uncertainties.
    """
    mu, d, m = _prepare("log", model, data, mask, scale, background, floor)
    n = jnp.sum(m)
    ss = jnp.sum(jnp.where(m, _log_residual(mu, d, floor) ** 2, 0.0))
    return 0.5 * n * jnp.log(jnp.maximum(ss / n, _TINY))


LOSSES = {"poisson": poisson_nll, "anscombe": anscombe_nll, "log": log_intensity_nll}


def residuals(
    kind: str,
    model: Float[ArrayLike, "*image"],
    data: Float[ArrayLike, "*image"],
    mask: Bool[ArrayLike, "*image"] | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
    floor: float = 1.0,
) -> Float[Array, "*image"]:
    """Signed, normalised residual map (NaN at masked pixels): Poisson deviance residuals
    sign(d - mu) sqrt(2 deviance), Anscombe residuals, or log residuals divided by their rms."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; valid: {tuple(LOSSES)}")
    mu, d, m = _prepare(kind, model, data, mask, scale, background, floor)
    if kind == "poisson":
        r = jnp.sign(d - mu) * jnp.sqrt(2.0 * jnp.maximum(_poisson_terms(mu, d), 0.0))
    elif kind == "anscombe":
        r = 2.0 * (jnp.sqrt(jnp.maximum(d, 0.0) + 0.375) - jnp.sqrt(jnp.maximum(mu, 0.0) + 0.375))
    else:
        r = _log_residual(mu, d, floor)
        r = r / jnp.sqrt(jnp.maximum(jnp.sum(jnp.where(m, r**2, 0.0)) / jnp.sum(m), _TINY))
    return jnp.where(m, r, jnp.nan)
