"""Losses: negative log-likelihoods of a measured pattern given a model pattern, one class per loss.

A loss is a final subclass of `AbstractLoss` (equinox's abstract/final pattern): `Poisson()`, `Anscombe()`,
`LogIntensity(floor=1.0)`. Everything a fit needs from a loss is a method, so a new loss is one class (no
other file changes; docs/fitting.md shows one). `as_loss(loss)` turns a registry name ("poisson", "anscombe",
"log"; see `LOSSES`) or an instance into an instance; the functions `poisson_nll`, `anscombe_nll`,
`log_intensity_nll`, `profile_scale(kind, ...)` and `residuals(kind, ...)` are thin wrappers kept for callers.

Every loss takes `(model, data, mask)` of exactly equal shapes, where `model` is the expected signal up to an
unknown positive `scale` (fluence x efficiency) and `data` are the measured values (photon counts). The
expected value of a pixel is mu = scale * model + background. Masked pixels (mask False) are excluded. With
`scale=None` the scale is profiled out: set to its maximum-likelihood value for the given model (closed form
for Poisson without background, a few differentiable Newton steps otherwise), so the loss is the profile
likelihood and its curvature gives correct uncertainties for the other parameters.

All losses return the **sum** over used pixels of a negative log-likelihood (up to a data-only constant), so
that its Hessian is the observed Fisher information. Which to use (docs/fitting.md):

- `Poisson` ("poisson"): photon counts (any level, including many zeros). The default and the right one for
  counting detectors; it is the deviance sum(mu - d + d log(d / mu)), >= 0 and about the number of pixels at a
  good fit.
- `Anscombe` ("anscombe"): 0.5 sum r^2 with r = 2 (sqrt(d + 3/8) - sqrt(mu + 3/8)), unit-variance for Poisson
  counts above a few photons; less sensitive to a few wrong bright pixels than Poisson (e.g. detector
  non-linearity near the centre).
- `LogIntensity` ("log"): Gaussian on log(d + floor) with an unknown variance profiled out; for integrating
  detectors with unknown or multiplicative noise (MCP + phosphor), where only relative intensities are trusted.
"""

from __future__ import annotations

import abc
import warnings
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Real

__all__ = [
    "AbstractLoss",
    "Poisson",
    "Anscombe",
    "LogIntensity",
    "LOSSES",
    "as_loss",
    "check_data",
    "DataWarning",
    "poisson_nll",
    "anscombe_nll",
    "log_intensity_nll",
    "profile_scale",
    "residuals",
]

_TINY = 1e-30


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class DataWarning(UserWarning):
    """The data look wrong for the chosen loss (e.g. non-integer values with a photon-counting loss)."""


