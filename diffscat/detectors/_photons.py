"""Photon numbers: fluence, photon energy and the expected photons per pixel."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_positive
from .._custom_types import as_float
from .._experiment import Experiment
from ._polarisation import pixel_weight

__all__ = ["PLANCK", "SPEED_OF_LIGHT", "photon_energy", "fluence_from_pulse", "expected_photons"]

PLANCK = 6.62607015e-34  # J s (exact, SI 2019)
SPEED_OF_LIGHT = 299_792_458.0  # m / s (exact)


def photon_energy(wavelength, length_unit_m: float) -> Float[Array, ""]:
    """Photon energy h c / lambda in joules.

    **Arguments:**
    - `wavelength`: lambda in the user's length unit, > 0.
    - `length_unit_m`: metres per user length unit (e.g. 1e-9 for nm; see `diffscat.io.length_unit_m`).
    """
    lam = check_positive(as_float(wavelength, "wavelength", ()), "wavelength")
    return PLANCK * SPEED_OF_LIGHT / (lam * float(length_unit_m))


def fluence_from_pulse(pulse_energy, photon_energy_j, focus_area, transmission=1.0) -> Float[Array, ""]:
    """Fluence [photons / length^2] from a pulse: transmission x pulse_energy / (photon_energy x focus_area).

    **Arguments:**
    - `pulse_energy`: energy of the pulse in joules, > 0.
    - `photon_energy_j`: energy of one photon in joules, > 0 (`photon_energy(wavelength, unit)`).
    - `focus_area`: effective focal area in the user's length unit squared (e.g. nm^2), > 0; for a flat-top
      beam the spot area, for a Gaussian beam pi w^2 / 2 at the peak (w: 1/e^2 radius).
    - `transmission`: beamline transmission in [0, 1].

    Returns the fluence in photons per (user length unit)^2, a differentiable array.
    """
    e = check_positive(as_float(pulse_energy, "pulse_energy", ()), "pulse_energy")
    hv = check_positive(as_float(photon_energy_j, "photon_energy_j", ()), "photon_energy_j")
    a = check_positive(as_float(focus_area, "focus_area", ()), "focus_area")
    t = check_positive(as_float(transmission, "transmission", ()), "transmission", allow_zero=True)
    return t * e / (hv * a)


def expected_photons(
    intensity: Float[Array, "*image"],
    experiment: Experiment,
    fluence,
    polarisation: str = "none",
    efficiency=1.0,
) -> Float[Array, "*image"]:
    """Expected photons per pixel = fluence x dsigma/dOmega x solid angle x polarisation x efficiency.

    **Arguments:**
    - `intensity`: dsigma/dOmega [length^2 / sr] from `diffscat.simulate`, image-shaped.
    - `experiment`: the experiment it was simulated for (gives each pixel's solid angle [sr] and direction).
    - `fluence`: photons per length^2 (same length unit as the experiment), scalar >= 0, differentiable.
    - `polarisation`: "x", "y", "unpolarised" or "none" (factor 1, the scalar MSFT as is); see
      `polarisation_factor`.
    - `efficiency`: detector quantum efficiency, scalar or image-shaped, in [0, 1].

    Invalid pixels (e.g. QGrid corners) give 0. Fully differentiable in intensity, fluence and geometry.
    """
    intensity = jnp.asarray(intensity)
    pix = experiment.pixels()
    if intensity.shape != tuple(pix.solid_angle.shape):
        raise ValueError(
            f"intensity has shape {intensity.shape} but the experiment's detector has {pix.solid_angle.shape}"
        )
    f = check_positive(as_float(fluence, "fluence", ()), "fluence", allow_zero=True)
    eff = check_positive(as_float(efficiency, "efficiency"), "efficiency", allow_zero=True)
    if eff.shape not in ((), intensity.shape):
        raise ValueError(f"efficiency must be a scalar or image-shaped {intensity.shape}, got {eff.shape}")
    out = f * intensity * pixel_weight(pix, polarisation) * eff
    return jnp.where(pix.valid, out, 0.0)
