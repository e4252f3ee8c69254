"""Refractive indices of materials from tabulated atomic scattering factors (xraydb, Chantler tables).

diffscat's shapes take the refractive index n = 1 - delta + i beta (beta > 0 absorbs; docs/conventions.md).
This module looks delta and beta up for a named material or a chemical formula at a photon energy, so that
nobody has to copy them from a table by hand:

    delta, beta = diffscat.material("He", 90.0)             # liquid helium at 90 eV (13.8 nm)
    delta, beta = diffscat.material("Fe2O3", 1000.0, 5.24)  # a formula needs its density (g/cm^3)

Values come from `xraydb.xray_delta_beta` (Chantler, J. Phys. Chem. Ref. Data 24, 71 (1995) and 29, 597
(2000): independent-atom form factors f1 + i f2). xraydb writes n = 1 - delta - i beta (the opposite sign
convention for the time dependence); its beta is positive for absorption, the same number as diffscat's.

Limits (docs/materials.md):
- Energies must lie in the range of xraydb's tables for every element of the formula (about 1 eV to 966
  keV). Below about 30 eV, and within a few tens of eV of an absorption edge, tabulated independent-atom
  values can be wrong by tens of percent: they have no chemical shifts, near-edge or excitonic structure
  (liquid helium absorbs strongly at 21 eV, below its 24.6 eV ionisation threshold, which the tables miss),
  and tables disagree (at 90 eV Henke's and Chantler's beta differ by up to a factor 3 for Xe, Ag, Au;
  for liquid helium Chantler's beta is ~30 % below Henke's and the measured cross-section).
- delta and beta scale linearly with density: a preset's density is a typical value (source in `PRESETS`);
  pass `density=` to change it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

__all__ = [
    "HC_EV_NM",
    "Material",
    "PRESETS",
    "get_material",
    "material",
    "photon_energy_to_wavelength",
    "wavelength_to_photon_energy",
    "attenuation_length",
    "transmission",
    "energy_range",
    "edges_near",
]

# h c / e from the exact SI 2019 constants, in eV nm: 1239.841984...
HC_EV_NM = 6.62607015e-34 * 299_792_458.0 / 1.602176634e-19 * 1e9


@dataclasses.dataclass(frozen=True)
class Material:
    """A material: a name, a chemical formula and a mass density.

    **Fields:**
    - `name`: the preset's name, or the formula for a material given by its formula.
    - `formula`: chemical formula as xraydb parses it (case-sensitive: "Co" cobalt, "CO" carbon monoxide).
    - `density`: mass density in g/cm^3, > 0.
    - `source`: where the density comes from (free text; "user" when given by the caller).

    `to_dict()` gives the fields as a plain dict, for files that record what was used.
    """

    name: str
    formula: str
    density: float
    source: str = "user"

    def __post_init__(self):
        if not isinstance(self.formula, str) or not self.formula:
            raise ValueError(f"formula must be a non-empty string, got {self.formula!r}")
        _check_density(self.density)

    def delta_beta(self, photon_energy_eV) -> tuple[Any, Any]:
        """(delta, beta) at `photon_energy_eV` (eV, a scalar or an array of any shape); floats for a scalar,
        arrays of the energies' shape otherwise."""
        return _delta_beta_atlen(self, photon_energy_eV)[:2]

    def attenuation_length(self, photon_energy_eV):
        """1/e intensity attenuation length in nm (photoabsorption plus Compton and Rayleigh scattering)."""
        return _delta_beta_atlen(self, photon_energy_eV)[2]

    def to_dict(self) -> dict[str, Any]:
        """{"name", "formula", "density" [g/cm^3], "source"}."""
        return dataclasses.asdict(self)


