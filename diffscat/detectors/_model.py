"""A whole detector model: photons per pixel, then a response chain, plus a use-mask."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._experiment import Experiment
from ._photons import expected_photons
from ._polarisation import POLARISATIONS
from ._response import AbstractResponse, Ideal

__all__ = ["DetectorModel"]


class DetectorModel(eqx.Module):
    """dsigma/dOmega -> expected photons -> detector output.

    **Arguments:**
    - `fluence`: photons per length^2 (the experiment's length unit), fittable leaf.
    - `polarisation`: "x", "y", "unpolarised" or "none" (static).
    - `efficiency`: quantum efficiency in [0, 1] (scalar or image), fittable leaf.
    - `response`: an `AbstractResponse` (e.g. `Chain(Poisson(), GaussianReadout(2.0))`), default `Ideal()`.
    - `mask`: boolean use-mask (True = good) of the output image, or None (a boolean leaf: never
      differentiated).
    """

    fluence: Float[Array, ""]
    efficiency: Float[Array, "..."]
    response: AbstractResponse
    polarisation: str = eqx.field(static=True)
    mask: Bool[Array, "..."] | None

    def __init__(self, fluence, polarisation="none", efficiency=1.0, response=None, mask=None):
        if polarisation not in POLARISATIONS:
            raise ValueError(f"polarisation must be one of {POLARISATIONS}, got {polarisation!r}")
        self.fluence = jnp.asarray(fluence, dtype=jnp.result_type(float))
        self.efficiency = jnp.asarray(efficiency, dtype=jnp.result_type(float))
        self.polarisation = polarisation
        self.response = Ideal() if response is None else response
        if not isinstance(self.response, AbstractResponse):
            raise TypeError(f"response must be a detector response, got {type(response).__name__}")
        self.mask = None if mask is None else jnp.asarray(np.asarray(mask, bool))

    def expected(self, intensity: Float[Array, "*image"], experiment: Experiment) -> Float[Array, "*image"]:
        """Expected photons per pixel (differentiable)."""
        return expected_photons(intensity, experiment, self.fluence, self.polarisation, self.efficiency)

    def __call__(
        self, intensity: Float[Array, "*image"], experiment: Experiment, key: PRNGKeyArray | None = None
    ) -> Float[Array, "..."]:
        """Detector output: the response applied to the expected photons (masked pixels are 0)."""
        out = self.response(self.expected(intensity, experiment), key)
        if self.mask is not None:
            if self.mask.shape != out.shape[-2:]:
                raise ValueError(f"mask shape {self.mask.shape} != output image shape {out.shape[-2:]}")
            out = jnp.where(self.mask, out, 0.0)
        return out

    @property
    def is_random(self) -> bool:
        return self.response.is_random
