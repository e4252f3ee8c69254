"""diffscat.materials (delta, beta from xraydb; energy <-> wavelength; attenuation) and materials in configs."""

import json
import math

import h5py
import numpy as np
import pytest
import xraydb

import diffscat as ds
from diffscat.cli import main
from diffscat.io import ConfigError, apply_overrides, parse_config
from diffscat.materials import (
    attenuation_length,
    edges_near,
    get_material,
    material,
    photon_energy_to_wavelength,
    transmission,
    wavelength_to_photon_energy,
)

# Every preset: (formula, density g/cm^3) written out here, independently of diffscat.materials.PRESETS.
PRESETS = {
    "He": ("He", 0.145),
    "Ne": ("Ne", 1.51),
    "Ar": ("Ar", 1.77),
    "Kr": ("Kr", 3.09),
    "Xe": ("Xe", 3.78),
    "Ag": ("Ag", 10.49),
    "Au": ("Au", 19.30),
    "Cu": ("Cu", 8.96),
    "Fe": ("Fe", 7.874),
    "Al": ("Al", 2.70),
    "Si": ("Si", 2.329),
    "SiO2": ("SiO2", 2.20),
    "NaCl": ("NaCl", 2.165),
    "H2O": ("H2O", 1.00),
    "ice": ("H2O", 0.917),
    "polystyrene": ("C8H8", 1.05),
    "sucrose": ("C12H22O11", 1.587),
    "protein": ("H50C30N9O10S", 1.35),
}

# Henke, Gullikson & Davis, At. Data Nucl. Data Tables 54, 181 (1993) (the CXRO tables), at 1000 eV and
# the densities above: (delta, beta). Read from the Henke f1, f2 files shipped with the `periodictable`
# package (2.1.0, periodictable.xsf.index_of_refraction), an independent table from xraydb's Chantler one.
# At 1 keV the two tables agree within 5 % in delta and 18 % in beta (gold); tolerances 8 % and 25 %.
HENKE_1KEV = {
    "He": (3.0279e-05, 8.4224e-08),
    "Ne": (2.6328e-04, 1.1437e-04),
    "Ar": (3.2516e-04, 5.8439e-05),
    "Kr": (4.3749e-04, 8.8840e-05),
    "Xe": (4.1268e-04, 3.5331e-04),
    "Ag": (1.5705e-03, 7.3520e-04),
    "Au": (2.1040e-03, 1.0295e-03),
    "Cu": (9.7221e-04, 9.4858e-04),
    "Fe": (1.3035e-03, 7.0034e-04),
    "Al": (4.8388e-04, 3.1682e-05),
    "Si": (4.4674e-04, 3.6825e-05),
    "SiO2": (4.4735e-04, 6.9616e-05),
    "NaCl": (3.7188e-04, 4.1806e-05),
    "H2O": (2.3569e-04, 4.0451e-05),
    "ice": (2.1613e-04, 3.7093e-05),
    "polystyrene": (2.4554e-04, 2.1194e-05),
    "sucrose": (3.6281e-04, 5.1781e-05),
    "protein": (3.1055e-04, 3.7202e-05),
}


def test_every_preset_is_tested():
    assert set(ds.materials.PRESETS) == set(PRESETS) == set(HENKE_1KEV)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_xraydb(name):
    formula, density = PRESETS[name]
    for energy in (90.0, 1000.0, 8000.0):
        d_ref, b_ref, _ = xraydb.xray_delta_beta(formula, density, energy)
        delta, beta = material(name, energy)
        assert delta == pytest.approx(d_ref, rel=1e-12) and beta == pytest.approx(b_ref, rel=1e-12)
        assert isinstance(delta, float) and beta > 0  # diffscat's beta > 0 absorbs, as xraydb's


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_against_henke_tables(name):
    d_h, b_h = HENKE_1KEV[name]
    delta, beta = material(name, 1000.0)
    assert delta == pytest.approx(d_h, rel=0.08)
    assert beta == pytest.approx(b_h, rel=0.25)


def test_spot_values():
    # Values measured with xraydb 4.5.8 when the module was written (two digits).
    assert material("Ag", 1000.0) == pytest.approx((1.57e-3, 7.0e-4), rel=0.01)
    assert material("Ag", 100.0) == pytest.approx((6.4e-2, 2.6e-2), rel=0.01)
    assert material("liquid helium", 90.0) == pytest.approx((3.89e-3, 8.6e-4), rel=0.01)