# Presets: name -> (formula, density g/cm^3, source of the density, aliases). Densities at the conditions
# stated; delta and beta scale with density, so pass density= for other conditions.
_PRESETS: dict[str, tuple[str, float, str, tuple[str, ...]]] = {
    "He": (
        "He",
        0.145,
        "liquid He-4 below 1 K (Donnelly & Barenghi, J. Phys. Chem. Ref. Data 27, 1217 (1998): 0.1451); "
        "0.125 at 4.2 K",
        ("helium", "liquid helium", "liquid he", "lhe", "he droplet", "helium droplet"),
    ),
    "Ne": (
        "Ne",
        1.51,
        "solid Ne at 0 K (Kittel, Solid State Physics, ch. 3, table 1)",
        ("neon", "solid neon"),
    ),
    "Ar": ("Ar", 1.77, "solid Ar at 0 K (Kittel, ch. 3, table 1; fcc a = 5.31 A)", ("argon", "solid argon")),
    "Kr": (
        "Kr",
        3.09,
        "solid Kr at 0 K (Kittel, ch. 3, table 1; fcc a = 5.64 A)",
        ("krypton", "solid krypton"),
    ),
    "Xe": (
        "Xe",
        3.78,
        "solid Xe at 0 K (Kittel, ch. 3, table 1; fcc a = 6.13 A); thermal expansion lowers it by a few "
        "per cent in clusters at 50-90 K and to about 3.5 at the 161 K triple point",
        ("xenon", "solid xenon"),
    ),
    "Ag": ("Ag", 10.49, "CRC Handbook of Chemistry and Physics, 20 C", ("silver",)),
    "Au": ("Au", 19.30, "CRC Handbook, 20 C", ("gold",)),
    "Cu": ("Cu", 8.96, "CRC Handbook, 20 C", ("copper",)),
    "Fe": ("Fe", 7.874, "CRC Handbook, 20 C", ("iron",)),
    "Al": ("Al", 2.70, "CRC Handbook, 20 C", ("aluminium", "aluminum")),
    "Si": ("Si", 2.329, "CRC Handbook, 20 C", ("silicon",)),
    "SiO2": ("SiO2", 2.20, "amorphous (fused) silica, CRC Handbook", ("silica", "fused silica", "glass")),
    "NaCl": ("NaCl", 2.165, "CRC Handbook, 20 C", ("salt", "sodium chloride")),
    "H2O": ("H2O", 1.00, "liquid water near 4 C", ("water",)),
    "ice": ("H2O", 0.917, "hexagonal ice at 0 C (CRC Handbook)", ("ice ih",)),
    "polystyrene": ("C8H8", 1.05, "polystyrene (latex spheres), manufacturers' value", ("latex",)),
    "sucrose": ("C12H22O11", 1.587, "crystalline sucrose, CRC Handbook", ("sugar",)),
    "protein": (
        "H50C30N9O10S",
        1.35,
        "generic protein H50C30N9O10S at 1.35 g/cm^3 (Howells et al., J. Electron Spectrosc. 170, 4 (2009))",
        (),
    ),
}


def _check_density(density) -> float:
    if isinstance(density, bool) or not isinstance(density, int | float | np.floating | np.integer):
        raise ValueError(f"density must be a number in g/cm^3, got {density!r}")
    if not np.isfinite(density) or density <= 0:
        raise ValueError(f"density must be positive and finite (g/cm^3), got {density!r}")
    return float(density)


#: Preset materials by name (see `material`): name -> `Material`.
PRESETS: dict[str, Material] = {k: Material(k, f, d, s) for k, (f, d, s, _) in _PRESETS.items()}
_ALIASES: dict[str, str] = {}
for _k, (_f, _d, _s, _al) in _PRESETS.items():
    for _a in (_k, *_al):
        _ALIASES[_a.lower()] = _k


def get_material(name_or_formula: str | Material, density=None) -> Material:
    """The `Material` for a preset name or a chemical formula.

    **Arguments:**
    - `name_or_formula`: a preset name or alias (case-insensitive: "He", "helium", "liquid helium", "Ag",
      "water", ...; `PRESETS` lists them), or a chemical formula (case-sensitive, e.g. "Fe2O3",
      "C5H8O2"), or a `Material` (returned, with `density` replaced when given).
    - `density`: mass density in g/cm^3, > 0. Required for a formula; overrides a preset's density.

    **Raises:** `ValueError` naming `density` when a formula has none, or when it is not positive;
    `ValueError` listing the presets when the name is neither a preset nor a valid formula.
    """
    if isinstance(name_or_formula, Material):
        m = name_or_formula
        return (
            m if density is None else dataclasses.replace(m, density=_check_density(density), source="user")
        )
    if not isinstance(name_or_formula, str) or not name_or_formula.strip():
        raise ValueError(f"material must be a preset name or a chemical formula, got {name_or_formula!r}")
    name = name_or_formula.strip()
    key = _ALIASES.get(name.lower())
    if key is not None:
        m = PRESETS[key]
        if density is not None:
            m = dataclasses.replace(m, density=_check_density(density), source="user")
        return m
    import xraydb

    if not xraydb.validate_formula(name):
        raise ValueError(
            f"unknown material {name!r}: not a preset ({', '.join(PRESETS)}; aliases such as 'helium', "
            "'water') and not a chemical formula (element symbols are case-sensitive, e.g. 'Fe2O3')"
        )
    if density is None:
        raise ValueError(
            f"material {name!r} is a chemical formula, not a preset: give its density (g/cm^3), "
            f"e.g. density=2.2 (presets: {', '.join(PRESETS)})"
        )
    return Material(name, name, _check_density(density), "user")


@functools.cache
def _element_range(symbol: str) -> tuple[float, float]:
    import xraydb

    e = xraydb.chantler_energies(symbol)
    return float(np.min(e)), float(np.max(e))


def energy_range(name_or_formula: str | Material, density=None) -> tuple[float, float]:
    """(lowest, highest) photon energy in eV that xraydb's Chantler tables cover for every element of the
    material (about 1 eV to 966 keV). Values near the low end are not reliable (module docstring)."""
    from xraydb import chemparse

    m = get_material(name_or_formula, density if density is not None else 1.0)
    ranges = [_element_range(el) for el in chemparse(m.formula)]
    return max(r[0] for r in ranges), min(r[1] for r in ranges)


