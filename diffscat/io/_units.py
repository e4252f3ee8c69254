"""Length units: files hold SI metres; users pick their unit explicitly (e.g. length_unit="nm")."""

from __future__ import annotations

__all__ = ["LENGTH_UNITS", "length_unit_m"]

LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "A": 1e-10, "angstrom": 1e-10, "pm": 1e-12}


def length_unit_m(unit: str) -> float:
    """Metres per user length unit: one of m, mm, um, nm, A (= angstrom), pm."""
    if not isinstance(unit, str) or unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit must be one of {sorted(LENGTH_UNITS)}, got {unit!r}")
    return LENGTH_UNITS[unit]
