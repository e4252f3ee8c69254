"""GPU checks: the float32 forward model and its gradient on a GPU against float64 references.

Skipped unless jax sees a GPU. Run them on one with (the conftest defaults JAX_PLATFORMS to cpu):

    JAX_PLATFORMS=cuda,cpu python -m pytest -q -m gpu tests/test_gpu.py

The risk they guard: on Ampere/Hopper GPUs a float32 matmul defaults to TF32 (~3 significant digits), so an
einsum without `precision=HIGHEST` passes every CPU test and loses accuracy on a GPU only. TF32 gives relative
errors near 3e-4; the bounds below are 1e-5, which float32 arithmetic meets and TF32 does not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import eq9_numpy, mie_dcs, radial_profile, rel_l2

import diffscat as ds


def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


GPU = _gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU is None, reason="no GPU visible to jax")]
CPU = jax.devices("cpu")[0]


@pytest.fixture(autouse=True)
def _float32():
    """The suite runs with x64 on (conftest); these checks are about the float32 default a GPU user gets."""
    with jax.enable_x64(False):
        yield


def _on(device, fn, *args):
    with jax.default_device(device):
        return np.asarray(fn(*jax.device_put(args, device)))


def _random_volume(seed=0, shape=(12, 10, 14)):
    rng = np.random.default_rng(seed)
    occ = rng.random(shape) > 0.3
    return np.where(occ, -rng.uniform(0.002, 0.01, shape) + 1j * rng.uniform(0, 0.004, shape), 0)


@pytest.mark.parametrize("transform", ["separable", "direct", "fast"])
def test_float32_eq9_on_gpu_matches_float64_numpy(transform):
    dn = _random_volume()
    pitch = (0.3, 0.25, 0.35)
    exp = ds.Experiment(np.float32(1.0), ds.QGrid(n=24, theta_max_deg=40.0))
    th, ph = np.asarray(exp.theta, np.float64), np.asarray(exp.phi, np.float64)
    ref = np.abs(eq9_numpy(dn, pitch, 1.0, th, ph)) ** 2
    ref = np.where(np.asarray(exp.valid), ref, 0)
    vol = ds.VolumeMap(dn=jnp.asarray(dn, jnp.complex64), pitch=pitch)
    out = _on(GPU, lambda v: ds.simulate(v, exp, transform=transform), vol)
    assert out.dtype == np.float32
    err = np.max(np.abs(out - ref)) / np.max(ref)
    assert err <= 1e-5, f"{transform}: max error {err:.2e} of the peak (TF32 gives ~3e-4)"


def test_gpu_sphere_matches_cpu_and_mie():
    exp = ds.Experiment(np.float32(1.0), ds.QGrid(n=128, theta_max_deg=30.0))
    s = ds.Sphere(np.float32(4.0), np.float32(0.001), np.float32(0.0005))
    g = _on(GPU, lambda s: ds.simulate(s, exp), s)
    c = _on(CPU, lambda s: ds.simulate(s, exp), s)
    assert np.max(np.abs(g - c)) / np.max(c) <= 1e-5
    th = np.asarray(exp.theta, np.float64)
    bins = np.radians(np.linspace(10, 30, 81))
    _, p = radial_profile(g.astype(np.float64), th, bins)
    _, r = radial_profile(mie_dcs(4.0, 0.001, 0.0005, 1.0, th), th, bins)
    assert rel_l2(p / p.sum(), r / r.sum()) <= 0.01  # the CPU test's bound (tests/test_engine.py)
    assert abs(p.sum() / r.sum() - 1) < 0.05


def test_gpu_gradient_matches_cpu():
    exp = ds.Experiment(np.float32(1.0), ds.QGrid(n=64, theta_max_deg=30.0))
    grid = ds.default_grid(ds.Ellipsoid(np.full(3, 5.0, np.float32), 0.001, 0.0005), exp)
    target = np.asarray(
        ds.simulate(ds.Ellipsoid(np.array([4.0, 3.5, 3.0], np.float32), 0.001, 0.0005), exp, grid=grid)
    )

    def loss(axes):
        e = ds.Ellipsoid(axes, np.float32(0.001), np.float32(0.0005))
        return jnp.sum((ds.simulate(e, exp, grid=grid) - target) ** 2)

    a0 = np.array([4.2, 3.4, 3.1], np.float32)
    gg = _on(GPU, jax.grad(loss), a0)
    gc = _on(CPU, jax.grad(loss), a0)
    assert np.all(np.isfinite(gg))
    assert np.max(np.abs(gg - gc)) <= 1e-4 * np.max(np.abs(gc))


def test_vmapped_rotated_shapes_on_gpu_match_cpu():
    """Rotations composed and checked inside a vmap (as the batch fitters do) and rotated voxel coordinates:
    with TF32 matmuls `check_rotation` failed on an H200 (|R R^T - I| > 1e-4) and body coordinates move
    ~3e-4 relative; every rotation product pins HIGHEST precision (`diffscat._custom_types.mm`)."""
    exp = ds.Experiment(np.float32(1.0), ds.QGrid(n=48, theta_max_deg=30.0))
    grid = ds.default_grid(ds.Sphere(np.float32(5.5), 0.001, 0.0), exp)
    angles = np.random.default_rng(3).uniform(-np.pi, np.pi, (4, 3)).astype(np.float32)

    def images(a):
        R = ds.rotation_from_euler(a, "ZYZ")
        e = ds.Ellipsoid(
            np.array([4.0, 3.2, 2.5], np.float32), np.float32(0.002), np.float32(0.001), rotation=R
        )
        c = ds.Cube(np.float32(5.0), np.float32(0.002), np.float32(0.001), rotation=R)
        return ds.simulate(e, exp, grid=grid), ds.simulate(c, exp, grid=grid)

    g = _on(GPU, lambda a: jnp.stack(jax.vmap(images)(a)), angles)
    c = _on(CPU, lambda a: jnp.stack(jax.vmap(images)(a)), angles)
    assert np.all(np.isfinite(g))
    err = np.max(np.abs(g - c), axis=(-2, -1)) / np.max(np.abs(c), axis=(-2, -1))
    assert np.max(err) <= 1e-5, err
