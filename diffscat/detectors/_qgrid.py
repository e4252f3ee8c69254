"""QGrid: pixels uniform in transverse momentum (qx, qy)."""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._checks import safe_sqrt
from ._base import AbstractDetector, ConfigCheck, PixelDirections, check_n, check_theta_max, register_detector

__all__ = ["QGrid"]

GRID_KEYS = frozenset({"n", "theta_max_deg"})


def check_grid_config(check: ConfigCheck) -> None:
    """Config values of an n x n grid up to theta_max_deg (QGrid, AngleGrid)."""
    check.get("n", "int", required=True, min_=2)
    tm = check.get("theta_max_deg", "number", required=True, positive=True)
    if tm >= 90:
        check.error("theta_max_deg", tm, "must be < 90")


def grid_center(n: int) -> tuple[float, float]:
    """(cy, cx) of the direct beam on an n x n grid centred on the beam: the image centre."""
    return ((n - 1) / 2.0, (n - 1) / 2.0)


class AbstractSquareGrid(AbstractDetector):
    """n x n pixels up to `theta_max_deg` (QGrid, AngleGrid): their beam centre, binning, config and CXI forms.

    Subclasses declare the fields `n` and `theta_max_deg` and their pixel directions."""

    n: eqx.AbstractVar[int]
    theta_max_deg: eqx.AbstractVar[float]

    def beam_center(self) -> tuple[float, float]:
        return grid_center(self.n)

    def binned(self, factor: int) -> AbstractSquareGrid:
        return type(self)(self.n // factor, self.theta_max_deg)

    @classmethod
    def check_config(cls, check: ConfigCheck) -> None:
        check_grid_config(check)

    @classmethod
    def from_config(cls, d: dict) -> AbstractSquareGrid:
        return cls(d["n"], float(d["theta_max_deg"]))

    def to_config(self) -> dict:
        return {"type": self.type_name, "n": self.n, "theta_max_deg": self.theta_max_deg}

    @classmethod
    def from_cxi(cls, det_group, saved, image_shape, metres_per_unit: float):
        if saved is None:
            return None, (False, False)
        return cls(int(saved.attrs["n"]), float(saved.attrs["theta_max_deg"])), (False, False)

    def to_cxi(self, det_group, saved, metres_per_unit: float) -> bool:
        saved.attrs["n"] = self.n
        saved.attrs["theta_max_deg"] = self.theta_max_deg
        return True


@register_detector
class QGrid(AbstractSquareGrid):
    """Pixels uniform in (qx, qy): an n x n grid of pixel centres tiling [-u_max, u_max]^2,
    u_max = k0 sin(theta_max). Pixel step du = 2 u_max / n; solid angle du^2 / (k0^2 cos theta).

    Pixels with |q_perp| >= k0 (corners when theta_max > 45 deg) are marked invalid and get zero intensity.

    **Arguments:**
    - `n`: pixels per side (static, >= 2).
    - `theta_max_deg`: half-width of the grid as a scattering angle along the x and y axes, degrees, in (0, 90).
    """

    type_name: ClassVar[str] = "qgrid"
    config_keys: ClassVar[frozenset[str]] = GRID_KEYS

    n: int = eqx.field(static=True)
    theta_max_deg: float = eqx.field(static=True)

    def __init__(self, n: numbers.Real, theta_max_deg: numbers.Real):
        self.n = check_n(n)
        self.theta_max_deg = check_theta_max(theta_max_deg)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def nominal_theta_max(self) -> float:
        return math.radians(self.theta_max_deg)

    def theta_bound(self, theta_max: float, margin: float = 1.0) -> float:
        """The corners reach sin(theta) = sqrt 2 sin(theta_max) (static grid: `margin` unused)."""
        return math.asin(min(1.0, math.sqrt(2.0) * math.sin(theta_max)))

    def separable_axes(self):
        smax = math.sin(math.radians(self.theta_max_deg))
        ds = 2.0 * smax / self.n
        s = (jnp.arange(self.n, dtype=jnp.result_type(float)) - (self.n - 1) / 2.0) * ds
        return s, s

    def separable_layout(self) -> str:
        return "symmetric"

    def pixels(self) -> PixelDirections:
        sx1, sy1 = self.separable_axes()
        sx, sy = jnp.meshgrid(sx1, sy1, indexing="xy")  # [iy, ix]
        s2 = sx**2 + sy**2
        valid = s2 < 1.0
        cos_t = safe_sqrt(1.0 - s2)
        omc = jnp.where(valid, s2 / (1.0 + cos_t), 1.0)
        ds = sx1[1] - sx1[0]
        sa = jnp.where(valid, ds**2 / jnp.where(valid, cos_t, 1.0), 0.0)
        return PixelDirections(sx, sy, omc, sa, valid)

    def plot_axes(self, wavelength, length_unit: str | None = None, *, plane_unit: str | None = None):
        """(q_x, q_y) in inverse length units: the grid spans +-k0 sin(theta_max) along both axes."""
        k0 = 2 * math.pi / float(wavelength)
        s = math.sin(math.radians(self.theta_max_deg))
        unit = "inverse length" if length_unit is None else f"1/{length_unit}"
        return [-k0 * s, k0 * s, -k0 * s, k0 * s], "q_x", "q_y", unit