def _energies(photon_energy_eV, m: Material) -> np.ndarray:
    e = np.asarray(photon_energy_eV, dtype=float)
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"photon_energy_eV must be positive and finite (eV), got {photon_energy_eV!r}")
    lo, hi = energy_range(m)
    if np.any(e < lo) or np.any(e > hi):
        raise ValueError(
            f"photon_energy_eV = {photon_energy_eV!r} is outside xraydb's tables for {m.name} "
            f"({lo:g} eV to {hi:g} eV)"
        )
    return e


def _delta_beta_atlen(m: Material, photon_energy_eV):
    import xraydb

    e = _energies(photon_energy_eV, m)
    delta, beta, atlen_cm = xraydb.xray_delta_beta(m.formula, m.density, e.ravel() if e.ndim else float(e))
    out = [np.asarray(delta, float), np.asarray(beta, float), np.asarray(atlen_cm, float) * 1e7]
    if e.ndim == 0:
        return tuple(float(x) for x in out)
    return tuple(x.reshape(e.shape) for x in out)


def material(name_or_formula: str | Material, photon_energy_eV, density=None) -> tuple[Any, Any]:
    """(delta, beta) of a material at a photon energy, for n = 1 - delta + i beta (beta > 0 absorbs).

    **Arguments:**
    - `name_or_formula`: a preset (case-insensitive: "He", "helium", "Ag", "water", "polystyrene", ...;
      `PRESETS` lists them with their densities) or a chemical formula ("Fe2O3"; then `density` is needed),
      or a `Material`.
    - `photon_energy_eV`: photon energy in eV: a number, or an array of any shape (vectorised).
    - `density`: mass density in g/cm^3, > 0; required for a formula, overrides a preset's density.

    **Returns:** `(delta, beta)`: floats for a scalar energy, NumPy arrays of the energies' shape otherwise.

    Values: `xraydb.xray_delta_beta` (Chantler tables; beta from photoabsorption). Near absorption edges and
    below ~30 eV they can be off by tens of per cent (docs/materials.md).

    **Raises:** `ValueError` for an unknown name (the message lists the presets), a formula without
    `density`, a non-positive density, or an energy outside xraydb's tables.
    """
    return get_material(name_or_formula, density).delta_beta(photon_energy_eV)


def photon_energy_to_wavelength(photon_energy_eV):
    """Wavelength in nm of photons of `photon_energy_eV` (eV, > 0; scalar or array): lambda = h c / E,
    with h c = 1239.841984 eV nm (so 1 keV is 1.23984 nm)."""
    e = np.asarray(photon_energy_eV, dtype=float)
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"photon_energy_eV must be positive and finite (eV), got {photon_energy_eV!r}")
    out = HC_EV_NM / e
    return float(out) if out.ndim == 0 else out


def wavelength_to_photon_energy(wavelength_nm):
    """Photon energy in eV of light of wavelength `wavelength_nm` (nm, > 0; scalar or array): E = h c / lambda."""
    lam = np.asarray(wavelength_nm, dtype=float)
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"wavelength_nm must be positive and finite (nm), got {wavelength_nm!r}")
    out = HC_EV_NM / lam
    return float(out) if out.ndim == 0 else out


def attenuation_length(name_or_formula: str | Material, photon_energy_eV, density=None):
    """1/e attenuation length of the intensity in nm (xraydb: photoabsorption plus Compton and Rayleigh
    scattering), at `photon_energy_eV` (eV; scalar or array). Arguments as for `material`."""
    return get_material(name_or_formula, density).attenuation_length(photon_energy_eV)


def transmission(name_or_formula: str | Material, photon_energy_eV, thickness_nm, density=None):
    """Intensity transmission exp(-thickness / attenuation_length) of a slab `thickness_nm` (nm, >= 0)
    thick at `photon_energy_eV` (eV). Energies and thicknesses broadcast. Arguments as for `material`."""
    t = np.asarray(thickness_nm, dtype=float)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"thickness_nm must be finite and >= 0 (nm), got {thickness_nm!r}")
    out = np.exp(-t / np.asarray(attenuation_length(name_or_formula, photon_energy_eV, density)))
    return float(out) if out.ndim == 0 else out


def edges_near(name_or_formula: str | Material, photon_energy_eV: float, window_eV=50.0, density=None):
    """Absorption edges of the material's elements within `window_eV` (eV) of `photon_energy_eV` (eV), as a
    list of (element, edge, edge energy eV), nearest first. Tabulated delta and beta are least reliable
    there."""
    import xraydb
    from xraydb import chemparse

    m = get_material(name_or_formula, density if density is not None else 1.0)
    e = float(photon_energy_eV)
    out = []
    for el in chemparse(m.formula):
        for edge, info in xraydb.xray_edges(el).items():
            if abs(info.energy - e) <= window_eV:
                out.append((el, edge, float(info.energy)))
    return sorted(out, key=lambda x: abs(x[2] - e))
