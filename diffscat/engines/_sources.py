"""Slice sources of the discrete eq. 9 (docs/conventions.md)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from .._grid import VoxelGrid
from ._propagate import propagated_envelope

__all__ = ["slice_sources", "METHODS"]

METHODS = ("msft", "born", "propagating")


def slice_sources(
    dn: Complex[Array, "nx ny nz"], grid: VoxelGrid, k0: Float[Array, ""], method: str
) -> Complex[Array, "nx ny nz"]:
    """Weighted voxel sources U = dx dy S(dn) E of eq. 9.

    S(dn) = k0^2 / (4 pi) ((1 + dn)^2 - 1) dz (length^-1 per unit area after the dx dy weight);
    E_0 = 1, E_s = E_{s-1} exp(i k0 dz dn_{s-1}) for method "msft" (incident envelope attenuated and
    phase-shifted by the slices before), E = 1 for "born" (first Born approximation), and for "propagating"
    the total-field envelope carried slice by slice by beam propagation (engines/_propagate.py).
    The far field is then Psi(q) = sum_s exp(+i qz z_s) sum_ij U_ijs exp(-i (qx x_i + qy y_j)).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dx, dy, dz = grid.pitch
    S = (k0**2 / (4 * jnp.pi) * dz * dx * dy) * (dn * (2.0 + dn))
    if method == "born":
        return S
    if method == "propagating":
        return S * propagated_envelope(dn, grid, k0)
    # Exclusive cumulative sum along the beam: the envelope at slice s sees slices 0..s-1 only.
    before = jnp.cumsum(dn, axis=2) - dn
    return S * jnp.exp(1j * k0 * dz * before)
