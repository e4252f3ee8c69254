"""Cross-check against the peer implementation pymsft 1.0.2 (needs Python >= 3.12; skipped without it)."""

import math
import warnings

import numpy as np
import pytest

import diffscat as ds

pymsft = pytest.importorskip("pyMSFT.simulation")


def test_weak_tilted_volume_matches_pymsft_msft():
    # pymsft's MSFT source k0/(2 pi i) (exp(i k0 dz dn) - 1) equals eq. 9 to first order in dn, and its
    # 'Ewald' image is dsigma/d(qx qy) = dsigma/dOmega / (k0^2 cos theta) (docs/conventions.md): for |dn| ~ 1e-4 the
    # two must agree to ~1e-4 at every pixel, including the asymmetry of a tilted body (axis conventions).
    lam, pitch, m, nfft = 1.0, 0.25, 16, 48
    k0 = 2 * math.pi / lam
    ax = (np.arange(m) - (m - 1) / 2) * pitch
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    inside = (X / 1.2) ** 2 + (Y / 1.7) ** 2 + (Z / 1.4) ** 2 + 0.8 * X * Y / 1.7 + 0.5 * X * Z <= 1
    dn = np.where(inside, complex(-1e-4, 2e-5), 0).astype(np.complex128)
    sim = pymsft.MSFTSimulation(
        npix_fft=nfft, npix_real=m, box_delta=pitch, wavelength=lam, pool_size=1, fftw_plan="FFTW_ESTIMATE"
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        img, (KX, KY) = sim.get_diffraction_image(dn, output_axes=True)
    img, KX, KY = (np.asarray(a) for a in (img, KX, KY))
    s2 = (KX**2 + KY**2) / k0**2
    ok = s2 < math.sin(math.radians(50)) ** 2
    theta = np.arcsin(np.sqrt(s2[ok]))
    phi = np.arctan2(KY[ok], KX[ok])
    theirs = img[ok] * k0**2 * np.cos(theta)
    exp = ds.Experiment(lam, ds.Directions(theta, phi))
    ours = np.asarray(ds.simulate(ds.VolumeMap(dn, pitch), exp, transform="direct"))
    assert np.max(np.abs(ours - theirs)) / np.max(theirs) < 3e-4
    # the mirrored object (x <-> y) is clearly different: the comparison is sensitive to the conventions
    mirrored = np.asarray(ds.simulate(ds.VolumeMap(dn.transpose(1, 0, 2), pitch), exp, transform="direct"))
    assert np.max(np.abs(mirrored - theirs)) / np.max(theirs) > 0.05
