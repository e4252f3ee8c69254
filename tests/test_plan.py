"""`diffscat plan`: the planning report (diffscat/_plan.py, diffscat/_cli_plan.py).

Expected values come from independent formulas (chords of an ellipsoid, q = 4 pi / lambda sin(theta / 2),
pixel q steps of the detector geometry, Beer-Lambert with xraydb's attenuation length), not from the code
under test. Detectors are shrunk by --set overrides so that every simulation is tiny."""

import math
import os
import re
import shutil

import numpy as np
import pytest

import diffscat as ds
from diffscat._plan import VERDICT_GOOD, VERDICT_OUTSIDE, one_photon_angle, validity_verdict
from diffscat.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROPLET = os.path.join(ROOT, "configs", "simulate-droplet.toml")
SPHERE = os.path.join(ROOT, "configs", "simulate-sphere.toml")
# 32 x 32 pixels of 300 um (the droplet config's angular range with 4x larger pixels)
DROPLET_SMALL = [
    "experiment.detector.shape=[32, 32]",
    "experiment.detector.center=[15.5, 15.5]",
    "experiment.detector.pixel_size=300.0e3",
    "detector_model.mcp.hole_radius=1.5",
    "detector_model.mask.hole_radius=1.5",
]
SPHERE_SMALL = ["experiment.detector.n=48"]


def n_pages(pdf_path) -> int:
    with open(pdf_path, "rb") as f:
        return len(re.findall(rb"/Type\s*/Page[^s]", f.read()))


