"""The abstract shape and the shared machinery for solids defined by a signed distance.

A new solid is one final class with its parameters, `sdf_body` (signed distance in the body frame,
negative inside; exact near the surface to first order is enough), `body_radius` and `volume`.
Rendering, occupancy, orientation and the default voxel grid come from here (docs/shapes.md).
"""

from __future__ import annotations

import abc
import copy
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float

from .._checks import check_positive
from .._custom_types import as_float, complex_dtype, is_concrete, mm
from .._grid import VoxelGrid
from .._rotation import check_rotation

__all__ = [
    "AbstractShape",
    "AbstractSolid",
    "extent_hint",
    "with_extent_hint",
    "soft_width",
    "smooth_fill",
    "partial_volume_fill",
    "fill_sigma",
    "voxel_transfer",
]

_LADDER = 2.0 ** (1.0 / 8.0)  # grid sizes grow in 9 % steps, so nearby sizes share one compilation


def extent_hint(radius) -> float | None:
    """Bounding radius rounded up on a 9 % ladder (a static grid-size hint); None when traced."""
    if not is_concrete(radius):
        return None
    r = float(np.max(np.asarray(radius)))
    if not math.isfinite(r) or r <= 0:
        return None
    return float(_LADDER ** math.ceil(math.log(r) / math.log(_LADDER) - 1e-9))


def with_extent_hint(shape: AbstractShape, hint: float | None) -> AbstractShape:
    """A copy of `shape` with another static grid-size hint (the one place that replaces it).

    `extent_hint` is a static field (not a pytree leaf, so `eqx.tree_at` cannot set it): batches of shapes
    (`ds.stack`), fits that bring their own voxel grid (hint None, so every start shares one tree structure)
    and composites' parts all go through here. A shape without the field is returned unchanged.
    """
    if hint is not None and not (isinstance(hint, float) and math.isfinite(hint) and hint > 0):
        raise ValueError(f"hint must be None or a positive finite float, got {hint!r}")
    if not hasattr(shape, "extent_hint"):
        return shape
    new = copy.copy(shape)
    object.__setattr__(new, "extent_hint", hint)
    return new


def soft_width(pitch) -> float:
    """Gaussian width sigma of the soft indicator on a grid of `pitch`: the standard deviation of a
    uniformly filled voxel projected on a random direction, sqrt((dx^2 + dy^2 + dz^2) / 36)."""
    p = np.broadcast_to(np.asarray(pitch, dtype=float), (3,))
    return float(np.sqrt(np.sum(p**2) / 36.0))


def smooth_fill(sdf, width):
    """Fill fraction from a signed distance: Phi(-d / width) (Gaussian CDF); a hard test when width == 0."""
    if isinstance(width, int | float) and width == 0:
        return (sdf <= 0).astype(sdf.dtype)
    return _half_erfc(sdf / (jnp.sqrt(2.0) * width))


def _half_erfc(z):
    """erfc(z) / 2, materialised once behind an optimisation barrier. Without it XLA (CPU) copied erfc's
    ~80-instruction expansion into every consumer of the fill: 1 476 of the ~19 000 instructions of an
    ellipsoid fit's compiled step (64^2), each copy evaluated again at run time. With the barrier (and the
    same in `voxel_transfer`) that program is 16 % smaller and a compiled ellipsoid batch pattern ~20 %
    faster (docs/performance.md, session 30). A custom JVP that also computes the derivative once behind the
    barrier was slower (12 %) and no smaller."""
    return jax.lax.optimization_barrier(0.5 * jax.scipy.special.erfc(z))


# Extra smoothing of the voxel box, per axis: two uniforms of PV_SOFTNESS * pitch. It makes the fill C2 (its
# gradient smooth) where a face lies along a voxel plane; its transform is divided out with the box's.
PV_SOFTNESS = 0.25


