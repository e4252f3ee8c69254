"""Shapes made of several solids with their own materials: core-shell particles and unions."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from .._custom_types import complex_dtype, is_concrete, mm
from .._grid import VoxelGrid
from ._base import (
    AbstractShape,
    AbstractSolid,
    extent_hint,
    placement,
    smooth_fill,
    soft_width,
    voxel_transfer,
    with_extent_hint,
)
from ._sphere import Sphere

__all__ = ["CoreShell", "Composite"]


def _strip_hint(s: AbstractShape) -> AbstractSolid:
    """A copy without its static size hint, so that batches of composites share one tree structure."""
    if not isinstance(s, AbstractSolid):
        raise TypeError(f"parts must be diffscat solids (Sphere, Ellipsoid, ...), got {type(s).__name__}")
    return with_extent_hint(s, None)


def _to_local(points, rotation, centre):
    return mm(points - centre, rotation)


def _hint(radius):
    return extent_hint(radius) if is_concrete(radius) else None


class CoreShell(AbstractShape):
    """A core inside a shell, each a solid with its own material (delta, beta): n = n_core inside the core,
    n_shell between the core and the shell's surface.

    dn = fill_shell dn_shell + fill_core (dn_core - dn_shell), linear in the partial-volume fills, so the
    smoothing is still one kernel (`blur_transfer`) and is divided out as for a single solid.
    The core must lie inside the shell (checked for concentric spheres).

    **Arguments:**
    - `core`, `shell`: solids (any `AbstractSolid`); their positions and rotations are relative to the
      composite's frame. `CoreShell.spheres(...)` builds the usual concentric spheres.
    - `rotation`, `centre`: placement of the whole particle (r_lab = R r + centre).
    """

    core: AbstractSolid
    shell: AbstractSolid
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, core, shell, *, rotation=None, centre=None):
        if isinstance(core, Sphere) and isinstance(shell, Sphere):
            if is_concrete(core.radius) and is_concrete(shell.radius) and is_concrete(core.centre):
                gap = (
                    float(shell.radius)
                    - float(core.radius)
                    - float(jnp.linalg.norm(core.centre - shell.centre))
                )
                if gap <= 0:
                    raise ValueError(
                        f"core must fit inside the shell (core radius {float(core.radius)}, "
                        f"shell radius {float(shell.radius)})"
                    )
        self.core = _strip_hint(core)
        self.shell = _strip_hint(shell)
        dt = jnp.result_type(self.core.dtype, self.shell.dtype)
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = _hint(self.bounding_radius())

    @classmethod
    def spheres(
        cls,
        core_radius,
        outer_radius,
        core_delta=0.0,
        core_beta=0.0,
        shell_delta=0.0,
        shell_beta=0.0,
        *,
        centre=None,
    ) -> CoreShell:
        """Concentric spheres: core of `core_radius`, shell out to `outer_radius` (> core_radius)."""
        return cls(
            Sphere(core_radius, core_delta, core_beta),
            Sphere(outer_radius, shell_delta, shell_beta),
            centre=centre,
        )

    def occupancy(self, points, width: float = 0.0) -> Float[Array, "*b"]:
        """Fill of the whole particle (the shell's outer surface) at lab-frame points."""
        return self.shell.occupancy(_to_local(jnp.asarray(points), self.rotation, self.centre), width)

    def render(self, grid: VoxelGrid) -> Complex[Array, "nx ny nz"]:
        cdt = complex_dtype(self.dtype)
        fs = self.shell.grid_fill(grid, self.rotation, self.centre).astype(cdt)
        fc = self.core.grid_fill(grid, self.rotation, self.centre).astype(cdt)
        return fs * self.shell.dn.astype(cdt) + fc * (self.core.dn - self.shell.dn).astype(cdt)

    def blur_transfer(self, grid: VoxelGrid, q: Float[Array, "*pix 3"]) -> Float[Array, "*pix"]:
        return voxel_transfer(grid.pitch, q)

    def bounding_radius(self) -> Float[Array, ""]:
        return jnp.linalg.norm(self.centre) + jnp.maximum(
            self.shell.bounding_radius(), self.core.bounding_radius()
        )

    def volume(self) -> Float[Array, ""]:
        """Volume of the whole particle (the shell's); `core.volume()` gives the core's."""
        return self.shell.volume()

    def max_abs_dn(self):
        return jnp.maximum(jnp.abs(self.core.dn), jnp.abs(self.shell.dn))


class Composite(AbstractShape):
    """A union of solids, each with its own material. Overlaps: later parts win (painter's rule),

        dn = (...((f_1 dn_1) (1 - f_2) + f_2 dn_2) (1 - f_3) + f_3 dn_3 ...),

    exact for hard fills; with partial-volume fills the smoothing is undone exactly where parts do not overlap
    (and to first order where they do). The union's fill is 1 - prod_k (1 - f_k).

    **Arguments:**
    - `parts`: a non-empty sequence of solids (any `AbstractSolid`); positions and rotations relative to the
      composite's frame.
    - `rotation`, `centre`: placement of the whole assembly (r_lab = R r + centre).
    """

    parts: tuple[AbstractSolid, ...]
    rotation: Float[Array, "3 3"]
    centre: Float[Array, "3"]
    extent_hint: float | None = eqx.field(static=True, repr=False)

    def __init__(self, parts, *, rotation=None, centre=None):
        parts = tuple(parts)
        if not parts:
            raise ValueError("parts must be a non-empty sequence of solids")
        self.parts = tuple(_strip_hint(p) for p in parts)
        dt = jnp.result_type(*[p.dtype for p in self.parts])
        self.rotation, self.centre = placement(rotation, centre, dt)
        self.extent_hint = _hint(self.bounding_radius())

    def _fills(self, points, width):
        local = _to_local(jnp.asarray(points), self.rotation, self.centre)
        return [smooth_fill(p.sdf(local), width) for p in self.parts]

    def occupancy(self, points, width: float = 0.0) -> Float[Array, "*b"]:
        """Fill of the union at lab-frame points: 1 - prod_k (1 - f_k)."""
        empty = 1.0
        for f in self._fills(points, width):
            empty = empty * (1 - f)
        return 1 - empty

    def render(self, grid: VoxelGrid) -> Complex[Array, "nx ny nz"]:
        cdt = complex_dtype(self.dtype)
        dn = jnp.zeros(grid.shape, cdt)
        for p in self.parts:
            f = p.grid_fill(grid, self.rotation, self.centre).astype(cdt)
            dn = dn * (1 - f) + f * p.dn.astype(cdt)
        return dn

    def blur_transfer(self, grid: VoxelGrid, q: Float[Array, "*pix 3"]) -> Float[Array, "*pix"]:
        return voxel_transfer(grid.pitch, q)

    def bounding_radius(self) -> Float[Array, ""]:
        return jnp.linalg.norm(self.centre) + jnp.max(
            jnp.stack([jnp.linalg.norm(p.centre) + p.body_radius() for p in self.parts])
        )

    def volume(self, points_per_radius: int = 48) -> Float[Array, ""]:
        """Volume of the union by grid quadrature of its soft fill (pitch = bounding radius / 48; the soft
        edge integrates to the true volume to second order, ~1e-3). Needs concrete sizes."""
        r = self.bounding_radius() - jnp.linalg.norm(self.centre)
        if not is_concrete(r):
            raise ValueError("Composite.volume needs concrete part sizes (not traced)")
        r = float(r)
        pitch = r / points_per_radius
        grid = VoxelGrid.around(r, pitch, margin=3)
        pts = grid.points(self.dtype) + self.centre
        fill = self.occupancy(pts, soft_width(grid.pitch))
        return jnp.sum(fill) * grid.voxel_volume

    def max_abs_dn(self):
        return jnp.max(jnp.stack([jnp.abs(p.dn) for p in self.parts]))
