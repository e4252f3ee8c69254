"""Shape library: Born-limit patterns against analytic form factors (tests/references.py)."""

import equinox as eqx
import numpy as np
import pytest
from references import born_core_shell, born_cube, born_ellipsoid, rel_l2

import diffscat as ds

_sim = eqx.filter_jit(ds.simulate)  # one compiled program per shape class and detector
LAM = 1.0
DN = complex(-1e-6, 1e-7)  # n - 1 = -delta + i beta, deep in the Born limit


def _tilt():
    return np.asarray(ds.rotation_from_euler(np.array([0.4, 0.9, -0.3])))


DETECTORS = [ds.QGrid(40, 30.0), ds.AngleGrid(32, 35.0)]


@pytest.mark.parametrize("detector", DETECTORS, ids=["qgrid", "anglegrid"])
@pytest.mark.parametrize("method", ["born", "msft"])
def test_sphere_and_tilted_ellipsoid(detector, method):
    exp = ds.Experiment(LAM, detector)
    th, ph, valid = np.asarray(exp.theta), np.asarray(exp.phi), np.asarray(exp.valid)
    for shape, axes, R in [
        (ds.Sphere(3.0, 1e-6, 1e-7), (3.0, 3.0, 3.0), np.eye(3)),
        (ds.Ellipsoid((2.0, 2.6, 3.6), 1e-6, 1e-7, rotation=_tilt()), (2.0, 2.6, 3.6), _tilt()),
    ]:
        I = np.asarray(_sim(shape, exp, method=method))[valid]
        err = rel_l2(I, born_ellipsoid(axes, R, DN, LAM, th, ph)[valid])
        assert err <= 0.02, err


@pytest.mark.parametrize("detector", DETECTORS, ids=["qgrid", "anglegrid"])
@pytest.mark.parametrize("tilted", [False, True])
def test_cube_product_of_sincs(detector, tilted):
    exp = ds.Experiment(LAM, detector)
    th, ph, valid = np.asarray(exp.theta), np.asarray(exp.phi), np.asarray(exp.valid)
    R = _tilt() if tilted else np.eye(3)
    cube = ds.Cube(4.0, 1e-6, 1e-7, rotation=R)
    I = np.asarray(_sim(cube, exp, method="born"))[valid]
    ref = born_cube(4.0, R, DN, LAM, th, ph)[valid]
    err = rel_l2(I, ref)
    assert err <= 0.02, err
    if tilted:  # the tilted cube's pattern is not the untilted one's
        assert rel_l2(I, born_cube(4.0, np.eye(3), DN, LAM, th, ph)[valid]) > 10 * err


@pytest.mark.parametrize("detector", DETECTORS, ids=["qgrid", "anglegrid"])
def test_cube_faces_along_voxel_planes(detector):
    """Faces parallel to the voxel planes, at every offset from the voxel centres (edges 3.9-4.3 on pitches
    0.25 and 0.215): the partial-volume fill is exact for such faces, so no offset may alias."""
    exp = ds.Experiment(LAM, detector)
    th, ph, valid = np.asarray(exp.theta), np.asarray(exp.phi), np.asarray(exp.valid)
    grid = ds.default_grid(ds.Cube(4.3), exp)  # the default pitch; one grid (one compilation) for all edges
    for edge in (3.9, 4.05, 4.1, 4.2, 4.3):
        I = np.asarray(_sim(ds.Cube(edge, 1e-6, 1e-7), exp, method="born", grid=grid))[valid]
        err = rel_l2(I, born_cube(edge, np.eye(3), DN, LAM, th, ph)[valid])
        assert err <= 0.02, (edge, err)


@pytest.mark.parametrize("detector", DETECTORS, ids=["qgrid", "anglegrid"])
def test_core_shell_sphere(detector):
    exp = ds.Experiment(LAM, detector)
    th, ph, valid = np.asarray(exp.theta), np.asarray(exp.phi), np.asarray(exp.valid)
    dn_c, dn_s = complex(-3e-6, 2e-7), complex(-1e-6, 1e-7)
    cs = ds.CoreShell.spheres(1.8, 3.2, 3e-6, 2e-7, 1e-6, 1e-7, centre=(0.0, 0.0, 0.0))
    I = np.asarray(_sim(cs, exp, method="born"))[valid]
    ref = born_core_shell(1.8, 3.2, dn_c, dn_s, LAM, th, ph)[valid]
    err = rel_l2(I, ref)
    assert err <= 0.02, err
    # the same particle as a composite (later parts win) agrees
    comp = ds.Composite([ds.Sphere(3.2, 1e-6, 1e-7), ds.Sphere(1.8, 3e-6, 2e-7)])
    Ic = np.asarray(_sim(comp, exp, method="born"))[valid]
    assert rel_l2(Ic, ref) <= 0.02
