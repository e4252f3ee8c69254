"""The partial-volume voxel kernel: plane fills against a numerical convolution, exact volumes for faces
along voxel planes, and the kernel's transform (docs/shapes.md, "Partial-volume rendering")."""

import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds
from diffscat.shapes._base import PV_SOFTNESS, partial_volume_fill, voxel_transfer


def _kernel_cdf(t, widths, n=400_000, seed=0):
    """P(sum_k w_k U_k < t) for independent uniforms on [-1/2, 1/2], by Monte Carlo with antithetic pairs."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-0.5, 0.5, (n, len(widths)))
    x = np.concatenate([u @ widths, -(u @ widths)])
    x.sort()
    return np.searchsorted(x, t) / x.size


def _widths(normal, pitch):
    """The full kernel projected on `normal`: per axis the box and two uniforms of softness * pitch."""
    n, p = np.asarray(normal, float), np.asarray(pitch, float)
    w = np.abs(n) * p
    return np.concatenate([w, PV_SOFTNESS * w, PV_SOFTNESS * w])


@pytest.mark.parametrize(
    "normal, tol",
    [((1.0, 0.0, 0.0), 3e-3), ((0.0, 0.6, 0.8), 5e-3), ((0.48, 0.6, 0.64), 5e-3)],
    ids=["axis", "face-diagonal", "general"],
)
def test_plane_fill_matches_projected_kernel(normal, tol):
    pitch = (0.25, 0.25, 0.3)
    t = np.linspace(-0.4, 0.4, 81)  # signed distance of the voxel centre from the plane
    g = np.broadcast_to(np.asarray(normal), (t.size, 3))
    fill = np.asarray(partial_volume_fill(jnp.asarray(t), jnp.asarray(g), pitch))
    ref = _kernel_cdf(-t, _widths(normal, pitch))
    # exact along an axis (Monte Carlo noise ~1e-3 only); elsewhere the smaller uniforms become a triangle of
    # the same variance (measured 1.5e-3 and 1.9e-3, at the noise level)
    assert np.max(np.abs(fill - ref)) <= tol, np.max(np.abs(fill - ref))
    # the kernel has zero mean, so the fill conserves volume: integral of (fill - H(-t)) dt = 0
    tt = np.linspace(-1.0, 1.0, 4001)
    gg = np.broadcast_to(np.asarray(normal), (tt.size, 3))
    f = np.asarray(partial_volume_fill(jnp.asarray(tt), jnp.asarray(gg), pitch))
    step = np.where(tt < 0, 1.0, np.where(tt == 0, 0.5, 0.0))  # H(-t), 1/2 at the node t = 0
    assert abs(np.trapezoid(f - step, tt)) < 1e-7
    # invariant to the scale of the signed distance (up to the 1e-3-pitch floor that guards g = 0)
    f2 = np.asarray(partial_volume_fill(jnp.asarray(3.0 * t), jnp.asarray(3.0 * g), pitch))
    np.testing.assert_allclose(f2, fill, atol=1e-6)


def test_fill_is_monotone_bounded_and_finite_where_the_gradient_vanishes():
    t = jnp.linspace(-1.0, 1.0, 201)
    f = partial_volume_fill(t, jnp.broadcast_to(jnp.array([0.3, -0.5, 0.81]), (201, 3)), 0.25)
    assert bool(jnp.all(jnp.diff(f) <= 0)) and float(f.min()) >= 0 and float(f.max()) <= 1
    z = partial_volume_fill(jnp.array([-0.5, 0.0, 0.5]), jnp.zeros((3, 3)), 0.25)  # centre of a sphere
    assert bool(jnp.all(jnp.isfinite(z)))
    np.testing.assert_allclose(np.asarray(z)[[0, 2]], [1.0, 0.0])


@pytest.mark.parametrize("offset", [0.0, 0.031, 0.077, 0.125])
def test_unrotated_cube_volume_is_exact_at_any_offset(offset):
    """Faces along voxel planes: the sampled sum of a box-convolved indicator is its integral exactly."""
    cube = ds.Cube(2.13, 1e-3, 0.0, centre=(offset, -0.5 * offset, 0.3 * offset))
    grid = ds.VoxelGrid((24, 24, 24), 0.25)
    vol = float(jnp.sum(cube.grid_fill(grid))) * grid.voxel_volume
    assert abs(vol / 2.13**3 - 1) < 1e-9, vol / 2.13**3 - 1


def test_transfer_is_the_kernel_transform():
    """voxel_transfer equals the characteristic function of the projected kernel (Monte Carlo)."""
    pitch = (0.25, 0.2, 0.3)
    rng = np.random.default_rng(1)
    n = 400_000
    u = rng.uniform(-0.5, 0.5, (n, 3, 3)) * np.array([1.0, PV_SOFTNESS, PV_SOFTNESS])[None, None, :]
    r = np.sum(u, axis=2) * np.asarray(pitch)  # kernel samples (n, 3)
    q = np.array([[3.0, -2.0, 1.0], [8.0, 4.0, -6.0], [0.0, 0.0, 10.0]])
    ref = np.mean(np.cos(r @ q.T), axis=0)  # the kernel is even: its transform is real
    np.testing.assert_allclose(np.asarray(voxel_transfer(pitch, jnp.asarray(q))), ref, atol=3e-3)
