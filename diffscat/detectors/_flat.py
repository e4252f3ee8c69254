"""FlatDetector: a flat pixel array at a distance along the beam, optionally tilted."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_positive
from .._custom_types import as_float, is_concrete, mm
from ._base import AbstractDetector, ConfigCheck, PixelDirections, register_detector

__all__ = ["FlatDetector"]


@register_detector
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

    type_name: ClassVar[str] = "flat"
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"distance", "pixel_size", "shape", "center", "tilt_deg"}
    )

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
        return mm(Ry, Rx)

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

    # ------------------------------------------------------------------------------------------- geometry API

    def beam_center(self) -> Float[Array, "2"]:
        return self.center

    def with_beam_center(self, center) -> FlatDetector:
        """A copy with `center` = (cy, cx) (fractional pixels); distance, pixel size, shape and tilt kept."""
        c = as_float(center, "center", (2,))
        return eqx.tree_at(lambda d: d.center, self, c.astype(self.center.dtype))

    def fittable_fields(self) -> dict[str, tuple[str, ...]]:
        return {"distance": ("distance",), "pixel_size": ("pixel_size",), "beam_center": ("center",)}

    def binned(self, factor: int) -> FlatDetector:
        ny, nx = self.shape_
        c = (np.asarray(self.center) + 0.5) / factor - 0.5
        return FlatDetector(
            self.distance, self.pixel_size * factor, (ny // factor, nx // factor), c, self.tilt
        )

    def plot_axes(self, wavelength, length_unit: str | None = None, *, plane_unit: str | None = None):
        """Plane coordinates (X, Y) of the pixel edges: in the length unit of `distance`, or in `plane_unit`
        (e.g. "mm"; needs `length_unit`) with the labels "detector X", "detector Y"."""
        X, Y = (np.asarray(a) for a in self.plane_coordinates())
        px, py = np.asarray(self.pixel_size)[::-1]
        ext = [X.min() - px / 2, X.max() + px / 2, Y.min() - py / 2, Y.max() + py / 2]
        if plane_unit is not None and length_unit is not None:
            from ..io._units import length_unit_m

            f = length_unit_m(length_unit) / length_unit_m(plane_unit)
            return [float(e) * f for e in ext], "detector X", "detector Y", plane_unit
        return ext, "X", "Y", f"detector plane, {length_unit or 'length'}"

    # ------------------------------------------------------------------------------------------- config

    @classmethod
    def check_config(cls, check: ConfigCheck) -> None:
        check.get("distance", "number", required=True, positive=True)
        ps = check.get("pixel_size", "any", required=True)
        if isinstance(ps, int | float) and not isinstance(ps, bool):
            if ps <= 0:
                check.error("pixel_size", ps, "must be positive")
        else:
            check.numbers("pixel_size", 2, positive=True)
        sh = check.get("shape", "list", required=True)
        if len(sh) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 2 for x in sh):
            check.error("shape", sh, "must be [ny, nx], integers >= 2")
        if check.get("center", "any") is not None:
            check.numbers("center", 2)
        if check.get("tilt_deg", "any") is not None:
            tl = check.numbers("tilt_deg", 2)
            if any(abs(x) >= 60 for x in tl):
                check.error("tilt_deg", tl, "must be within (-60, 60) degrees")

    @classmethod
    def from_config(cls, d: dict) -> FlatDetector:
        tilt = None if "tilt_deg" not in d else np.radians(np.asarray(d["tilt_deg"], float))
        center = None if "center" not in d else np.asarray(d["center"], float)
        return cls(float(d["distance"]), np.asarray(d["pixel_size"], float), tuple(d["shape"]), center, tilt)

    def to_config(self) -> dict:
        d = {
            "type": self.type_name,
            "distance": float(self.distance),
            "pixel_size": [float(v) for v in np.asarray(self.pixel_size)],
            "shape": list(self.shape_),
            "center": [float(v) for v in np.asarray(self.center)],
        }
        if self.tilt is not None:
            d["tilt_deg"] = [math.degrees(float(v)) for v in np.asarray(self.tilt)]
        return d

    # ------------------------------------------------------------------------------------------- CXI

    def cxi_geometry(self, metres_per_unit: float) -> dict[str, np.ndarray | np.floating]:
        """CXI geometry datasets (distance, pixel sizes, corner_position, basis_vectors) in SI metres."""
        u = metres_per_unit
        D = float(self.distance)
        py, px = (float(v) for v in np.asarray(self.pixel_size))
        cy, cx = (float(v) for v in np.asarray(self.center))
        R = np.asarray(self.tilt_matrix(), float)
        e1, e2 = R[:, 0], R[:, 1]
        corner = np.array([0.0, 0.0, D]) - (cx + 0.5) * px * e1 - (cy + 0.5) * py * e2
        return {
            "distance": np.float64(D * u),
            "x_pixel_size": np.float64(px * u),
            "y_pixel_size": np.float64(py * u),
            "corner_position": corner * u,
            "basis_vectors": np.stack([py * e2, px * e1]) * u,
        }

    def to_cxi(self, det_group, saved, metres_per_unit: float) -> bool:
        for k, v in self.cxi_geometry(metres_per_unit).items():
            det_group.create_dataset(k, data=v)
            det_group[k].attrs["units"] = "m"
        saved.attrs["length_unit_m"] = metres_per_unit
        saved.attrs["distance"] = float(self.distance)
        saved.attrs["pixel_size"] = np.asarray(self.pixel_size, float)
        saved.attrs["center"] = np.asarray(self.center, float)
        if self.tilt is not None:
            saved.attrs["tilt"] = np.asarray(self.tilt, float)
        return True

    @classmethod
    def from_cxi(cls, det_group, saved, image_shape, metres_per_unit: float):
        """From the CXI geometry (corner_position + basis_vectors, or distance + pixel sizes with the beam at the
        image centre); the exact user-unit attributes of files written here replace it when they agree."""
        g, u = det_group, metres_per_unit
        if g is None:
            return None, (False, False)
        ny, nx = image_shape
        flips = (False, False)
        if "corner_position" in g:
            corner = np.asarray(g["corner_position"][()], float).reshape(-1)
            if corner.shape != (3,):
                raise ValueError(f"{g.name}/corner_position must have 3 entries, got {corner.shape}")
            if "basis_vectors" in g:
                B = np.asarray(g["basis_vectors"][()], float)
                if B.shape != (2, 3):
                    B = B.reshape(-1, 3)[-2:] if B.size >= 6 and B.size % 3 == 0 else None
                if B is None:
                    raise ValueError(f"{g.name}/basis_vectors must have shape (2, 3)")
            else:
                px = _read_scalar(g, "x_pixel_size")
                py = _read_scalar(g, "y_pixel_size")
                B = np.array([[0.0, -py, 0.0], [-px, 0.0, 0.0]])  # the CXI default
            b_row, b_col = B[0].copy(), B[1].copy()
            flip_r, flip_c = bool(b_row[1] < 0), bool(b_col[0] < 0)
            if flip_c:  # read the columns in reverse: the new first pixel is the old last one
                corner = corner + nx * b_col
                b_col = -b_col
            if flip_r:
                corner = corner + ny * b_row
                b_row = -b_row
            flips = (flip_r, flip_c)
            py, px = float(np.linalg.norm(b_row)), float(np.linalg.norm(b_col))
            tilt = tilt_from_axes(b_col / px, b_row / py)
            # Where does the beam (the z axis) cross the plane? corner + a b_row + b b_col = t z.
            M = np.stack([b_row, b_col, -np.array([0.0, 0.0, 1.0])], axis=1)
            a, b, t = np.linalg.solve(M, -corner)
            center = (a - 0.5, b - 0.5)
            D = t
        else:
            if "distance" not in g:
                raise ValueError(f"{g.name} has neither corner_position nor distance: no geometry")
            D = _read_scalar(g, "distance")
            px = _read_scalar(g, "x_pixel_size")
            py = _read_scalar(g, "y_pixel_size")
            center, tilt = ((ny - 1) / 2.0, (nx - 1) / 2.0), None
            warnings.warn(
                f"{g.name} has no corner_position: beam centre assumed at the image centre", stacklevel=4
            )
        if D <= 0:
            raise ValueError(f"{g.name}: detector distance must be positive, got {D} m")
        geom = dict(distance=D / u, pixel_size=(py / u, px / u), center=center, tilt=tilt)
        # Files written here also hold the exact user-unit values: use them when they agree (bit-exact round trip).
        ex = saved
        if ex is not None and ex.attrs.get("type") == cls.type_name and not any(flips):
            s = float(ex.attrs["length_unit_m"]) / u
            exact = dict(
                distance=float(ex.attrs["distance"]) * s,
                pixel_size=tuple(float(v) * s for v in ex.attrs["pixel_size"]),
                center=tuple(float(v) for v in ex.attrs["center"]),
                tilt=None if "tilt" not in ex.attrs else tuple(float(v) for v in ex.attrs["tilt"]),
            )
            close = (
                math.isclose(exact["distance"], geom["distance"], rel_tol=1e-9)
                and np.allclose(exact["pixel_size"], geom["pixel_size"], rtol=1e-9, atol=0)
                and np.allclose(exact["center"], geom["center"], rtol=0, atol=1e-6)
            )
            if close and s == 1.0:
                geom = exact
        det = cls(geom["distance"], np.asarray(geom["pixel_size"]), (ny, nx), geom["center"], geom["tilt"])
        return det, flips


def _read_scalar(g, name):
    v = np.asarray(g[name][()], dtype=float)
    return float(v.reshape(-1)[0])


def tilt_from_axes(e1, e2) -> np.ndarray | None:
    """(tx, ty) with R_y(ty) R_x(tx) = [e1, e2, e1 x e2]; None when untilted; ValueError if not of that form."""
    R = np.stack([e1, e2, np.cross(e1, e2)], axis=1)
    if np.allclose(R, np.eye(3), atol=1e-12):
        return None
    ty = math.atan2(-R[2, 0], R[0, 0])
    tx = math.atan2(R[2, 1], R[2, 2])
    c, s = math.cos, math.sin
    Rx = np.array([[1, 0, 0], [0, c(tx), -s(tx)], [0, s(tx), c(tx)]])
    Ry = np.array([[c(ty), 0, s(ty)], [0, 1, 0], [-s(ty), 0, c(ty)]])
    if not np.allclose(Ry @ Rx, R, atol=1e-6):
        raise ValueError(
            "basis_vectors describe an in-plane rotated detector, which FlatDetector does not support "
            f"(row axis {e2}, column axis {e1})"
        )
    return np.array([tx, ty])
