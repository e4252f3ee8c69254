"""Experiments: wavelength + detector, i.e. where the pattern is sampled (the direction, q and solid angle of
every pixel).

The detector classes live in `diffscat.detectors` (`_base.py`, `_qgrid.py`, `_anglegrid.py`, `_flat.py`,
`_directions.py`); they are re-exported here so `from diffscat._experiment import QGrid` keeps working.
Conventions (docs/conventions.md): beam along +z; images are indexed [row, col] = [iy, ix];
q = k_out - k_in = (qx, qy, -qz).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_positive
from ._custom_types import as_float
from .detectors._anglegrid import AngleGrid
from .detectors._base import AbstractDetector, PixelDirections
from .detectors._directions import Directions
from .detectors._flat import FlatDetector
from .detectors._qgrid import QGrid

__all__ = [
    "AbstractDetector",
    "PixelDirections",
    "QGrid",
    "AngleGrid",
    "FlatDetector",
    "Directions",
    "Experiment",
]


class Experiment(eqx.Module):
    """Wavelength and detector: everything that fixes where the pattern is sampled.

    **Arguments:**
    - `wavelength`: lambda, > 0, in the experiment's length unit (all lengths: sizes, pixel size, distance,
      use the same unit). Fittable array leaf.
    - `detector`: a QGrid, AngleGrid, FlatDetector or Directions.

    Image-shaped properties: `theta`, `phi` (radians), `solid_angle` (sr), `q` (physical momentum transfer
    k_out - k_in, shape (*image, 3), inverse length units), `qz` (= k0 (1 - cos theta) >= 0), `valid`.
    """

    wavelength: Float[Array, ""]
    detector: AbstractDetector
    sampling_hint: tuple[float, float] | None = eqx.field(static=True, repr=False)

    def __init__(self, wavelength, detector: AbstractDetector):
        if not isinstance(detector, AbstractDetector):
            raise TypeError(f"detector must be a diffscat detector, got {type(detector).__name__}")
        self.wavelength = check_positive(as_float(wavelength, "wavelength", ()), "wavelength")
        self.detector = detector
        # (wavelength, theta_max) fixed while concrete, so a default voxel grid can be chosen under jit.
        try:
            self.sampling_hint = (float(self.wavelength), self.theta_max)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            self.sampling_hint = None

    @property
    def k0(self) -> Float[Array, ""]:
        """Wavenumber 2 pi / lambda."""
        return 2 * jnp.pi / self.wavelength

    @property
    def shape(self) -> tuple[int, ...]:
        return self.detector.shape

    def pixels(self) -> PixelDirections:
        return self.detector.pixels()

    @property
    def theta(self) -> Float[Array, "*image"]:
        return self.pixels().theta

    @property
    def phi(self) -> Float[Array, "*image"]:
        return self.pixels().phi

    @property
    def solid_angle(self) -> Float[Array, "*image"]:
        return self.pixels().solid_angle

    @property
    def valid(self):
        return self.pixels().valid

    @property
    def q(self) -> Float[Array, "*image 3"]:
        """Physical momentum transfer q = k_out - k_in = (qx, qy, -qz), inverse length."""
        return self.pixels().q(self.k0)

    @property
    def theta_max(self) -> float:
        """Largest scattering angle the detector is meant to cover, radians (concrete geometry only).

        QGrid / AngleGrid: their `theta_max_deg` (the corners reach further); others: the largest angle of
        any valid pixel."""
        nominal = self.detector.nominal_theta_max()
        if nominal is not None:
            return nominal
        th = np.asarray(self.theta)
        return float(np.max(np.where(np.asarray(self.valid), th, 0.0)))
