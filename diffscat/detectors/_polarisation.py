"""Polarisation factors of the scattered intensity (docs/conventions.md)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._experiment import Experiment
from ._base import PixelDirections

__all__ = ["POLARISATIONS", "pixel_weight", "polarisation_factor"]

POLARISATIONS = ("x", "y", "unpolarised", "none")


def polarisation_factor(pixels: Experiment | PixelDirections, kind: str) -> Float[Array, "*image"]:
    """Dimensionless factor multiplying the scalar dsigma/dOmega for a polarised beam.

    - "x" (electric field along x): 1 - sin^2(theta) cos^2(phi) = 1 - sx^2
    - "y": 1 - sin^2(theta) sin^2(phi) = 1 - sy^2
    - "unpolarised": (1 + cos^2(theta)) / 2
    - "none": 1 (the scalar theory, |S1|^2 in Mie terms)

    **Arguments:**
    - `pixels`: an `Experiment` or its `PixelDirections`.
    - `kind`: one of the four names above.
    """
    if isinstance(pixels, Experiment):
        pixels = pixels.pixels()
    if not isinstance(pixels, PixelDirections):
        raise TypeError(f"pixels must be an Experiment or PixelDirections, got {type(pixels).__name__}")
    if kind == "x":
        return 1.0 - pixels.sx**2
    if kind == "y":
        return 1.0 - pixels.sy**2
    if kind == "unpolarised":
        cos_t = 1.0 - pixels.omc
        return (1.0 + cos_t**2) / 2.0
    if kind == "none":
        return jnp.ones_like(pixels.sx)
    raise ValueError(f"polarisation must be one of {POLARISATIONS}, got {kind!r}")


def pixel_weight(
    pixels: Experiment | PixelDirections, polarisation: str = "none", *, solid_angle: bool = True
) -> Float[Array, "*image"]:
    """What turns dsigma/dOmega [length^2/sr] into photons per unit fluence in each pixel: the pixel's solid
    angle [sr] (when `solid_angle`) times the polarisation factor (dimensionless). The one place this product
    is formed (`expected_photons`, `fitting.expected_signal`, the batch fitters)."""
    if isinstance(pixels, Experiment):
        pixels = pixels.pixels()
    w = polarisation_factor(pixels, polarisation)
    return w * pixels.solid_angle if solid_angle else w
