"""Experiments and detectors: where we look (the direction, q and solid angle of every pixel).

Conventions (docs/physics.md): beam along +z; a pixel is a direction (theta, phi), theta from +z, phi from +x
towards +y; images are indexed [row, col] = [iy, ix]. Transverse qx = k0 sin(theta) cos(phi),
qy = k0 sin(theta) sin(phi), axial qz = k0 (1 - cos(theta)) >= 0; the physical momentum transfer is
q = k_out - k_in = (qx, qy, -qz).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._checks import check_positive, safe_sqrt
from ._custom_types import as_float, is_concrete

__all__ = [
    "AbstractDetector",
    "PixelDirections",
    "QGrid",
    "AngleGrid",
    "FlatDetector",
    "Directions",
    "Experiment",
]


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


class AbstractDetector(eqx.Module):
    """A set of pixel directions. Subclasses are final; see QGrid, AngleGrid, FlatDetector, Directions."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Image shape (rows, cols) or the shape of a Directions array."""

    @abc.abstractmethod
    def pixels(self) -> PixelDirections:
        """Directions, solid angles and validity of every pixel."""

    def nominal_theta_max(self) -> float | None:
        """The detector's stated largest angle (radians) for choosing the voxel pitch; None = use the
        largest angle of any valid pixel."""
        return None

    def separable_axes(self) -> tuple[Float[Array, " nx"], Float[Array, " ny"]] | None:
        """For detectors whose sx depends only on the column and sy only on the row: the two 1-D axes.

        The engines use these for an exact separable DFT. Other detectors return None.
        """
        return None


