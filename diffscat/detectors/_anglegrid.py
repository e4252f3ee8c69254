"""AngleGrid: pixels uniform in scattering angle."""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._checks import safe_sqrt
from ._base import PixelDirections, check_n, check_theta_max, register_detector
from ._qgrid import GRID_KEYS, AbstractSquareGrid

__all__ = ["AngleGrid"]


@register_detector
class AngleGrid(AbstractSquareGrid):
    """Pixels uniform in angle: (ax, ay) on an n x n grid tiling [-theta_max, theta_max]^2 (radians),
    theta = hypot(ax, ay), phi = atan2(ay, ax). Solid angle da^2 sin(theta)/theta.

    Pixels with theta >= 90 deg (corners when theta_max > 63.6 deg) are invalid.

    **Arguments:**
    - `n`: pixels per side (static, >= 2).
    - `theta_max_deg`: half-width of the grid along the x and y axes, degrees, in (0, 90).
    """

    type_name: ClassVar[str] = "anglegrid"
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
        """The corners reach theta = sqrt 2 theta_max (times `margin`), capped at pi/2."""
        return min(math.sqrt(2.0) * theta_max * margin, math.pi / 2)

    def pixels(self) -> PixelDirections:
        tmax = math.radians(self.theta_max_deg)
        da = 2.0 * tmax / self.n
        a = (jnp.arange(self.n, dtype=jnp.result_type(float)) - (self.n - 1) / 2.0) * da
        ax, ay = jnp.meshgrid(a, a, indexing="xy")
        th = safe_sqrt(ax**2 + ay**2)
        # sin(theta)/theta, finite with finite gradient at theta = 0.
        small = th < 1e-3
        ths = jnp.where(small, 1.0, th)
        sinc = jnp.where(small, 1.0 - th**2 / 6.0, jnp.sin(ths) / ths)
        valid = th < math.pi / 2
        omc = 2.0 * jnp.sin(th / 2.0) ** 2
        sa = jnp.where(valid, da**2 * sinc, 0.0)
        return PixelDirections(ax * sinc, ay * sinc, omc, sa, valid)