@pytest.fixture(scope="module")
def droplet(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "droplet.pdf"
    return ds.plan_report(DROPLET, out, overrides=DROPLET_SMALL)


@pytest.fixture(scope="module")
def sphere(tmp_path_factory):
    """The shipped sphere config without its [detector_model] section: the plan's defaults (fluence)."""
    import re as _re

    d = tmp_path_factory.mktemp("plan")
    with open(SPHERE) as f:
        text = _re.sub(r"\[detector_model\][^\[]*", "", f.read())
    assert "fluence =" not in text
    cfg = d / "sphere-no-detector-model.toml"
    cfg.write_text(text)
    return ds.plan_report(str(cfg), d / "sphere.pdf", overrides=SPHERE_SMALL, png=False)


def test_report_files(droplet, sphere):
    for r, npng in ((droplet, 3), (sphere, 0)):
        assert os.path.getsize(r["pdf"]) > 10_000
        assert r["pages"] == 3 and n_pages(r["pdf"]) == 3
        assert len(r["pngs"]) == npng and all(os.path.getsize(p) > 1000 for p in r["pngs"])
    assert not [p for p in os.listdir(os.path.dirname(droplet["pdf"])) if p.startswith(".tmp-")]


def test_droplet_material_thickness_transmission(droplet):
    r = droplet
    assert r["photon_energy_eV"] == 65.0
    assert r["wavelength"] == pytest.approx(1239.841984 / 65.0, rel=1e-8)
    (rec,) = r["materials"]
    assert rec["name"] == "He" and rec["delta"] == pytest.approx(ds.material("He", 65.0)[0])
    # chord through the centre along z of the ellipsoid (300, 300, 280) rotated by ZYZ (0, 30, 0) deg
    R = np.asarray(ds.rotation_from_euler(np.array([0.0, 30.0, 0.0]), "ZYZ", degrees=True))
    d = R.T @ np.array([0.0, 0.0, 1.0])  # the beam direction in the body frame
    chord = 2.0 / math.sqrt(np.sum(d**2 / np.array([300.0, 300.0, 280.0]) ** 2))
    assert r["thickness"] == pytest.approx(chord, rel=2e-3)
    att = ds.materials.attenuation_length("He", 65.0)  # nm, the config's unit
    assert r["attenuation_length"] == pytest.approx(att, rel=1e-9)
    assert r["transmission"] == pytest.approx(math.exp(-r["thickness"] / att), rel=1e-9)
    assert 0.2 < r["transmission"] < 0.6
    # energy curves bracket the chosen energy; the He K edge (24.6 eV) is in the window 65/3 .. 195 eV
    (c,) = r["material_curves"]
    assert c["energy_eV"][0] < 65.0 < c["energy_eV"][-1]
    assert any(edge == "K" and abs(e - 24.6) < 0.5 for _, edge, e in c["edges"])


def test_droplet_fluence_geometry_sampling(droplet):
    r = droplet
    hv = 65.0 * 1.602176634e-19  # J
    assert r["fluence"] == pytest.approx(0.1 * 20e-6 / (hv * 1e10), rel=1e-5)  # photons / nm^2
    D, p = 70.0e6, 300.0e3
    theta_edge = math.atan(math.hypot(15.5 * p, 0.5 * p) / D)  # nearest pixel of the outer ring
    theta_corner = math.atan(math.hypot(15.5 * p, 15.5 * p) / D)
    assert math.radians(r["theta_edge_deg"]) == pytest.approx(theta_edge, rel=1e-5)
    assert math.radians(r["theta_corner_deg"]) == pytest.approx(theta_corner, rel=1e-5)
    lam = r["wavelength"]
    for key, th in (("edge", theta_edge), ("corner", theta_corner)):
        assert r[f"q_max_{key}"] == pytest.approx(4 * math.pi / lam * math.sin(th / 2), rel=1e-5)
        assert r[f"resolution_{key}"] == pytest.approx(lam / (2 * math.sin(th / 2)), rel=1e-5)
        assert r[f"half_period_{key}"] == pytest.approx(lam / (4 * math.sin(th / 2)), rel=1e-5)
    # fringe period pi / R, R = 300 nm; one pixel near the beam spans k0 p / D in q
    assert r["fringe_period_q"] == pytest.approx(math.pi / 300.0)
    dq = 2 * math.pi / lam * p / D
    assert r["pixels_per_fringe_small"] == pytest.approx(math.pi / 300.0 / dq, rel=2e-3)
    # on a flat detector a pixel spans less q at larger angles (cos^2 theta radially): about 1 % at 5.5 deg
    ratio = r["pixels_per_fringe_large"] / r["pixels_per_fringe_small"]
    assert 1.0 < ratio < 1.0 / math.cos(theta_corner) ** 2 + 1e-6
    assert r["undersampled"] == (min(r["pixels_per_fringe_small"], r["pixels_per_fringe_large"]) < 2)
    assert r["validity"]["verdict"] == VERDICT_GOOD and r["validity"]["rule_of_thumb"]


def test_sphere_defaults_and_one_photon_angle(sphere):
    r = sphere
    assert r["materials"] == [] and "default" in r["fluence_source"]
    assert r["fluence"] == pytest.approx(1e10 / 1e6)  # 1e10 photons / um^2 in photons / nm^2
    assert r["thickness"] == pytest.approx(14.0, rel=2e-3)
    assert r["transmission"] == pytest.approx(math.exp(-r["thickness"] * 4 * math.pi * 0.001 / 1.0), rel=1e-9)
    n, smax = 48, math.sin(math.radians(30.0))
    ds_ = 2 * smax / n
    assert math.radians(r["theta_edge_deg"]) == pytest.approx(math.asin(math.hypot(23.5 * ds_, 0.5 * ds_)))
    k0 = 2 * math.pi
    assert r["pixels_per_fringe_small"] == pytest.approx((math.pi / 7.0) / (k0 * ds_), rel=1e-3)
    # the one-photon angle: the profile is >= 1 at the bin before it and < 1 at every bin after it
    th, ph, t1 = r["profile_theta_deg"], r["profile_photons"], r["one_photon_theta_deg"]
    assert r["one_photon_status"] == "crossing"
    i = np.searchsorted(th, t1)
    assert ph[i - 1] >= 1.0 and np.all(ph[i:] < 1.0)
    f = math.log(ph[i - 1]) / (math.log(ph[i - 1]) - math.log(ph[i]))
    assert t1 == pytest.approx(th[i - 1] + f * (th[i] - th[i - 1]))
    # photons per pixel = fluence x dsigma/dOmega x solid angle (no polarisation, efficiency 1)
    exp = r["pattern_experiment"]
    I = np.asarray(ds.simulate(r["shape"], exp))
    np.testing.assert_allclose(
        r["pattern_photons"], r["fluence"] * I * np.asarray(exp.solid_angle), rtol=1e-4, atol=1e-12
    )
    assert r["validity"]["verdict"] == VERDICT_GOOD


def test_one_photon_angle_cases():
    th = np.array([1.0, 2.0, 3.0, 4.0])
    assert one_photon_angle(th, [100.0, 0.5, 10.0, 0.1]) == (pytest.approx(3.0 + 1 / 2), "crossing")
    assert one_photon_angle(th, [5.0, 4.0, 3.0, 2.0]) == (None, "above")
    assert one_photon_angle(th, [0.5, 0.4, 0.3, 0.2]) == (None, "below")


def test_validity_verdict_table():
    # the measured points come back, and the verdict flips between delta = 0 and delta = 0.1
    assert validity_verdict(0.001, 0.0, 0.001)["error_percent"] == pytest.approx(0.16)
    assert validity_verdict(math.hypot(0.02, 0.01), -0.02, 0.01)["error_percent"] == pytest.approx(1.09)
    v0, v1 = validity_verdict(0.001, 0.0, 0.001), validity_verdict(0.1, 0.1, 0.0)
    assert v0["verdict"] == VERDICT_GOOD and v0["rule_of_thumb"]
    assert v1["verdict"] == VERDICT_OUTSIDE and not v1["rule_of_thumb"]
    assert v1["error_percent"] == pytest.approx(18.0)
    assert validity_verdict(0.05, 0.05, 0.0)["verdict"] == "marginal"


def test_verdict_flips_in_the_report(tmp_path):
    r = ds.plan_report(
        SPHERE, tmp_path / "s.pdf", overrides=["experiment.detector.n=8", "shape.delta=0.1"], png=False
    )
    assert r["delta_max"] == 0.1 and r["validity"]["verdict"] == VERDICT_OUTSIDE


def test_cli(tmp_path, capsys):
    cfg = tmp_path / "sphere.toml"
    shutil.copy(SPHERE, cfg)
    before = cfg.read_bytes()
    out = tmp_path / "out" / "plan.pdf"
    assert main(["plan", str(cfg), "-o", str(out), "--set", "experiment.detector.n=16", "--no-png"]) == 0
    text = capsys.readouterr().out
    assert "resolution" in text and "eq. 9 validity" in text and out.exists() and n_pages(out) == 3
    assert not (tmp_path / "out" / "plan-p1.png").exists()
    assert main(["plan", str(cfg), "-o", str(cfg)]) == 2  # refuses to overwrite the config
    assert "refusing" in capsys.readouterr().err
    assert cfg.read_bytes() == before
    with pytest.raises(ValueError, match="config file"):
        ds.plan_report(str(cfg), str(cfg))