def test_helium_xuv_beta_is_below_henke_and_measured_cross_section():
    """Documented in docs/materials.md: in the XUV, Chantler's He beta is ~30 % (90 eV) to ~35 % (65 eV)
    below Henke's table and the measured photoionisation cross-section (Verner et al., ApJ 465, 487 (1996)
    fit to Samson's data: 0.518 Mb at 90 eV). If xraydb's tables change, this test says to update the docs."""
    delta, beta = material("He", 90.0)
    assert delta == pytest.approx(4.086e-3, rel=0.08)  # Henke
    n_atoms = 0.145 / 4.002602 * 6.02214076e23  # per cm^3
    lam_cm = 1239.841984 / 90.0 * 1e-7
    beta_verner = n_atoms * 0.518e-18 * lam_cm / (4 * math.pi)  # beta = n sigma lambda / (4 pi)
    assert beta_verner == pytest.approx(1.24e-3, rel=0.01)
    assert 0.6 < beta / beta_verner < 0.8 and 0.6 < beta / 1.3229e-3 < 0.8  # 1.3229e-3: Henke


def test_names_are_case_insensitive_with_aliases_and_density_override():
    ref = material("He", 90.0)
    for name in ("he", "HE", "helium", "Liquid Helium", " liquid he "):
        assert material(name, 90.0) == ref
    assert material("water", 500.0) == material("H2O", 500.0)
    # delta and beta are proportional to the density
    d2, b2 = material("He", 90.0, density=2 * 0.145)
    assert d2 == pytest.approx(2 * ref[0], rel=1e-12) and b2 == pytest.approx(2 * ref[1], rel=1e-12)
    m = get_material("helium", density=0.125)
    assert m.to_dict() == {"name": "He", "formula": "He", "density": 0.125, "source": "user"}
    assert get_material("Ag").to_dict()["density"] == 10.49


def test_formula_needs_density():
    d_ref, b_ref, _ = xraydb.xray_delta_beta("Fe2O3", 5.24, 700.0)
    assert material("Fe2O3", 700.0, density=5.24) == pytest.approx((d_ref, b_ref), rel=1e-12)
    with pytest.raises(ValueError, match=r"'Fe2O3' is a chemical formula.*density"):
        material("Fe2O3", 700.0)


def test_vectorised_over_energies():
    e = np.array([[50.0, 90.0, 300.0], [1000.0, 5000.0, 20000.0]])
    delta, beta = material("Xe", e)
    assert delta.shape == beta.shape == (2, 3)
    for i in np.ndindex(e.shape):  # xraydb interpolates arrays and scalars slightly differently (3e-5)
        assert (delta[i], beta[i]) == pytest.approx(material("Xe", float(e[i])), rel=1e-4)
    att = attenuation_length("Xe", e)
    assert att.shape == (2, 3)


def test_energy_wavelength_conversion():
    assert photon_energy_to_wavelength(1000.0) == pytest.approx(1.23984198, rel=1e-8)
    assert wavelength_to_photon_energy(13.5) == pytest.approx(91.8401, rel=1e-5)
    e = np.geomspace(10.0, 1e5, 7)
    np.testing.assert_allclose(wavelength_to_photon_energy(photon_energy_to_wavelength(e)), e, rtol=1e-14)
    with pytest.raises(ValueError, match="photon_energy_eV"):
        photon_energy_to_wavelength(0.0)
    with pytest.raises(ValueError, match="wavelength_nm"):
        wavelength_to_photon_energy(-1.0)


def test_attenuation_length_and_transmission():
    _, _, att_cm = xraydb.xray_delta_beta("H2O", 1.0, 500.0)
    att = attenuation_length("water", 500.0)
    assert att == pytest.approx(att_cm * 1e7, rel=1e-12)
    # photoabsorption dominates in the water window: attenuation length ~ lambda / (4 pi beta)
    _, beta = material("water", 500.0)
    assert att == pytest.approx(photon_energy_to_wavelength(500.0) / (4 * math.pi * beta), rel=0.02)
    assert transmission("water", 500.0, 0.0) == 1.0
    assert transmission("water", 500.0, att) == pytest.approx(math.exp(-1), rel=1e-12)
    t = transmission("He", 90.0, [0.0, 100.0, 1000.0])
    np.testing.assert_allclose(t, np.exp(-np.array([0.0, 100.0, 1000.0]) / attenuation_length("He", 90.0)))
    with pytest.raises(ValueError, match="thickness_nm"):
        transmission("He", 90.0, -1.0)