def grid_gradient(d: Float[Array, "nx ny nz"], pitch) -> Float[Array, "nx ny nz 3"]:
    """Gradient of a field sampled on the voxel centres: central differences inside, one-sided at the grid's
    faces, zero along an axis of one voxel (pitch in length units)."""
    out = []
    for ax, h in enumerate(pitch):
        out.append(jnp.gradient(d, h, axis=ax) if d.shape[ax] > 1 else jnp.zeros_like(d))
    return jnp.stack(out, axis=-1)


def partial_volume_fill(
    d: Float[Array, "*b"], grad: Float[Array, "*#b 3"], pitch, softness: float = PV_SOFTNESS
) -> Float[Array, "*b"]:
    """Fraction of each voxel inside the surface d = 0, with d linearised about the voxel centre.

    With d(r) ~ d0 + g . (r - r0) the fill of a uniform voxel of pitch p is P(d0 + sum_i g_i p_i U_i < 0),
    U_i uniform on [-1/2, 1/2]: the indicator convolved with the voxel's box, sampled at its centre (the exact
    partial volume for a plane). The kernel also has two uniforms of `softness` * p_i per axis (smoothness).
    Closed form: the widest projected width a = max_i p_i |g_i| stays a uniform, the rest (other widths and
    the softening) becomes a triangle b (U + U') of the same variance, and
    fill = sum_{s = +-1} sum_{k = -1, 0, 1} s c_k (t + s a/2 - k b)_+^3 / (6 a b^2),  c = (1, -2, 1), t = -d0:
    a piecewise cubic, C2, exact for faces along voxel planes, independent of the scale of d (an inexact
    signed distance is fine). `voxel_transfer` is the Fourier transform of the same kernel.
    """
    p = jnp.asarray(np.broadcast_to(np.asarray(pitch, float), (3,)), d.dtype)
    w2 = (grad * p) ** 2
    sum_w2 = jnp.sum(w2, axis=-1)
    # the floor keeps a and b positive where the gradient vanishes (centres of symmetric bodies, far away)
    floor = (1e-3 * float(np.min(np.asarray(pitch, float)))) ** 2
    a2 = jnp.maximum(jnp.max(w2, axis=-1), floor)
    b2 = jnp.maximum(sum_w2 - a2, 0.0) / 2.0 + softness**2 * sum_w2 + softness**2 * floor
    a, b = jnp.sqrt(a2), jnp.sqrt(b2)
    # outside the support the fill is exactly 0 or 1; clipping there bounds the cancellation below
    lim = 0.5 * a + b
    t = jnp.clip(-d, -lim, lim)
    total = 0.0
    for s_a in (0.5, -0.5):
        for k, c in ((-1.0, 1.0), (0.0, -2.0), (1.0, 1.0)):
            u = jnp.maximum(t + s_a * a - k * b, 0.0)
            total = total + (c if s_a > 0 else -c) * (u * u * u)
    return jnp.clip(total / (6.0 * a * b2), 0.0, 1.0)


def fill_sigma(pitch, softness: float = PV_SOFTNESS) -> float:
    """Width of the Gaussian fill profile with the voxel kernel's variance: sqrt(mean(p^2) (1/12 + softness^2
    / 6)), 0.306 pitch (the kernel's projected variance on any direction for an isotropic pitch)."""
    p = np.broadcast_to(np.asarray(pitch, dtype=float), (3,))
    return float(np.sqrt(np.mean(p**2) * (1.0 / 12.0 + softness**2 / 6.0)))


def voxel_transfer(pitch, q: Float[Array, "*pix 3"], softness: float = PV_SOFTNESS) -> Float[Array, "*pix"]:
    """Fourier transform of the partial-volume kernel at wave vectors q (1/length): per axis the voxel box
    and two uniforms of softness * pitch, prod_i sinc(q_i p_i / 2) sinc(softness q_i p_i / 2)^2.
    Floored at 0.01 (reached only for a pitch far coarser than the validity limit)."""
    out = 1.0
    for i, h in enumerate(np.broadcast_to(np.asarray(pitch, float), (3,))):
        u = q[..., i] * (h / (2 * np.pi))  # np.sinc(x) = sin(pi x) / (pi x)
        out = out * jnp.sinc(u) * jnp.sinc(softness * u) ** 2
    return jax.lax.optimization_barrier(jnp.maximum(out, 0.01))