def check_data(
    data: ArrayLike,  # real: checked with a message naming `data`
    mask: ArrayLike | None = None,
    image_shape: tuple[int, ...] | None = None,
    *,
    nonnegative: bool = True,
    counts: bool = False,
) -> tuple[Float[Array, "*image"], Bool[Array, "*image"]]:
    """Validate measured data and mask; return them as arrays (mask defaults to all True).

    Masked pixels of the returned data are set to 0. Raises `ValueError` naming the argument for: shape
    mismatch (data vs `image_shape` or mask), a mask that is not boolean, NaN or inf in used pixels, negative
    values in used pixels (when `nonnegative`), no used pixels, data that are 0 in every used pixel.
    With `counts` (a photon-counting loss: Poisson, Anscombe), concrete non-integer data raise a
    `DataWarning` (they are not photon counts: e.g. dsigma/dOmega or a per-solid-angle image).
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
        if not np.any(used != 0):
            raise ValueError(f"data are 0 in every used pixel ({used.size} pixels): nothing to fit")
        if counts:
            frac = np.abs(used - np.rint(used))
            if np.any(frac > 1e-6 * np.maximum(1.0, np.abs(used))):
                warnings.warn(
                    f"data are not integer photon counts (e.g. {used[np.argmax(frac)]:.4g}) but the loss "
                    "counts photons (Poisson / Anscombe): for dsigma/dOmega or intensity images use "
                    "loss='log' (fitting.LogIntensity), and for a per-solid-angle image solid_angle=False",
                    DataWarning,
                    stacklevel=3,
                )
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


def _masked(model, data, mask):
    """Weights (1 used / 0 masked) and model, data with masked pixels set to 0."""
    return mask.astype(model.dtype), jnp.where(mask, model, 0.0), jnp.where(mask, data, 0.0)


class AbstractLoss(eqx.Module):
    """A negative log-likelihood of measured `data` given an expected signal mu = scale * model + background.

    Subclass it (final classes only; never override a concrete method) to add a loss. A subclass sets the
    class attributes `name` (str: how result files and reports call it) and `nonnegative` (bool: the data must
    be >= 0, e.g. photon counts; `fitting.fit` then refuses negative used pixels) and implements:

    - `terms(mu, data)`: per-pixel NLL contributions (what the scale's Newton refinement minimises);
    - `value(model, data, mask, *, scale=None, background=0.0)`: the total over used pixels (a scalar whose
      curvature is the Fisher information);
    - `initial_scale(model, data, mask, background)`: a closed-form estimate of the maximum-likelihood scale;
    - `profile_scale(model, data, mask, background, *, newton_steps)`: the maximum-likelihood scale
      (differentiable);
    - `fisher_weight(mu, data, mask)`: per-pixel weight w of the expected Fisher information J^T diag(w) J,
      J = d mu / d parameters (0 at masked pixels);
    - `residuals(model, data, mask, *, scale=None, background=0.0)`: signed residuals of about unit variance
      at a good fit (NaN at masked pixels).

    Concrete helpers for implementations: `expected_counts` (shape checks, masking, profiling: returns mu,
    data, mask) and `newton_scale` (Newton steps on log scale over `terms`). Calling a loss calls `value`.
    Fields (hyper-parameters, e.g. `LogIntensity.floor`) should be Python numbers, so a loss is hashable and
    static under `jax.jit`.
    """

    name: eqx.AbstractClassVar[str]
    nonnegative: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def terms(self, mu: Float[Array, "*image"], data: Float[Array, "*image"]) -> Float[Array, "*image"]:
        """Per-pixel negative log-likelihood (data-only constants dropped); mu, data in counts per pixel."""

    @abc.abstractmethod
    def value(
        self,
        model: Real[ArrayLike, "*model"],
        data: Real[ArrayLike, "*data"],
        mask: ArrayLike | None = None,
        *,
        scale: Float[ArrayLike, ""] | None = None,
        background: Float[ArrayLike, ""] = 0.0,
    ) -> Float[Array, ""]:
        """Total NLL over used pixels at mu = scale * model + background (`scale=None`: profiled)."""

    @abc.abstractmethod
    def initial_scale(
        self,
        model: Float[Array, "*image"],
        data: Float[Array, "*image"],
        mask: Bool[Array, "*image"],
        background: Float[ArrayLike, ""] = 0.0,
    ) -> Float[Array, ""]:
        """Closed-form estimate (> 0) of the maximum-likelihood scale; data units per model unit."""

    @abc.abstractmethod
    def profile_scale(
        self,
        model: Float[Array, "*image"],
        data: Float[Array, "*image"],
        mask: Bool[Array, "*image"],
        background: Float[ArrayLike, ""] = 0.0,
        *,
        newton_steps: int = 6,
    ) -> Float[Array, ""]:
        """Maximum-likelihood scale s of mu = s * model + background over used pixels (differentiable)."""

    @abc.abstractmethod
    def fisher_weight(
        self, mu: Float[Array, "*image"], data: Float[Array, "*image"], mask: Bool[Array, "*image"]
    ) -> Float[Array, "*image"]:
        """Per-pixel weight w (0 at masked pixels) of the expected Fisher information J^T diag(w) J."""

    @abc.abstractmethod
    def residuals(
        self,
        model: Real[ArrayLike, "*model"],
        data: Real[ArrayLike, "*data"],
        mask: ArrayLike | None = None,
        *,
        scale: Float[ArrayLike, ""] | None = None,
        background: Float[ArrayLike, ""] = 0.0,
    ) -> Float[Array, "*image"]:
        """Signed, normalised residual map (about unit variance at a good fit; NaN at masked pixels)."""

    def __call__(
        self,
        model: Real[ArrayLike, "*model"],
        data: Real[ArrayLike, "*data"],
        mask: ArrayLike | None = None,
        *,
        scale: Float[ArrayLike, ""] | None = None,
        background: Float[ArrayLike, ""] = 0.0,
    ) -> Float[Array, ""]:
        """Same as `value`."""
        return self.value(model, data, mask, scale=scale, background=background)

    def expected_counts(
        self,
        model: Real[ArrayLike, "*model"],
        data: Real[ArrayLike, "*data"],
        mask: ArrayLike | None = None,
        *,
        scale: Float[ArrayLike, ""] | None = None,
        background: Float[ArrayLike, ""] = 0.0,
    ) -> tuple[Float[Array, "*image"], Float[Array, "*image"], Bool[Array, "*image"]]:
        """(mu, data, mask) as arrays: shapes checked (`ValueError`/`TypeError` naming the argument), masked
        pixels of model and data set to 0, mu = scale * model + background with `scale=None` profiled by
        `profile_scale`."""
        model, data, mask = _check_shapes(model, data, mask)
        background = jnp.asarray(background, model.dtype)
        data = jnp.where(mask, data, 0.0)
        model = jnp.where(mask, model, 0.0)
        if scale is None:
            scale = self.profile_scale(model, data, mask, background)
        return scale * model + background, data, mask

    def newton_scale(
        self,
        model: Float[Array, "*image"],
        data: Float[Array, "*image"],
        mask: Bool[Array, "*image"],
        background: Float[ArrayLike, ""],
        s0: Float[Array, ""],
        *,
        newton_steps: int = 6,
    ) -> Float[Array, ""]:
        """Refine a scale s0 > 0 by `newton_steps` Newton steps on t = log s of sum(mask * terms(mu, data))
        (steps clipped to +-2 in t; skipped where the curvature is not positive). Differentiable.

        The first `newton_steps - 1` steps run in a `lax.fori_loop` outside autodiff; the last step is
        differentiated, which at a converged t is the implicit-function derivative of the optimal scale
        (dt/dx = -(d g1 / dx) / g2, g1 and g2 the first and second derivatives in t). Differentiating all the
        steps (unrolled, as before session 30) gives the same derivative at convergence but was half of the
        HLO of a fit's compiled step (6 Newton steps with their second and third derivatives, twice in
        `_step`): that memory stays resident with every compiled program (docs/performance.md, session 30)."""
        if isinstance(newton_steps, bool) or not isinstance(newton_steps, int) or newton_steps < 0:
            raise ValueError(f"newton_steps must be an int >= 0, got {newton_steps!r}")
        if newton_steps == 0:
            return s0
        w, model, data = _masked(model, data, mask)

        def f(t, model, data, background):
            return jnp.sum(w * self.terms(jnp.exp(t) * model + background, data))

        g1 = jax.grad(f)
        g2 = jax.grad(g1)

        def newton(t, args):
            h = g2(t, *args)
            step = g1(t, *args) / jnp.where(h > 0, h, 1.0)
            return (t - jnp.where(h > 0, jnp.clip(step, -2.0, 2.0), 0.0)).astype(t.dtype)

        fixed = jax.lax.stop_gradient((model, data, background))
        t = jax.lax.stop_gradient(jnp.log(s0))
        t = jax.lax.fori_loop(0, newton_steps - 1, lambda _, t: newton(t, fixed), t)
        return jnp.exp(newton(t, (model, data, background)))


# |mu / d - 1| below this: the deviance is evaluated as d (t - log1p(t)), t = mu / d - 1 (`_poisson_terms`)
_POISSON_NEAR = 0.5


def _poisson_terms(mu, d):
    """Per-pixel Poisson deviance mu - d + d log(d / mu) (0 log 0 = 0).

    Where mu is within `_POISSON_NEAR` of d (relative), the same quantity as d (t - log1p(t)) with
    t = (mu - d) / d: the direct form cancels two terms of size ~|mu - d| and rounds each log (~14 at 1e6
    counts) to ~1e-6 absolute, so in float32 a pixel with 1e6 counts carries an error of ~1 unit in a term
    of ~0.5. Summed over the bright
    pixels, the loss jittered by +-2 units at 1e7 photons (session 26: a 6.48 wavelength sphere, 0.00025
    wavelength radius steps) and L-BFGS's line search stalled 5 sigma from the optimum; the gradient was
    smooth throughout. The derivatives are those of the direct form (1 - d / mu, d / mu^2)."""
    mu = jnp.maximum(mu, _TINY)
    pos = d > 0
    # double where: pixels with d = 0 (and masked ones, mu = TINY) must not put 0 * inf into 2nd derivatives
    d1 = jnp.where(pos, d, 1.0)
    mu1 = jnp.where(pos, mu, 1.0)
    t = (mu1 - d1) / d1
    near = jnp.abs(t) < _POISSON_NEAR
    tn = jnp.where(near, t, 0.0)
    stable = d1 * (tn - jnp.log1p(tn))
    direct = mu1 - d1 + d1 * (jnp.log(d1) - jnp.log(mu1))
    return jnp.where(pos, jnp.where(near, stable, direct), mu)


def _anscombe_residual(mu, d):
    return 2.0 * (jnp.sqrt(jnp.maximum(d, 0.0) + 0.375) - jnp.sqrt(jnp.maximum(mu, 0.0) + 0.375))


def _log_residual(mu, d, floor):
    return jnp.log(jnp.maximum(d, 0.0) + floor) - jnp.log(jnp.maximum(mu, 0.0) + floor)


class Poisson(AbstractLoss):
    """Poisson negative log-likelihood (deviance form): sum over used pixels of mu - d + d log(d / mu).

    Equals -log L + const; >= 0; about the number of used pixels at a correct model (a chi-square-like
    goodness of fit). Data are photon counts (>= 0). Profiled scale: sum (d - background) / sum model (exact
    without background, then refined by Newton steps). Fisher weight 1 / mu; residuals are deviance residuals
    sign(d - mu) sqrt(2 (mu - d + d log(d / mu))).
    """

    name: ClassVar[str] = "poisson"
    nonnegative: ClassVar[bool] = True

    def terms(self, mu, data):
        return _poisson_terms(mu, data)

    def value(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        return jnp.sum(jnp.where(m, self.terms(mu, d), 0.0))

    def initial_scale(self, model, data, mask, background=0.0):
        w, model, data = _masked(model, data, mask)
        msum = jnp.maximum(jnp.sum(w * model), _TINY)
        return jnp.maximum(jnp.maximum(jnp.sum(w * (data - background)), _TINY) / msum, _TINY)

    def profile_scale(self, model, data, mask, background=0.0, *, newton_steps=6):
        s0 = self.initial_scale(model, data, mask, background)
        if _is_concrete(background) and float(np.asarray(background)) == 0.0:
            return s0  # exact: d/ds sum(s m - d log(s m)) = 0 at s = sum d / sum m
        return self.newton_scale(model, data, mask, background, s0, newton_steps=newton_steps)

    def fisher_weight(self, mu, data, mask):
        return mask.astype(mu.dtype) / jnp.maximum(mu, _TINY)

    def residuals(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        r = jnp.sign(d - mu) * jnp.sqrt(2.0 * jnp.maximum(self.terms(mu, d), 0.0))
        return jnp.where(m, r, jnp.nan)


class Anscombe(AbstractLoss):
    """Gaussian likelihood on Anscombe-transformed counts: 0.5 sum r^2, r = 2 (sqrt(d + 3/8) - sqrt(mu + 3/8)).

    For Poisson counts r has unit variance once mu exceeds a few photons. Profiled scale: the least-squares fit
    of sqrt(d) by sqrt(s model), refined by Newton steps. Fisher weight 1 / (mu + 3/8) (the Gauss-Newton
    curvature); residuals are r.
    """

    name: ClassVar[str] = "anscombe"
    nonnegative: ClassVar[bool] = True

    def terms(self, mu, data):
        return 0.5 * _anscombe_residual(mu, data) ** 2

    def value(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        return jnp.sum(jnp.where(m, self.terms(mu, d), 0.0))

    def initial_scale(self, model, data, mask, background=0.0):
        del background
        w, model, data = _masked(model, data, mask)
        msum = jnp.maximum(jnp.sum(w * model), _TINY)
        return jnp.maximum((jnp.sum(w * jnp.sqrt(jnp.maximum(model * data, 0.0))) / msum) ** 2, _TINY)

    def profile_scale(self, model, data, mask, background=0.0, *, newton_steps=6):
        s0 = self.initial_scale(model, data, mask, background)
        return self.newton_scale(model, data, mask, background, s0, newton_steps=newton_steps)

    def fisher_weight(self, mu, data, mask):
        return mask.astype(mu.dtype) / (jnp.maximum(mu, _TINY) + 0.375)

    def residuals(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        return jnp.where(m, _anscombe_residual(mu, d), jnp.nan)


class LogIntensity(AbstractLoss):
    """Gaussian likelihood on log intensity with its variance profiled out: (n / 2) log(sum r^2 / n),
    r = log(d + floor) - log(mu + floor), n = number of used pixels.

    `floor` (data units, default 1 count, > 0) keeps empty pixels finite. Suits data whose noise is
    multiplicative or unknown (data may be negative after background subtraction); the profiled variance makes
    its curvature give honest uncertainties. `terms` are 0.5 r^2 (the scale minimising their sum minimises
    `value`); profiled scale: the mean log ratio, refined by Newton steps. Fisher weight
    1 / ((mu + floor)^2 var), var the fitted residual variance; residuals are r / rms(r).
    """

    floor: float = eqx.field(default=1.0, converter=float)
    name: ClassVar[str] = "log"
    nonnegative: ClassVar[bool] = False

    def __check_init__(self):
        if not (np.isfinite(self.floor) and self.floor > 0):
            raise ValueError(f"floor must be a positive number (data units), got {self.floor!r}")

    def terms(self, mu, data):
        return 0.5 * _log_residual(mu, data, self.floor) ** 2

    def value(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        n = jnp.sum(m)
        ss = jnp.sum(jnp.where(m, _log_residual(mu, d, self.floor) ** 2, 0.0))
        return 0.5 * n * jnp.log(jnp.maximum(ss / n, _TINY))

    def initial_scale(self, model, data, mask, background=0.0):
        del background
        w, model, data = _masked(model, data, mask)
        lr = jnp.log(jnp.maximum(data, 0.0) + self.floor) - jnp.log(jnp.maximum(model, _TINY))
        return jnp.maximum(jnp.exp(jnp.sum(w * lr) / jnp.maximum(jnp.sum(w), 1.0)), _TINY)

    def profile_scale(self, model, data, mask, background=0.0, *, newton_steps=6):
        s0 = self.initial_scale(model, data, mask, background)
        return self.newton_scale(model, data, mask, background, s0, newton_steps=newton_steps)

    def fisher_weight(self, mu, data, mask):
        w = mask.astype(mu.dtype)
        muf = jnp.maximum(mu, _TINY)
        r = jnp.log(jnp.maximum(data, 0.0) + self.floor) - jnp.log(muf + self.floor)
        r = jnp.where(mask, r, 0.0)  # masked data may hold anything (NaN)
        var = jnp.sum(w * r**2) / jnp.sum(w)
        return w / ((muf + self.floor) ** 2 * var)

    def residuals(self, model, data, mask=None, *, scale=None, background=0.0):
        mu, d, m = self.expected_counts(model, data, mask, scale=scale, background=background)
        r = _log_residual(mu, d, self.floor)
        r = r / jnp.sqrt(jnp.maximum(jnp.sum(jnp.where(m, r**2, 0.0)) / jnp.sum(m), _TINY))
        return jnp.where(m, r, jnp.nan)


LOSSES: dict[str, type[AbstractLoss]] = {cls.name: cls for cls in (Poisson, Anscombe, LogIntensity)}


def as_loss(loss: object, **options) -> AbstractLoss:  # str | AbstractLoss | type: checked below, by name
    """The loss instance for `loss`: a name in `LOSSES` ("poisson", "anscombe", "log"), an `AbstractLoss`
    subclass (built with `options`) or an instance (returned as is). `options` are the class's fields, e.g.
    `as_loss("log", floor=10.0)`.

    Raises `ValueError` naming `loss` and listing the valid names for an unknown name or options the class does
    not take; `TypeError` for anything else.
    """
    if isinstance(loss, AbstractLoss):
        if options:
            raise ValueError(f"loss is already an instance ({loss!r}); options {sorted(options)} not allowed")
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}: loss must be one of {tuple(LOSSES)} or an AbstractLoss instance"
            )
        cls = LOSSES[loss]
    elif isinstance(loss, type) and issubclass(loss, AbstractLoss):
        cls = loss
    else:
        raise TypeError(
            f"loss must be a name in {tuple(LOSSES)} or an AbstractLoss instance, got {type(loss).__name__}"
        )
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"loss {loss!r} does not take options {sorted(options)}: {e}") from None


def _legacy(kind, floor):
    """A loss from the old `(kind, floor=)` calling style: `floor` applies to names only (LogIntensity)."""
    if isinstance(kind, str) and kind in LOSSES and "floor" in LOSSES[kind].__dataclass_fields__:
        return as_loss(kind, floor=floor)
    return as_loss(kind)


def profile_scale(
    kind: str | AbstractLoss,
    model: Float[Array, "*image"],
    data: Float[Array, "*image"],
    mask: Bool[Array, "*image"],
    background: Float[ArrayLike, ""] = 0.0,
    *,
    floor: float = 1.0,
    newton_steps: int = 6,
) -> Float[Array, ""]:
    """Maximum-likelihood scale s of mu = s * model + background over used pixels (differentiable).

    `kind`: a loss name or instance (`as_loss`); `floor` applies to the name "log" only. Starts from the loss's
    closed form (Poisson: sum d / sum model, exact when background = 0; Anscombe: the least-squares fit of
    sqrt(d) by sqrt(s model); log: the mean log ratio) and refines log s by Newton steps on the exact loss
    (skipped for Poisson without background). Dimensionless model -> scale in data units per model unit.
    """
    loss = _legacy(kind, floor)
    return loss.profile_scale(model, data, mask, background, newton_steps=newton_steps)


def poisson_nll(
    model: Real[ArrayLike, "*model"],
    data: Real[ArrayLike, "*data"],
    mask: ArrayLike | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, ""]:
    """`Poisson().value(...)`: sum over mask of mu - d + d log(d / mu), mu = scale * model + background
    (counts per pixel). `scale=None`: profiled (sum d / sum model without background)."""
    return Poisson().value(model, data, mask, scale=scale, background=background)


def anscombe_nll(
    model: Real[ArrayLike, "*model"],
    data: Real[ArrayLike, "*data"],
    mask: ArrayLike | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, ""]:
    """`Anscombe().value(...)`: 0.5 sum r^2, r = 2 (sqrt(d + 3/8) - sqrt(mu + 3/8)). `scale=None`: profiled."""
    return Anscombe().value(model, data, mask, scale=scale, background=background)


def log_intensity_nll(
    model: Real[ArrayLike, "*model"],
    data: Real[ArrayLike, "*data"],
    mask: ArrayLike | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
    floor: float = 1.0,
) -> Float[Array, ""]:
    """`LogIntensity(floor).value(...)`: (n / 2) log(sum r^2 / n), r = log(d + floor) - log(mu + floor),
    n = number of used pixels; `floor` in data units. `scale=None`: profiled."""
    return LogIntensity(floor).value(model, data, mask, scale=scale, background=background)


def residuals(
    kind: str | AbstractLoss,
    model: Real[ArrayLike, "*model"],
    data: Real[ArrayLike, "*data"],
    mask: ArrayLike | None = None,
    *,
    scale: Float[ArrayLike, ""] | None = None,
    background: Float[ArrayLike, ""] = 0.0,
    floor: float = 1.0,
) -> Float[Array, "*image"]:
    """Signed, normalised residual map (NaN at masked pixels) of the loss `kind` (a name or an instance;
    `floor` applies to the name "log" only): Poisson deviance residuals sign(d - mu) sqrt(2 deviance),
    Anscombe residuals, or log residuals divided by their rms."""
    return _legacy(kind, floor).residuals(model, data, mask, scale=scale, background=background)