def test_edges_near():
    assert [e[:2] for e in edges_near("Ag", 370.0, window_eV=20.0)] == [("Ag", "M5"), ("Ag", "M4")]
    assert edges_near("He", 90.0) == []


@pytest.mark.parametrize(
    "args, match",
    [
        (("unobtainium", 90.0), r"unknown material 'unobtainium'.*He, Ne, Ar"),
        (("He", 0.5), r"photon_energy_eV = 0\.5 is outside xraydb's tables"),
        (("He", 2e6), r"outside xraydb's tables"),
        (("He", -5.0), r"photon_energy_eV must be positive"),
        (("He", 90.0, 0.0), r"density must be positive"),
        (("SiO2", 90.0, -2.2), r"density must be positive"),
        (("", 90.0), r"material must be a preset name or a chemical formula"),
    ],
)
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        material(*args)


# ----------------------------------------------------------------------------------------------- configs


def cfg_energy(**shape):
    return {
        "experiment": {
            "photon_energy_eV": 90.0,
            "length_unit": "nm",
            "detector": {"type": "qgrid", "n": 16, "theta_max_deg": 20.0},
        },
        "shape": {"type": "Sphere", "radius": 20.0, "material": "He", **shape},
    }


def test_config_with_energy_and_material_simulates():
    cfg = parse_config(cfg_energy())
    exp = ds.io.build_experiment(cfg)
    assert float(exp.wavelength) == pytest.approx(1239.841984 / 90.0, rel=1e-9)
    energy = ds.io.config_photon_energy_eV(cfg)
    shape = ds.io.build_shape(cfg["shape"], energy)
    delta, beta = xraydb.xray_delta_beta("He", 0.145, 90.0)[:2]
    assert float(shape.delta) == pytest.approx(delta, rel=1e-6) and float(shape.beta) == pytest.approx(beta)
    I = np.asarray(ds.simulate(shape, exp))
    ref = np.asarray(
        ds.simulate(ds.Sphere(20.0, delta, beta), ds.Experiment(1239.841984 / 90.0, exp.detector))
    )
    np.testing.assert_allclose(I, ref, rtol=1e-6)
    (rec,) = ds.io.material_records(cfg)
    assert rec["name"] == "He" and rec["density"] == 0.145 and rec["photon_energy_eV"] == 90.0
    assert rec["delta"] == pytest.approx(delta) and rec["beta"] == pytest.approx(beta)
    with pytest.raises(ConfigError, match="needs the photon energy"):
        ds.io.build_shape(cfg["shape"])


def test_config_units_and_wavelength_gives_energy():
    cfg = cfg_energy()
    cfg["experiment"]["length_unit"] = "A"
    parse_config(cfg)
    assert ds.io.config_wavelength(cfg) == pytest.approx(137.7602204, rel=1e-8)  # 13.776 nm in angstrom
    cfg["experiment"] = {"wavelength": 13.5, "length_unit": "nm", "detector": cfg["experiment"]["detector"]}
    assert ds.io.config_photon_energy_eV(parse_config(cfg)) == pytest.approx(91.8401, rel=1e-5)
    cfg["experiment"]["wavelength"], cfg["experiment"]["length_unit"] = 1.35e-8, "m"
    assert ds.io.config_photon_energy_eV(cfg) == pytest.approx(91.8401, rel=1e-5)
    (rec,) = ds.io.material_records(cfg)
    assert rec["delta"] == pytest.approx(material("He", 1239.841984 / 13.5)[0], rel=1e-9)


def test_nested_parts_take_materials_and_density():
    cfg = cfg_energy()
    cfg["shape"] = {
        "type": "CoreShell",
        "core": {"type": "Sphere", "radius": 10.0, "material": "Xe"},
        "shell": {"type": "Sphere", "radius": 20.0, "material": "He", "density": 0.125},
    }
    cs = ds.io.build_shape(parse_config(cfg)["shape"], 90.0)
    assert float(cs.core.delta) == pytest.approx(xraydb.xray_delta_beta("Xe", 3.78, 90.0)[0], rel=1e-6)
    assert float(cs.shell.beta) == pytest.approx(xraydb.xray_delta_beta("He", 0.125, 90.0)[1], rel=1e-6)
    assert [r["path"] for r in ds.io.material_records(cfg)] == ["shape.core", "shape.shell"]


