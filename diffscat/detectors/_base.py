"""Pixel directions, the detector interface and the registry of detector types (config / CXI type names).

Conventions (docs/conventions.md): beam along +z; a pixel is a direction (theta, phi), theta from +z, phi from +x
towards +y; images are indexed [row, col] = [iy, ix]. Transverse qx = k0 sin(theta) cos(phi),
qy = k0 sin(theta) sin(phi), axial qz = k0 (1 - cos(theta)) >= 0; the physical momentum transfer is
q = k_out - k_in = (qx, qy, -qz).

Adding a detector type (docs/detectors.md): subclass `AbstractDetector`, implement `shape` and `pixels`, override
the defaults that do not fit (bounds, layout, beam centre, plot axes, binning, fittable leaves), and for config /
CXI support set `type_name`, `config_keys` and implement `check_config`, `from_config`, `to_config`, `from_cxi`,
`to_cxi`, then decorate the class with `@register_detector`.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Protocol, runtime_checkable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._checks import safe_sqrt

__all__ = ["PixelDirections", "AbstractDetector", "DETECTOR_TYPES", "register_detector", "detector_type"]


class PixelDirections(eqx.Module):
    """Unit scattering directions of the pixels, image-shaped.

    `sx`, `sy`: transverse components sin(theta) cos(phi), sin(theta) sin(phi) of k_out / k0;
    `omc`: 1 - cos(theta), computed without cancellation; `solid_angle`: sr per pixel;
    `valid`: False for pixels that are not a forward direction (e.g. QGrid corners beyond k0).
    """

    sx: Float[Array, "*pix"]
    sy: Float[Array, "*pix"]
    omc: Float[Array, "*pix"]
    solid_angle: Float[Array, "*pix"]
    valid: Bool[Array, "*pix"]

    @property
    def theta(self) -> Float[Array, "*pix"]:
        rho = safe_sqrt(self.sx**2 + self.sy**2)
        return jnp.arctan2(rho, 1.0 - self.omc)

    @property
    def phi(self) -> Float[Array, "*pix"]:
        return jnp.arctan2(self.sy, self.sx)

    def q(self, k0) -> Float[Array, "*pix 3"]:
        """Physical momentum transfer q = k_out - k_in = k0 (sx, sy, -omc), inverse length (k0 = 2 pi / lambda)."""
        return k0 * jnp.stack([self.sx, self.sy, -self.omc], axis=-1)


@runtime_checkable
class ConfigCheck(Protocol):
    """What `AbstractDetector.check_config` gets from the config reader: typed look-ups whose errors name the
    full key (`experiment.detector.<key>`), as `diffscat.io.ConfigError`."""

    def get(self, key: str, kind: str, *, required=False, positive=False, min_=None) -> Any: ...

    def numbers(self, key: str, length: int | None = None, positive=False) -> list[float]: ...

    def error(self, key: str, value, message: str) -> None: ...


class AbstractDetector(eqx.Module):
    """A set of pixel directions. Subclasses are final; see QGrid, AngleGrid, FlatDetector, Directions.

    Everything a caller needs to know about a detector's geometry is asked through methods here (never by
    `isinstance` on the concrete class): static angular bounds, the separable layout, the beam centre, plot axes,
    binning, fittable leaves, and (for registered types) the config-dict and CXI representations.
    """

    # Name in configs (`[experiment.detector] type`) and CXI files (`/entry/diffscat/detector` attr `type`);
    # None: not serialisable. Registered types are listed in `DETECTOR_TYPES`.
    type_name: ClassVar[str | None] = None
    # Config keys besides "type" accepted for this type.
    config_keys: ClassVar[frozenset[str]] = frozenset()

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Image shape (rows, cols) or the shape of a Directions array."""

    @abc.abstractmethod
    def pixels(self) -> PixelDirections:
        """Directions, solid angles and validity of every pixel."""

    # ------------------------------------------------------------------------------------------- bounds

    def nominal_theta_max(self) -> float | None:
        """The detector's stated largest angle (radians) for choosing the voxel pitch; None = use the
        largest angle of any valid pixel."""
        return None

    def theta_bound(self, theta_max: float, margin: float = 1.0) -> float:
        """Static upper bound (radians, <= pi/2) on the scattering angle of every valid pixel.

        `theta_max`: the experiment's concrete `theta_max` (the nominal value, or the largest valid-pixel angle);
        `margin`: relative allowance (>= 1) for fittable geometry that may move after construction. Default:
        min(margin theta_max, pi/2). Grids whose corners reach beyond `theta_max` scale it (AngleGrid: sqrt 2
        theta_max; QGrid: sin theta = sqrt 2 sin theta_max)."""
        return min(theta_max * margin, math.pi / 2)

    def separable_axes(self) -> tuple[Float[Array, " nx"], Float[Array, " ny"]] | None:
        """For detectors whose sx depends only on the column and sy only on the row: the two 1-D axes.

        The engines use these for an exact separable DFT. Other detectors return None.
        """
        return None

    def separable_layout(self) -> str:
        """Layout of `separable_axes` for the compressed transform: "symmetric" (both axes equal and symmetric
        about 0, so the DFT can be parity-folded) or "separable". Only used when `separable_axes()` is not None."""
        return "separable"

    # ------------------------------------------------------------------------------------------- beam centre

    def beam_center(self) -> tuple[float, float] | Float[Array, "2"] | None:
        """(cy, cx): where the direct beam hits the image, fractional pixel indices; None where meaningless
        (e.g. arbitrary Directions). Default None."""
        return None

    def with_beam_center(self, center) -> AbstractDetector:
        """A copy with the beam centre moved to `center` (cy, cx) and every other field kept. Detectors whose
        centre is fixed by construction raise ValueError."""
        raise ValueError(f"{type(self).__name__} has no adjustable beam centre")

    def fittable_fields(self) -> dict[str, tuple[str, ...]]:
        """Fit-parameter name -> attribute path (inside the detector) of the geometry leaves a fit may free."""
        return {}

    def binned(self, factor: int) -> AbstractDetector:
        """The detector whose pixels are the `factor` x `factor` bins of this one (ValueError if unsupported)."""
        raise ValueError(f"binning is not supported for {type(self).__name__}")

    # ------------------------------------------------------------------------------------------- plotting

    def plot_axes(
        self, wavelength, length_unit: str | None = None, *, plane_unit: str | None = None
    ) -> tuple[list[float] | None, str, str, str]:
        """(extent [x0, x1, y0, y1] or None, x label, y label, unit label) for showing an image-shaped pattern.

        `wavelength`: in the experiment's length unit; `length_unit`: its name for the labels (None: the generic
        words "length" / "inverse length"). `plane_unit`: for detectors whose axes are positions on a plane
        (FlatDetector), the length unit to show them in (e.g. "mm", converted from `length_unit`, which it
        needs); other detectors ignore it. Default: angles theta_x, theta_y in degrees for 2-D images, pixel
        indices otherwise."""
        pix = self.pixels()
        th, ph = np.asarray(pix.theta), np.asarray(pix.phi)
        if th.ndim == 2:
            tx = np.degrees(th * np.cos(ph))
            ty = np.degrees(th * np.sin(ph))
            return [tx.min(), tx.max(), ty.min(), ty.max()], "theta_x", "theta_y", "deg"
        return None, "column", "row", "pixels"

    # ------------------------------------------------------------------------------------------- serialisation

    @classmethod
    def check_config(cls, check: ConfigCheck) -> None:
        """Validate the values of a config table of this type (keys are already checked against
        `config_keys`); raise through `check`."""
        raise ValueError(f"{cls.__name__} has no config representation")

    @classmethod
    def from_config(cls, d: dict) -> AbstractDetector:
        """Build from a validated config table (lengths in the config's length unit)."""
        raise ValueError(f"{cls.__name__} has no config representation")

    def to_config(self) -> dict:
        """The config table (with "type") that `from_config` turns back into this detector."""
        raise ValueError(f"{type(self).__name__} has no config representation")

    @classmethod
    def from_cxi(cls, det_group, saved, image_shape, metres_per_unit: float):
        """(detector or None, (flip_rows, flip_cols)) from an open CXI file.

        `det_group`: the h5py instrument detector group or None; `saved`: the `/entry/diffscat/detector` group
        written by `to_cxi` or None; `image_shape`: (ny, nx); `metres_per_unit`: metres per user length unit.
        None when the file holds no geometry of this type."""
        return None, (False, False)

    def to_cxi(self, det_group, saved, metres_per_unit: float) -> bool:
        """Write the geometry: CXI datasets into `det_group` (SI metres) and exact user-unit attributes into
        `saved` (its "type" attribute is already set). Returns False when the type is not stored in CXI files."""
        return False


DETECTOR_TYPES: dict[str, type[AbstractDetector]] = {}


def register_detector(cls):
    """Class decorator: register a detector class under its `type_name` (configs and CXI files)."""
    name = cls.type_name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__}.type_name must be a non-empty string to register, got {name!r}")
    if name in DETECTOR_TYPES and DETECTOR_TYPES[name] is not cls:
        raise ValueError(f"detector type {name!r} is already registered to {DETECTOR_TYPES[name].__name__}")
    DETECTOR_TYPES[name] = cls
    return cls


def detector_type(name: str) -> type[AbstractDetector]:
    """The registered detector class of a config / CXI type name (ValueError naming the known ones)."""
    try:
        return DETECTOR_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown detector type {name!r}; use one of {sorted(DETECTOR_TYPES)}") from None


def check_theta_max(theta_max_deg: float) -> float:
    t = float(theta_max_deg)
    if not (0.0 < t < 90.0):
        raise ValueError(f"theta_max_deg must be in (0, 90) degrees, got {theta_max_deg}")
    return t


def check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be an integer number of pixels, got {n!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2 pixels, got {n}")
    return int(n)
