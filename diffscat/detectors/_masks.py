"""Pixel masks. Every function returns a boolean "use pixel" image (True = good, use it in a loss).

CXI bitmasks are the opposite (0 = good); `from_cxi_bitmask` / `to_cxi_bitmask` convert. Bits (CXI 1.6):
0x1 invalid, 0x2 saturated, 0x4 hot, 0x8 dead, 0x10 shadowed, 0x80 bad, 0x200 gap / missing.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Integer
from numpy import ndarray

__all__ = [
    "CXI_INVALID",
    "CXI_SATURATED",
    "CXI_HOT",
    "CXI_DEAD",
    "CXI_SHADOWED",
    "CXI_BAD",
    "CXI_MISSING",
    "circular_mask",
    "rectangular_mask",
    "panel_gaps",
    "bad_pixels",
    "angular_mask",
    "from_cxi_bitmask",
    "to_cxi_bitmask",
    "combine_masks",
]

CXI_INVALID = 0x1
CXI_SATURATED = 0x2
CXI_HOT = 0x4
CXI_DEAD = 0x8
CXI_SHADOWED = 0x10
CXI_BAD = 0x80
CXI_MISSING = 0x200


def _shape(shape) -> tuple[int, int]:
    try:
        s = tuple(int(v) for v in shape)
    except TypeError as e:
        raise TypeError(f"shape must be (ny, nx), got {shape!r}") from e
    if len(s) != 2 or min(s) < 1:
        raise ValueError(f"shape must be (ny, nx) with positive entries, got {shape!r}")
    return s


def circular_mask(shape, center, radius, *, keep_inside: bool = False) -> Bool[ndarray, "ny nx"]:
    """Mask of a circular beamstop or hole: pixels whose centre lies within `radius` (pixels) of `center`
    (cy, cx) (fractional pixels) are excluded; with `keep_inside=True` only those are kept (an aperture)."""
    ny, nx = _shape(shape)
    cy, cx = (float(v) for v in center)
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0 pixels, got {radius}")
    iy, ix = np.mgrid[0:ny, 0:nx]
    inside = (iy - cy) ** 2 + (ix - cx) ** 2 < float(radius) ** 2
    return inside if keep_inside else ~inside


def rectangular_mask(shape, rows, cols) -> Bool[ndarray, "ny nx"]:
    """Excludes the rectangle rows[0] <= iy < rows[1], cols[0] <= ix < cols[1] (e.g. a beamstop holder)."""
    ny, nx = _shape(shape)
    out = np.ones((ny, nx), bool)
    (r0, r1), (c0, c1) = rows, cols
    if not (0 <= r0 <= r1 <= ny and 0 <= c0 <= c1 <= nx):
        raise ValueError(f"rectangle rows={rows}, cols={cols} outside the image {(ny, nx)}")
    out[r0:r1, c0:c1] = False
    return out


def panel_gaps(shape, rows=(), cols=(), width: int = 1) -> Bool[ndarray, "ny nx"]:
    """Excludes gaps of `width` pixels starting at each row index in `rows` and column index in `cols`."""
    ny, nx = _shape(shape)
    if width < 1:
        raise ValueError(f"width must be >= 1 pixel, got {width}")
    out = np.ones((ny, nx), bool)
    for r in rows:
        if not 0 <= r < ny:
            raise ValueError(f"gap row {r} outside 0..{ny - 1}")
        out[r : r + width, :] = False
    for c in cols:
        if not 0 <= c < nx:
            raise ValueError(f"gap column {c} outside 0..{nx - 1}")
        out[:, c : c + width] = False
    return out


def bad_pixels(shape, pixels) -> Bool[ndarray, "ny nx"]:
    """Excludes a list of (iy, ix) pixels."""
    ny, nx = _shape(shape)
    out = np.ones((ny, nx), bool)
    p = np.asarray(pixels, dtype=int).reshape(-1, 2)
    if p.size and (np.any(p < 0) or np.any(p[:, 0] >= ny) or np.any(p[:, 1] >= nx)):
        raise ValueError(f"bad pixel indices outside the image {(ny, nx)}")
    out[p[:, 0], p[:, 1]] = False
    return out


def angular_mask(experiment, theta_min_deg: float = 0.0, theta_max_deg: float = 90.0) -> Bool[ndarray, "..."]:
    """Keeps the valid pixels with theta_min <= theta < theta_max (degrees) of an `Experiment`."""
    th = np.degrees(np.asarray(experiment.theta))
    return np.asarray(experiment.valid) & (th >= theta_min_deg) & (th < theta_max_deg)


def from_cxi_bitmask(mask: Integer[ndarray, "..."], bad_bits: int = 0xFFFFFFFF) -> Bool[ndarray, "..."]:
    """Boolean use-mask from a CXI bitmask (0 = good): a pixel is excluded when any of `bad_bits` is set."""
    m = np.asarray(mask)
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != bool:
        raise TypeError(f"a CXI mask must be an integer bitmask, got dtype {m.dtype}")
    return (m.astype(np.uint64) & np.uint64(bad_bits)) == 0


def to_cxi_bitmask(use: Bool[ndarray, "..."], bit: int = CXI_INVALID) -> Integer[ndarray, "..."]:
    """CXI uint32 bitmask from a boolean use-mask: excluded pixels get `bit`, good pixels 0."""
    return np.where(np.asarray(use, bool), 0, bit).astype(np.uint32)


def combine_masks(*masks) -> Bool[ndarray, "..."]:
    """AND of boolean use-masks of one shape (None entries are skipped)."""
    ms = [np.asarray(m, bool) for m in masks if m is not None]
    if not ms:
        raise ValueError("combine_masks needs at least one mask")
    for m in ms[1:]:
        if m.shape != ms[0].shape:
            raise ValueError(f"mask shapes differ: {ms[0].shape} vs {m.shape}")
    return np.logical_and.reduce(ms)