def _check_theta_max(theta_max_deg: float) -> float:
    t = float(theta_max_deg)
    if not (0.0 < t < 90.0):
        raise ValueError(f"theta_max_deg must be in (0, 90) degrees, got {theta_max_deg}")
    return t


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be an integer number of pixels, got {n!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2 pixels, got {n}")
    return int(n)


class QGrid(AbstractDetector):
    """Pixels uniform in (qx, qy): an n x n grid of pixel centres tiling [-u_max, u_max]^2,
    u_max = k0 sin(theta_max). Pixel step du = 2 u_max / n; solid angle du^2 / (k0^2 cos theta).

    Pixels with |q_perp| >= k0 (corners when theta_max > 45 deg) are marked invalid and get zero intensity.

    **Arguments:**
    - `n`: pixels per side (static, >= 2).
    - `theta_max_deg`: half-width of the grid as a scattering angle along the x and y axes, degrees, in (0, 90).
    """

    n: int = eqx.field(static=True)
    theta_max_deg: float = eqx.field(static=True)

    def __init__(self, n: int, theta_max_deg: float):
        self.n = _check_n(n)
        self.theta_max_deg = _check_theta_max(theta_max_deg)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def nominal_theta_max(self) -> float:
        return math.radians(self.theta_max_deg)

    def separable_axes(self):
        smax = math.sin(math.radians(self.theta_max_deg))
        ds = 2.0 * smax / self.n
        s = (jnp.arange(self.n, dtype=jnp.result_type(float)) - (self.n - 1) / 2.0) * ds
        return s, s

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


class AngleGrid(AbstractDetector):
    """Pixels uniform in angle: (ax, ay) on an n x n grid tiling [-theta_max, theta_max]^2 (radians),
    theta = hypot(ax, ay), phi = atan2(ay, ax). Solid angle da^2 sin(theta)/theta.

    Pixels with theta >= 90 deg (corners when theta_max > 63.6 deg) are invalid.
    """

    n: int = eqx.field(static=True)
    theta_max_deg: float = eqx.field(static=True)

    def __init__(self, n: int, theta_max_deg: float):
        self.n = _check_n(n)
        self.theta_max_deg = _check_theta_max(theta_max_deg)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def nominal_theta_max(self) -> float:
        return math.radians(self.theta_max_deg)

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


class FlatDetector(AbstractDetector):
    """A flat detector at `distance` along the beam, pixels of `pixel_size`, image `shape` (ny, nx).

    Pixel (iy, ix) sits at plane coordinates X = (ix - cx) px, Y = (iy - cy) py, where `center` = (cy, cx) is
    the beam centre in fractional pixel indices (pixel centres are integers; the direct beam hits the plane
    there, at (0, 0, D)). Untilted, the plane is normal to the beam, rows run along +y and columns along +x,
    and theta = atan(hypot(X, Y) / D).

    With `tilt` = (tx, ty) (radians) the plane is rotated about the beam-hit point by R = R_y(ty) R_x(tx):
    a pixel sits at (0, 0, D) + X R e_x + Y R e_y (lab frame), its normal is R e_z.

    The solid angle of each pixel is exact (the rectangle's corner formula, about the foot of the
    perpendicular from the sample to the plane), not the centre approximation p^2 cos^3(theta)/D^2.

    **Arguments:**
    - `distance`: sample-detector distance D along the beam (length unit of the experiment), > 0; fittable.
    - `pixel_size`: pixel pitch, scalar or (py, px), > 0; fittable leaf.
    - `shape`: (ny, nx) pixels (static).
    - `center`: (cy, cx) beam centre, fractional pixels; default the image centre ((ny-1)/2, (nx-1)/2).
    - `tilt`: optional (tx, ty) rotation of the plane about the lab x then y axes, radians, |t| < 60 deg;
      fittable leaf. None (default) means normal to the beam.
    """

    distance: Float[Array, ""]
    pixel_size: Float[Array, "2"]
    center: Float[Array, "2"]
    shape_: tuple[int, int] = eqx.field(static=True)
    tilt: Float[Array, "2"] | None = None

    def __init__(self, distance, pixel_size, shape, center=None, tilt=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"shape must be (ny, nx) with both >= 2, got {shape}")
        self.shape_ = shape
        self.distance = check_positive(as_float(distance, "distance", ()), "distance")
        ps = as_float(pixel_size, "pixel_size")
        if ps.shape == ():
            ps = jnp.stack([ps, ps])
        if ps.shape != (2,):
            raise ValueError(f"pixel_size must be a scalar or (py, px), got shape {ps.shape}")
        self.pixel_size = check_positive(ps, "pixel_size")
        if center is None:
            center = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
        self.center = as_float(center, "center", (2,))
        if tilt is not None:
            tilt = as_float(tilt, "tilt", (2,))
            if is_concrete(tilt) and not np.all(np.abs(np.asarray(tilt)) < math.radians(60.0)):
                raise ValueError(
                    f"tilt must be (tx, ty) in radians with |t| < 60 deg, got {np.asarray(tilt)}"
                )
        self.tilt = tilt

    @property
    def shape(self) -> tuple[int, int]:
        return self.shape_

    def plane_coordinates(self) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """(X, Y) of every pixel centre in the detector plane, same length unit as `distance`."""
        ny, nx = self.shape_
        dt = self.distance.dtype
        iy = jnp.arange(ny, dtype=dt)[:, None]
        ix = jnp.arange(nx, dtype=dt)[None, :]
        X = (ix - self.center[1]) * self.pixel_size[1]
        Y = (iy - self.center[0]) * self.pixel_size[0]
        return jnp.broadcast_to(X, self.shape_), jnp.broadcast_to(Y, self.shape_)

    def tilt_matrix(self) -> Float[Array, "3 3"]:
        """R = R_y(ty) R_x(tx): columns are the plane's x axis, y axis and normal in the lab frame."""
        dt = self.distance.dtype
        if self.tilt is None:
            return jnp.eye(3, dtype=dt)
        tx, ty = self.tilt[0], self.tilt[1]
        cx, sx, cy, sy = jnp.cos(tx), jnp.sin(tx), jnp.cos(ty), jnp.sin(ty)
        z, o = jnp.zeros_like(tx), jnp.ones_like(tx)
        Rx = jnp.stack([jnp.stack([o, z, z]), jnp.stack([z, cx, -sx]), jnp.stack([z, sx, cx])])
        Ry = jnp.stack([jnp.stack([cy, z, sy]), jnp.stack([z, o, z]), jnp.stack([-sy, z, cy])])
        return Ry @ Rx

    def pixel_positions(self) -> Float[Array, "ny nx 3"]:
        """Lab-frame (x, y, z) of every pixel centre, length unit of `distance`."""
        X, Y = self.plane_coordinates()
        R = self.tilt_matrix()
        D = self.distance
        return X[..., None] * R[:, 0] + Y[..., None] * R[:, 1] + jnp.stack([0 * D, 0 * D, D])

    def pixels(self) -> PixelDirections:
        X, Y = self.plane_coordinates()
        D = self.distance

        def F(x, y, h):  # solid angle of the rectangle [0, x] x [0, y] seen from height h over its corner
            return jnp.arctan(x * y / (h * jnp.sqrt(h**2 + x**2 + y**2)))

        hx, hy = self.pixel_size[1] / 2, self.pixel_size[0] / 2
        if self.tilt is None:
            rho2 = X**2 + Y**2
            r = jnp.sqrt(rho2 + D**2)
            omc = rho2 / (r * (r + D))
            sx, sy = X / r, Y / r
            Xf, Yf, h = X, Y, D
        else:
            P = self.pixel_positions()
            R = self.tilt_matrix()
            r = jnp.sqrt(jnp.sum(P**2, axis=-1))
            rho2 = P[..., 0] ** 2 + P[..., 1] ** 2
            omc = rho2 / (r * (r + P[..., 2]))
            sx, sy = P[..., 0] / r, P[..., 1] / r
            # Foot of the perpendicular from the sample: height h = D n_z, plane coordinates -D (R_20, R_21).
            h = D * R[2, 2]
            Xf, Yf = X + D * R[2, 0], Y + D * R[2, 1]
        sa = F(Xf + hx, Yf + hy, h) - F(Xf - hx, Yf + hy, h) - F(Xf + hx, Yf - hy, h) + F(Xf - hx, Yf - hy, h)
        return PixelDirections(sx, sy, omc, sa, jnp.ones(self.shape_, bool))


class Directions(AbstractDetector):
    """Arbitrary pixel directions: `theta`, `phi` in radians, any (equal) array shape.

    `solid_angle` (sr, same shape) is optional; without it the solid angle is NaN (photon counts then need one).
    """

    theta: Float[Array, "*pix"]
    phi: Float[Array, "*pix"]
    solid_angle: Float[Array, "*pix"] | None

    def __init__(self, theta, phi, solid_angle=None):
        theta = as_float(theta, "theta")
        phi = as_float(phi, "phi")
        if theta.shape != phi.shape:
            raise ValueError(f"theta and phi must have the same shape, got {theta.shape} and {phi.shape}")
        if theta.ndim == 0:
            raise ValueError("theta and phi must be arrays with at least one element")
        self.theta = check_positive(theta, "theta", allow_zero=True)
        self.phi = phi
        if solid_angle is not None:
            solid_angle = as_float(solid_angle, "solid_angle", theta.shape)
        self.solid_angle = solid_angle

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.theta.shape)

    def pixels(self) -> PixelDirections:
        st = jnp.sin(self.theta)
        sa = self.solid_angle if self.solid_angle is not None else jnp.full(self.shape, jnp.nan)
        valid = self.theta < math.pi / 2
        return PixelDirections(
            st * jnp.cos(self.phi), st * jnp.sin(self.phi), 2 * jnp.sin(self.theta / 2) ** 2, sa, valid
        )


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
