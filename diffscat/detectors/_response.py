"""Detector response: composable pieces applied to the expected-photons image.

Each piece is an `eqx.Module` called as `piece(image, key=None) -> image`. Deterministic pieces (`Background`,
`Saturation`, `MCPGain`, `Binning`) are differentiable in their input and parameters; random ones (`Poisson`,
`GaussianReadout`) need a JAX PRNG key and are reproducible with it. `Chain` applies pieces in order and
splits its key among the random ones. Order matters: a `Background` before `Poisson` is a photon background,
after it an electronic offset.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive
from .._custom_types import as_float, is_concrete

__all__ = [
    "AbstractResponse",
    "Ideal",
    "Poisson",
    "GaussianReadout",
    "Background",
    "Saturation",
    "MCPGain",
    "Binning",
    "Chain",
]


class AbstractResponse(eqx.Module):
    """One step of a detector model: image in, image out (same length unit-free counts)."""

    @property
    def is_random(self) -> bool:
        """True when the piece needs a PRNG key."""
        return False

    @abc.abstractmethod
    def __call__(self, image: Float[Array, "*image"], key: PRNGKeyArray | None = None) -> Float[Array, "..."]:
        """Apply the piece to an image (photons or detector units)."""


def _need_key(key, name):
    if key is None:
        raise ValueError(f"{name} is random: pass key=jax.random.key(seed)")
    return key


class Ideal(AbstractResponse):
    """An ideal detector: returns the expected photons unchanged (no noise)."""

    def __call__(self, image, key=None):
        del key
        return jnp.asarray(image)


class Poisson(AbstractResponse):
    """Photon counting: Poisson counts with the image as mean (returned as floats). Not differentiable."""

    @property
    def is_random(self) -> bool:
        return True

    def __call__(self, image, key=None):
        key = _need_key(key, "Poisson")
        image = jnp.asarray(image)
        lam = jnp.maximum(jax.lax.stop_gradient(image), 0.0)
        return jax.random.poisson(key, lam, shape=image.shape).astype(image.dtype)


class GaussianReadout(AbstractResponse):
    """Additive Gaussian readout noise of standard deviation `sigma` (detector units, >= 0)."""

    sigma: Float[Array, ""]

    def __init__(self, sigma):
        self.sigma = check_positive(as_float(sigma, "sigma", ()), "sigma", allow_zero=True)

    @property
    def is_random(self) -> bool:
        return True

    def __call__(self, image, key=None):
        key = _need_key(key, "GaussianReadout")
        image = jnp.asarray(image)
        return image + self.sigma * jax.random.normal(key, image.shape, image.dtype)


class Background(AbstractResponse):
    """Adds `level` (scalar or image-shaped, >= 0 for a photon background; any sign after noise as an offset)."""

    level: Float[Array, "..."]

    def __init__(self, level):
        self.level = as_float(level, "level")

    def __call__(self, image, key=None):
        del key
        image = jnp.asarray(image)
        if self.level.shape not in ((), image.shape):
            raise ValueError(
                f"Background level must be a scalar or shape {image.shape}, got {self.level.shape}"
            )
        return image + self.level


class Saturation(AbstractResponse):
    """Saturation at `level` (detector units, > 0).

    - `mode="hard"`: min(x, level) (gradient 0 above the level);
    - `mode="smooth"`: level * tanh(x / level) (linear for x << level, differentiable everywhere).
    """

    level: Float[Array, ""]
    mode: str = eqx.field(static=True)

    def __init__(self, level, mode: str = "hard"):
        if mode not in ("hard", "smooth"):
            raise ValueError(f"Saturation mode must be 'hard' or 'smooth', got {mode!r}")
        self.level = check_positive(as_float(level, "level", ()), "level")
        self.mode = mode

    def __call__(self, image, key=None):
        del key
        image = jnp.asarray(image)
        if self.mode == "hard":
            return jnp.minimum(image, self.level)
        return self.level * jnp.tanh(image / self.level)


class MCPGain(AbstractResponse):
    """A micro-channel plate + phosphor + camera: nonlinear gain, saturation and a central hole.

    Model (per pixel, x = photons): y = saturation * tanh(gain * x^gamma / saturation), and y = 0 for pixels
    whose centre lies within `hole_radius` (pixels) of `center` (cy, cx) (the MCP's central hole).
    `gamma` < 1 mimics the sub-linear response of a strongly driven MCP, gamma = 1 a linear gain; the tanh
    is the channel saturation (linear in gain * x^gamma when far below `saturation`).

    **Arguments:**
    - `gain`: camera units per photon^gamma, > 0.
    - `gamma`: exponent of the gain curve, > 0 (default 1).
    - `saturation`: largest output, detector units, > 0 (default inf: no saturation).
    - `hole_radius`: radius of the central hole in pixels, >= 0 (default 0: none).
    - `center`: (cy, cx) of the hole in fractional pixels; default the image centre.

    Differentiable in the input and in gain, gamma and saturation (the power uses a safe form at x = 0).
    """

    gain: Float[Array, ""]
    gamma: Float[Array, ""]
    saturation: Float[Array, ""]
    hole_radius: Float[Array, ""]
    center: Float[Array, "2"] | None

    def __init__(self, gain=1.0, gamma=1.0, saturation=float("inf"), hole_radius=0.0, center=None):
        self.gain = check_positive(as_float(gain, "gain", ()), "gain")
        self.gamma = check_positive(as_float(gamma, "gamma", ()), "gamma")
        sat = as_float(saturation, "saturation", ())
        # inf (no saturation) is allowed; anything else must be positive and finite.
        no_sat = is_concrete(sat) and float(sat) == float("inf")
        self.saturation = sat if no_sat else check_positive(sat, "saturation")
        self.hole_radius = check_positive(
            as_float(hole_radius, "hole_radius", ()), "hole_radius", allow_zero=True
        )
        self.center = None if center is None else as_float(center, "center", (2,))

    def __call__(self, image, key=None):
        del key
        image = jnp.asarray(image)
        pos = image > 0
        xs = jnp.where(pos, image, 1.0)
        y = jnp.where(pos, self.gain * xs**self.gamma, 0.0)
        finite = jnp.isfinite(self.saturation)
        s = jnp.where(finite, self.saturation, 1.0)
        y = jnp.where(finite, s * jnp.tanh(y / s), y)
        if image.ndim >= 2:
            ny, nx = image.shape[-2:]
            c = self.center if self.center is not None else jnp.array([(ny - 1) / 2.0, (nx - 1) / 2.0])
            iy = jnp.arange(ny)[:, None] - c[0]
            ix = jnp.arange(nx)[None, :] - c[1]
            y = jnp.where(iy**2 + ix**2 < self.hole_radius**2, 0.0, y)
        return y


class Binning(AbstractResponse):
    """Sums `factor` x `factor` blocks of the last two axes (static; both must divide the image size)."""

    factor: int = eqx.field(static=True)

    def __init__(self, factor: int):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"Binning factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def __call__(self, image, key=None):
        del key
        image = jnp.asarray(image)
        f = self.factor
        if image.ndim < 2:
            raise ValueError(f"Binning needs an image with >= 2 axes, got shape {image.shape}")
        ny, nx = image.shape[-2:]
        if ny % f or nx % f:
            raise ValueError(f"Binning factor {f} must divide the image shape ({ny}, {nx})")
        lead = image.shape[:-2]
        return image.reshape(*lead, ny // f, f, nx // f, f).sum(axis=(-3, -1))


class Chain(AbstractResponse):
    """Applies `pieces` in order; the key is split among the random ones (reproducible for a given key)."""

    pieces: tuple[AbstractResponse, ...]

    def __init__(self, *pieces: AbstractResponse):
        for p in pieces:
            if not isinstance(p, AbstractResponse):
                raise TypeError(f"Chain pieces must be detector responses, got {type(p).__name__}")
        self.pieces = tuple(pieces)

    @property
    def is_random(self) -> bool:
        return any(p.is_random for p in self.pieces)

    def __call__(self, image, key=None):
        n = sum(p.is_random for p in self.pieces)
        keys = list(jax.random.split(_need_key(key, "Chain"), n)) if n else []
        for p in self.pieces:
            image = p(image, keys.pop(0) if p.is_random else None)
        return image