class AbstractShape(eqx.Module):
    """Anything that renders to a complex dn = n - 1 volume on a voxel grid.

    `extent_hint` is a static bounding radius fixed at construction (rounded up on a 9 % ladder) so that
    `simulate` can choose a default grid under `jit`; shapes built from traced values have None and need
    an explicit `grid=`. Use `diffscat.stack` to batch shapes whose hints differ.
    """

    extent_hint: eqx.AbstractVar[float | None]

    @abc.abstractmethod
    def render(self, grid: VoxelGrid) -> Complex[Array, "nx ny nz"]:
        """dn = n - 1 on the voxel centres of `grid` (soft, partial-volume edges)."""

    @abc.abstractmethod
    def bounding_radius(self) -> Float[Array, ""]:
        """Radius of a ball about the lab origin that contains the shape (length unit)."""

    @abc.abstractmethod
    def volume(self) -> Float[Array, ""]:
        """Volume of the shape (length^3)."""

    @property
    def dtype(self):
        """Real dtype of the shape's parameters."""
        leaves = [x for x in jax.tree.leaves(self) if eqx.is_inexact_array(x)]
        if not leaves:
            return jnp.dtype(jnp.result_type(float))
        dt = jnp.result_type(*leaves)
        return jnp.finfo(dt).dtype if jnp.issubdtype(dt, jnp.complexfloating) else jnp.dtype(dt)

    def blur_transfer(self, grid: VoxelGrid, q: Float[Array, "*pix 3"]) -> Float[Array, "*pix"] | None:
        """Fourier transform, at wave vectors q (1/length), of the smoothing kernel the renderer applied
        (None for raw voxel maps); the engine divides the far field by it."""
        return None

    def max_abs_dn(self):
        """Largest |delta| of the shape's materials (for validity warnings); None if unknown."""
        return None


