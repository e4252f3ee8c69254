"""Bad input gives clear errors naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffscat as ds

EXP = ds.Experiment(1.0, ds.QGrid(8, 30.0))


@pytest.mark.parametrize("wl", [0.0, -1.0, np.nan])
def test_wavelength(wl):
    with pytest.raises(ValueError, match="wavelength"):
        ds.Experiment(wl, ds.QGrid(8, 30.0))


@pytest.mark.parametrize("cls", [ds.QGrid, ds.AngleGrid])
def test_grids(cls):
    with pytest.raises(ValueError, match="theta_max_deg"):
        cls(8, 90.0)
    with pytest.raises(ValueError, match="theta_max_deg"):
        cls(8, 0.0)
    with pytest.raises(ValueError, match="n must be"):
        cls(1, 30.0)
    with pytest.raises(TypeError, match="n must be"):
        cls(8.5, 30.0)


def test_flat_detector():
    with pytest.raises(ValueError, match="distance"):
        ds.FlatDetector(0.0, 1.0, (8, 8))
    with pytest.raises(ValueError, match="distance"):
        ds.FlatDetector(-3.0, 1.0, (8, 8))
    with pytest.raises(ValueError, match="pixel_size"):
        ds.FlatDetector(3.0, -1.0, (8, 8))
    with pytest.raises(ValueError, match="center"):
        ds.FlatDetector(3.0, 1.0, (8, 8), center=(1.0, 2.0, 3.0))


def test_directions_shape_mismatch():
    with pytest.raises(ValueError, match="theta and phi"):
        ds.Directions(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("r", [0.0, -2.0, np.inf])
def test_sphere_radius(r):
    with pytest.raises(ValueError, match="radius"):
        ds.Sphere(r)


def test_ellipsoid_axes():
    with pytest.raises(ValueError, match="semi_axes"):
        ds.Ellipsoid((1.0, -1.0, 2.0))
    with pytest.raises(ValueError, match="semi_axes"):
        ds.Ellipsoid((1.0, 2.0))
    with pytest.raises(TypeError, match="a=, b=, c="):
        ds.Ellipsoid(a=1.0, b=2.0)


def test_rotation():
    with pytest.raises(ValueError, match="rotation"):
        ds.Ellipsoid((1.0, 2.0, 3.0), rotation=np.eye(2))
    with pytest.raises(ValueError, match="rotation"):
        ds.Ellipsoid((1.0, 2.0, 3.0), rotation=2 * np.eye(3))
    with pytest.raises(ValueError, match="rotation"):
        ds.Ellipsoid((1.0, 2.0, 3.0), rotation=np.diag([1.0, 1.0, -1.0]))  # improper


def test_volume_map():
    with pytest.raises(ValueError, match="dn must be a 3-D"):
        ds.VolumeMap(np.zeros((4, 4)), 1.0)
    bad = np.zeros((4, 4, 4), complex)
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="dn must be finite"):
        ds.VolumeMap(bad, 1.0)
    with pytest.raises(ValueError, match="pitch"):
        ds.VolumeMap(np.zeros((4, 4, 4)), 0.0)
    with pytest.raises(ValueError, match="pitch"):
        ds.VolumeMap(np.zeros((4, 4, 4)), (1.0, -1.0, 1.0))


def test_grid_pitch():
    with pytest.raises(ValueError, match="pitch"):
        ds.VoxelGrid((4, 4, 4), -0.1)


def test_method_and_types():
    s = ds.Sphere(1.0, 0.01)
    with pytest.raises(ValueError, match="method"):
        ds.simulate(s, EXP, method="mie")
    with pytest.raises(TypeError, match="shape"):
        ds.simulate("sphere", EXP)
    with pytest.raises(TypeError, match="experiment"):
        ds.simulate(s, 1.0)
    with pytest.raises(ValueError, match="separable"):
        ds.simulate(s, ds.Experiment(1.0, ds.AngleGrid(8, 30.0)), transform="separable")


def test_traced_values_checked_with_error_if():
    f = jax.jit(lambda r: ds.Sphere(r, 0.01).radius)
    with pytest.raises(Exception, match="radius must be positive"):
        f(jnp.asarray(-1.0)).block_until_ready()


def test_traced_shape_needs_grid():
    f = jax.jit(lambda r: ds.simulate(ds.Sphere(r, 0.01), EXP))
    with pytest.raises(ValueError, match="grid="):
        f(jnp.asarray(1.0))