def test_dataset_parameters_use_the_material():
    from diffscat.io._dataset import sample_parameters

    cfg = cfg_energy()
    cfg["dataset"] = {"count": 2, "vary": {"radius": {"dist": "uniform", "low": 10.0, "high": 20.0}}}
    _, kws, _ = sample_parameters(parse_config(cfg), 2, 0)
    assert all(k["delta"] == pytest.approx(material("He", 90.0)[0]) for k in kws)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda c: c["experiment"].update(wavelength=13.0),
            r"give experiment\.wavelength = 13\.0 or experiment\.photon_energy_eV = 90\.0, not both",
        ),
        (lambda c: c["experiment"].pop("photon_energy_eV"), r"missing key experiment\.wavelength"),
        (
            lambda c: c["experiment"].update(photon_energy_eV=-1.0),
            r"photon_energy_eV = -1\.0 must be positive",
        ),
        (lambda c: c["experiment"].update(photon_energy_eV=0.5), r"shape\.material = 'He'.*outside"),
        (lambda c: c["shape"].update(delta=0.01), r"give shape\.material = 'He' or shape\.delta, not both"),
        (lambda c: c["shape"].update(material="Kryptonite"), r"shape\.material = 'Kryptonite'.*unknown"),
        (lambda c: c["shape"].update(material="Fe2O3"), r"shape\.material = 'Fe2O3'.*density"),
        (lambda c: c["shape"].update(density=-1.0), r"shape\.density = -1\.0 must be positive"),
        (lambda c: c["shape"].update(material=3), r"shape\.material = 3 has the wrong type"),
        (lambda c: c["shape"].pop("material") and c["shape"].update(density=1.0), r"needs shape\.material"),
        (
            lambda c: c.update(
                shape={
                    "type": "CoreShell",
                    "material": "He",
                    "core": {"type": "Sphere", "radius": 1.0},
                    "shell": {"type": "Sphere", "radius": 2.0},
                }
            ),
            r"unknown key\(s\) in \[shape \(CoreShell\)\]: material",
        ),
    ],
)
def test_config_errors_name_the_key(edit, match):
    cfg = cfg_energy()
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        parse_config(cfg)


def test_overrides_switch_between_alternatives():
    cfg = {"experiment": {"wavelength": 13.0}, "shape": {"delta": 0.1, "beta": 0.2}}
    apply_overrides(cfg, ["experiment.photon_energy_eV=90", "shape.material=He", "shape.density=0.125"])
    assert cfg == {"experiment": {"photon_energy_eV": 90}, "shape": {"material": "He", "density": 0.125}}
    apply_overrides(cfg, ["experiment.wavelength=13.5", "shape.material=Ag"])
    assert cfg == {"experiment": {"wavelength": 13.5}, "shape": {"material": "Ag"}}


CLI = """
[experiment]
wavelength = 13.0
length_unit = "nm"
[experiment.detector]
type = "qgrid"
n = 16
theta_max_deg = 20.0
[shape]
type = "Sphere"
radius = 15.0
material = "helium"
"""


def test_cli_set_photon_energy_and_file_records_materials(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(CLI)
    out = tmp_path / "m.cxi"
    args = [
        "simulate",
        str(p),
        "-o",
        str(out),
        "--no-png",
        "--quiet",
        "--set",
        "experiment.photon_energy_eV=90",
    ]
    assert main(args) == 0
    with h5py.File(out) as f:
        g = f["entry_1/diffscat"]
        assert float(g.attrs["photon_energy_eV"]) == 90.0
        (rec,) = json.loads(g.attrs["materials_json"])
        assert json.loads(g.attrs["config_json"])["shape"]["material"] == "helium"
    d_ref, b_ref, _ = xraydb.xray_delta_beta("He", 0.145, 90.0)
    assert (rec["name"], rec["formula"], rec["density"]) == ("He", "He", 0.145)
    assert rec["delta"] == pytest.approx(d_ref, rel=1e-12) and rec["beta"] == pytest.approx(b_ref, rel=1e-12)
    d = ds.io.read_cxi(out, length_unit="nm")
    assert float(d.experiment.wavelength) == pytest.approx(1239.841984 / 90.0, rel=1e-9)
    assert float(ds.io.shape_from_dict(d.truth).delta) == pytest.approx(d_ref, rel=1e-6)