class AbstractSolid(AbstractShape):
    """A single-material solid given by a signed distance in its body frame.

    Subclasses provide fields `delta`, `beta` (scalars), `rotation` (3x3, r_lab = R r_body), `centre` (3,)
    and `extent_hint`, and the methods `sdf_body`, `body_radius` and `volume`.
    """

    delta: eqx.AbstractVar[Float[Array, ""]]
    beta: eqx.AbstractVar[Float[Array, ""]]
    rotation: eqx.AbstractVar[Float[Array, "3 3"]]
    centre: eqx.AbstractVar[Float[Array, "3"]]

    @abc.abstractmethod
    def sdf_body(self, p: Float[Array, "*b 3"]) -> Float[Array, "*b"]:
        """Signed distance (negative inside) of body-frame points; first-order accurate near the surface."""

    @abc.abstractmethod
    def body_radius(self) -> Float[Array, ""]:
        """Radius of a ball about the body origin containing the solid."""

    @property
    def dn(self) -> Complex[Array, ""]:
        """Complex n - 1 = -delta + i beta."""
        return jax.lax.complex(-self.delta, self.beta)

    def to_body(self, points: Float[ArrayLike, "*b 3"]) -> Float[Array, "*b 3"]:
        """Lab-frame points to the body frame: r_body = R^T (r_lab - centre)."""
        return mm(points - self.centre, self.rotation)

    def sdf(self, points: Float[ArrayLike, "*b 3"]) -> Float[Array, "*b"]:
        """Signed distance of lab-frame points (negative inside)."""
        return self.sdf_body(self.to_body(points))

    def occupancy(self, points: Float[ArrayLike, "*b 3"], width: float = 0.0) -> Float[Array, "*b"]:
        """Fill in [0, 1] at lab-frame points: a hard inside test for width 0, else the Gaussian-smoothed
        indicator Phi(-d / width) (width in length units)."""
        points = jnp.asarray(points)
        if points.shape[-1:] != (3,):
            raise ValueError(f"points must have shape (..., 3), got {points.shape}")
        return smooth_fill(self.sdf(points), width)

    def body_frame(self, rotation=None, centre=None) -> tuple[Float[Array, "3 3"], Float[Array, "3"]]:
        """(M, b) with r_body = r_lab M - b, for this solid placed inside an outer frame
        (r_lab = rotation r_outer + centre; default the lab frame)."""
        M = self.rotation if rotation is None else mm(rotation, self.rotation)
        b = mm(self.centre, self.rotation)
        if centre is not None:
            b = b + mm(centre, M)
        return M, b

    def grid_points_body(self, grid: VoxelGrid, rotation=None, centre=None) -> Float[Array, "nx ny nz 3"]:
        """Body-frame coordinates of the voxel centres of `grid`."""
        # A broadcast sum of three 1-D axes, r M - b = x_i M[0] + y_j M[1] + z_k M[2] - b: no lab-point array
        # and no matmul over it; XLA fuses it with the signed distance and the fill.
        M, b = self.body_frame(rotation, centre)
        x, y, z = grid.axes(self.dtype)
        return (
            x[:, None, None, None] * M[0] + y[None, :, None, None] * M[1] + z[None, None, :, None] * M[2] - b
        )

    def grid_fill(self, grid: VoxelGrid, rotation=None, centre=None) -> Float[Array, "nx ny nz"]:
        """Fill of every voxel of `grid` in [0, 1]; `rotation`, `centre` place the solid inside an outer frame
        (composites).

        Default: the Gaussian profile Phi(-d / sigma) of `fill_sigma(pitch)`, whose variance equals the voxel
        kernel's along any direction, so deconvolving `voxel_transfer` is right to fourth order in q p
        (~1e-4 at the default pitch) for curved surfaces. Cheap (one erfc per voxel). Solids with flat
        faces override this with `linearised_fill` (exact for faces along voxel planes, where a Gaussian
        profile aliases) or a closed form (polyhedra)."""
        d = self.sdf_body(self.grid_points_body(grid, rotation, centre))
        return smooth_fill(d, fill_sigma(grid.pitch))

    def linearised_fill(self, grid: VoxelGrid, rotation=None, centre=None) -> Float[Array, "nx ny nz"]:
        """Partial-volume fill with the signed distance linearised about each voxel centre, its gradient from
        central differences on the grid (`partial_volume_fill`): exact for planes at any offset from the
        voxel centres. About 1.5-2x the cost of the default under differentiation."""
        d = self.sdf_body(self.grid_points_body(grid, rotation, centre))
        return partial_volume_fill(d, grid_gradient(d, grid.pitch), grid.pitch)

    def render(self, grid: VoxelGrid) -> Complex[Array, "nx ny nz"]:
        return self.grid_fill(grid).astype(complex_dtype(self.dtype)) * self.dn

    def blur_transfer(self, grid: VoxelGrid, q: Float[Array, "*pix 3"]) -> Float[Array, "*pix"]:
        return voxel_transfer(grid.pitch, q)

    def bounding_radius(self) -> Float[Array, ""]:
        return jnp.linalg.norm(self.centre) + self.body_radius()

    def max_abs_dn(self):
        return jnp.abs(self.dn)


def material(delta, beta, dtype=None):
    """Validate and convert (delta, beta): real scalars, finite; beta >= 0 (absorption)."""
    d = as_float(delta, "delta", (), dtype)
    b = as_float(beta, "beta", (), d.dtype)
    from .._checks import check_finite

    return check_finite(d, "delta"), check_positive(b, "beta", allow_zero=True)


def placement(rotation, centre, dtype):
    """Validate and convert (rotation, centre); defaults identity and origin."""
    R = jnp.eye(3, dtype=dtype) if rotation is None else check_rotation(rotation, "rotation")
    c = jnp.zeros(3, dtype) if centre is None else as_float(centre, "centre", (3,), dtype)
    return R.astype(dtype), c
