"""TOML configs for `diffscat simulate`: loading, validation, `--set` overrides and builders.

Sections (docs/cli.md lists every key): `[experiment]` (+ `[experiment.detector]`), `[shape]`,
`[simulation]`, `[detector_model]` (+ `.mcp`, `.mask`), `[output]`, `[dataset]` (+ `.vary.<name>`).
Every error is a `ConfigError` (a ValueError) naming the offending key and value; unknown keys are rejected.

The beam is `experiment.wavelength` (in `length_unit`) or `experiment.photon_energy_eV`, exactly one. A shape
table (also a nested part) may give `material` (a preset such as "He" or a formula, + `density` in g/cm^3)
instead of `delta`, `beta`: they are looked up at the config's photon energy (`diffscat.materials`).
"""

from __future__ import annotations

import inspect
import os
import tomllib
from typing import Any

import numpy as np

from .._experiment import Experiment
from .._simulate import TRANSFORMS
from ..detectors import POLARISATIONS
from ..detectors._base import DETECTOR_TYPES
from ..engines import METHODS
from ..materials import HC_EV_NM, get_material
from ._schema import ConfigError, Key, _fmt, _is_num, check_keys, check_section, get, numbers
from ._shape_io import shape_class
from ._units import LENGTH_UNITS, length_unit_m

__all__ = [
    "ConfigError",
    "load_config",
    "parse_config",
    "apply_overrides",
    "build_experiment",
    "build_shape",
    "shape_kwargs",
    "config_wavelength",
    "config_photon_energy_eV",
    "material_records",
    "build_detector_model",
    "DISTRIBUTIONS",
]

DISTRIBUTIONS = ("fixed", "uniform", "loguniform", "normal", "choice", "uniform_so3")


# the primitives live in _schema.py (shared with the fit and batch-fit configs); short names kept here
_check_keys, _get, _numbers = check_keys, get, numbers


# ----------------------------------------------------------------------------------------------- schema

TOP = {"experiment", "shape", "simulation", "detector_model", "output", "dataset"}
EXPERIMENT = {"wavelength", "photon_energy_eV", "length_unit", "detector"}
DETECTOR_MODEL = {
    "fluence",
    "pulse_energy",
    "focus_area",
    "transmission",
    "polarisation",
    "efficiency",
    "noise",
    "readout_sigma",
    "background",
    "offset",
    "saturation",
    "saturation_mode",
    "binning",
    "seed",
    "mcp",
    "mask",
}
MCP = {"gain", "gamma", "saturation", "hole_radius"}
MASK = {
    "beamstop_radius",
    "hole_radius",
    "rectangles",
    "gap_rows",
    "gap_cols",
    "gap_width",
    "bad_pixels",
    "theta_min_deg",
    "theta_max_deg",
}
DATASET = {"count", "seed", "chunk", "vary"}
SHAPE_EXTRA = {"type", "euler_deg", "euler_seq"}
SHAPE_MATERIAL = {"material", "density"}  # in place of delta, beta (shapes that have them)
VARY = {"dist", "low", "high", "mean", "std", "values", "value", "mode"}


def _check_experiment(e: dict) -> None:
    _check_keys(e, EXPERIMENT, "experiment")
    if "wavelength" in e and "photon_energy_eV" in e:
        raise ConfigError(
            f"give experiment.wavelength = {e['wavelength']!r} or experiment.photon_energy_eV = "
            f"{e['photon_energy_eV']!r}, not both"
        )
    if "photon_energy_eV" in e:
        _get(e, "photon_energy_eV", "experiment", "number", positive=True)
    elif "wavelength" not in e:
        raise ConfigError("missing key experiment.wavelength (or experiment.photon_energy_eV)")
    else:
        _get(e, "wavelength", "experiment", "number", positive=True)
    unit = _get(e, "length_unit", "experiment", "str", required=True)
    if unit not in LENGTH_UNITS:
        raise ConfigError(f"experiment.length_unit = {unit!r} is not one of {sorted(LENGTH_UNITS)}")
    d = _get(e, "detector", "experiment", "any", required=True)
    if not isinstance(d, dict):
        raise ConfigError(f"experiment.detector must be a table, got {_fmt(d)}")
    t = _get(d, "type", "experiment.detector", "str", required=True)
    if t not in DETECTOR_TYPES:  # the registry, so detector types registered after import are known too
        raise ConfigError(f"experiment.detector.type = {t!r} is unknown; use one of {sorted(DETECTOR_TYPES)}")
    _check_keys(d, {"type", *DETECTOR_TYPES[t].config_keys}, f"experiment.detector ({t})")
    DETECTOR_TYPES[t].check_config(_DetectorCheck(d, "experiment.detector"))


class _DetectorCheck:
    """The typed look-ups `AbstractDetector.check_config` validates a detector table with (ConfigError)."""

    def __init__(self, d: dict, path: str):
        self.d, self.path = d, path

    def get(self, key: str, kind: str, *, required=False, positive=False, min_=None):
        return _get(self.d, key, self.path, kind, required=required, positive=positive, min_=min_)

    def numbers(self, key: str, length: int | None = None, positive=False) -> list[float]:
        return _numbers(self.d[key], f"{self.path}.{key}", length, positive=positive)

    def error(self, key: str, value, message: str):
        raise ConfigError(f"{self.path}.{key} = {value!r} {message}")


def _shape_params(cls) -> tuple[set[str], set[str]]:
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = {n for n in names if params[n].default is inspect.Parameter.empty}
    return names, required


# Constructor arguments that hold other shapes: a nested table, or an array of tables ([[shape.parts]]).
NESTED_SHAPES = {"core": "table", "shell": "table", "parts": "tables"}


def _check_shape(s: dict, path: str = "shape") -> None:
    if not isinstance(s, dict):
        raise ConfigError(f"[{path}] must be a table, got {_fmt(s)}")
    t = _get(s, "type", path, "str", required=True)
    try:
        cls = shape_class(t)
    except ValueError as e:
        raise ConfigError(f"{path}.type = {t!r}: {e}") from None
    names, required = _shape_params(cls)
    has_index = "delta" in names
    _check_keys(s, names | SHAPE_EXTRA | (SHAPE_MATERIAL if has_index else set()), f"{path} ({cls.__name__})")
    if "material" in s:
        given = [k for k in ("delta", "beta") if k in s]
        if given:
            raise ConfigError(
                f"give {path}.material = {_fmt(s['material'])} or {path}.{' and '.join(given)}, not both"
            )
        m = _get(s, "material", path, "str")
        dens = _get(s, "density", path, "number", positive=True)
        try:
            get_material(m, dens)
        except ValueError as e:
            raise ConfigError(f"{path}.material = {m!r}: {e}") from None
    elif "density" in s:
        raise ConfigError(f"{path}.density = {_fmt(s['density'])} needs {path}.material")
    for r in sorted(required):
        if r not in s:
            raise ConfigError(f"missing key {path}.{r} (required by {cls.__name__})")
    for k, v in s.items():
        if k in ("type", "euler_seq", "material"):
            continue
        if k in NESTED_SHAPES:
            if NESTED_SHAPES[k] == "table":
                if not isinstance(v, dict):
                    raise ConfigError(
                        f"{path}.{k} must be a shape table ([{path}.{k}] with a type), got {_fmt(v)}"
                    )
                _check_shape(v, f"{path}.{k}")
            else:
                if not isinstance(v, list) or not v or not all(isinstance(x, dict) for x in v):
                    raise ConfigError(
                        f"{path}.{k} must be a non-empty array of shape tables ([[{path}.{k}]]), got {_fmt(v)}"
                    )
                for i, x in enumerate(v):
                    _check_shape(x, f"{path}.{k}[{i}]")
            continue
        if isinstance(v, str | dict) or isinstance(v, bool):
            raise ConfigError(
                f"{path}.{k} = {_fmt(v)} has the wrong type: expected a number or a list of numbers"
            )
    if "euler_deg" in s:
        if "rotation" in s:
            raise ConfigError(f"give {path}.rotation or {path}.euler_deg, not both")
        _numbers(s["euler_deg"], f"{path}.euler_deg", 3)


def _check_detector_model(m: dict) -> None:
    p = "detector_model"
    _check_keys(m, DETECTOR_MODEL, p)
    if "fluence" in m:
        if "pulse_energy" in m or "focus_area" in m:
            raise ConfigError("give detector_model.fluence or pulse_energy + focus_area, not both")
        _get(m, "fluence", p, "number", positive=True)
    elif "pulse_energy" in m or "focus_area" in m:
        _get(m, "pulse_energy", p, "number", required=True, positive=True)
        _get(m, "focus_area", p, "number", required=True, positive=True)
    else:
        raise ConfigError("missing key detector_model.fluence (or pulse_energy + focus_area)")
    _get(m, "transmission", p, "number", min_=0)
    pol = _get(m, "polarisation", p, "str", default="none")
    if pol not in POLARISATIONS:
        raise ConfigError(f"{p}.polarisation = {pol!r} must be one of {', '.join(POLARISATIONS)}")
    _get(m, "efficiency", p, "number", min_=0)
    noise = _get(m, "noise", p, "str", default="poisson")
    if noise not in ("poisson", "none"):
        raise ConfigError(f"{p}.noise = {noise!r} must be 'poisson' or 'none'")
    _get(m, "readout_sigma", p, "number", min_=0)
    _get(m, "background", p, "number", min_=0)
    _get(m, "offset", p, "number")
    _get(m, "saturation", p, "number", positive=True)
    sm = _get(m, "saturation_mode", p, "str", default="hard")
    if sm not in ("hard", "smooth"):
        raise ConfigError(f"{p}.saturation_mode = {sm!r} must be 'hard' or 'smooth'")
    _get(m, "binning", p, "int", min_=1)
    _get(m, "seed", p, "int", min_=0)
    if "mcp" in m:
        mc = m["mcp"]
        _check_keys(mc, MCP, f"{p}.mcp")
        for k in ("gain", "gamma", "saturation"):
            _get(mc, k, f"{p}.mcp", "number", positive=True)
        _get(mc, "hole_radius", f"{p}.mcp", "number", min_=0)
    if "mask" in m:
        mk = m["mask"]
        q = f"{p}.mask"
        _check_keys(mk, MASK, q)
        for k in ("beamstop_radius", "hole_radius", "theta_min_deg", "theta_max_deg"):
            _get(mk, k, q, "number", min_=0)
        _get(mk, "gap_width", q, "int", min_=1)
        for k in ("gap_rows", "gap_cols"):
            v = _get(mk, k, q, "list", default=[])
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ConfigError(f"{q}.{k} = {v!r} must be a list of integers")
        for k, n in (("bad_pixels", 2), ("rectangles", 4)):
            v = _get(mk, k, q, "list", default=[])
            if not all(isinstance(x, list) and len(x) == n and all(isinstance(i, int) for i in x) for x in v):
                raise ConfigError(f"{q}.{k} = {v!r} must be a list of [{', '.join(['int'] * n)}] entries")


OUTPUT_SCHEMA = {
    "path": Key("str", "output file (CXI); the CLI's -o wins"),
    "png": Key(("bool", "str"), "write a PNG preview (true, false or a file name)", default=True),
    "dtype": Key("str", "stored image dtype", default="float32", choices=("float32", "float64")),
    "overwrite": Key("bool", "replace an existing output file"),
    "store_expected": Key("bool", "also store the noise-free expected photons"),
}
SIMULATION_SCHEMA = {
    "method": Key("str", "slice drive: eq. 9 (msft) or first Born", default="msft", choices=METHODS),
    "pitch": Key("number", "voxel pitch (length unit); default from the detector's q range", positive=True),
    "transform": Key("str", "far-field transform", default="auto", choices=TRANSFORMS),
}


def _check_output(o: dict) -> None:
    check_section(o, OUTPUT_SCHEMA, "output")


def _check_simulation(s: dict) -> None:
    check_section(s, SIMULATION_SCHEMA, "simulation")


def _check_dataset(d: dict, cfg: dict) -> None:
    p = "dataset"
    _check_keys(d, DATASET, p)
    _get(d, "count", p, "int", required=True, min_=1)
    _get(d, "seed", p, "int", min_=0)
    _get(d, "chunk", p, "int", min_=1)
    vary = _get(d, "vary", p, "any", default={})
    if not isinstance(vary, dict):
        raise ConfigError(f"dataset.vary must be a table, got {_fmt(vary)}")
    cls = shape_class(cfg["shape"]["type"])
    names, _ = _shape_params(cls)
    allowed = names | {"fluence", "size", "axis_ratios"}
    for k, spec in vary.items():
        q = f"dataset.vary.{k}"
        if k not in allowed:
            raise ConfigError(
                f"unknown key {q}: vary a field of {cls.__name__} ({', '.join(sorted(names))}), "
                "fluence, or size + axis_ratios"
            )
        _check_keys(spec, VARY, q)
        dist = _get(spec, "dist", q, "str", required=True)
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"{q}.dist = {dist!r} must be one of {DISTRIBUTIONS}")
        need = {
            "fixed": ("value",),
            "uniform": ("low", "high"),
            "loguniform": ("low", "high"),
            "normal": ("mean", "std"),
            "choice": ("values",),
            "uniform_so3": (),
        }[dist]
        for n in need:
            if n not in spec:
                raise ConfigError(f"missing key {q}.{n} (needed by dist = {dist!r})")
        if dist == "uniform_so3" and k != "rotation":
            raise ConfigError(f"{q}.dist = 'uniform_so3' applies only to rotation")
        if dist == "loguniform" and np.any(np.asarray(spec["low"], float) <= 0):
            raise ConfigError(f"{q}.low = {spec['low']!r} must be positive for a log-uniform distribution")
        mode = _get(spec, "mode", q, "str", default="set")
        if mode not in ("set", "add", "scale"):
            raise ConfigError(f"{q}.mode = {mode!r} must be set, add or scale")
    if ("size" in vary) != ("axis_ratios" in vary) or ("size" in vary and "semi_axes" not in names):
        raise ConfigError(
            "dataset.vary.size and dataset.vary.axis_ratios go together, for shapes with semi_axes"
        )
    if "fluence" in vary and "detector_model" not in cfg:
        raise ConfigError("dataset.vary.fluence needs a [detector_model] section")


def parse_config(cfg: dict) -> dict:
    """Validate a config dict (as `tomllib` returns it); returns it unchanged or raises `ConfigError`."""
    if not isinstance(cfg, dict):
        raise ConfigError("a config must be a TOML table")
    _check_keys(cfg, TOP, "top level")
    for sec in ("experiment", "shape"):
        if sec not in cfg:
            raise ConfigError(f"missing section [{sec}]")
    _check_experiment(cfg["experiment"])
    _check_shape(cfg["shape"])
    material_records(cfg)  # looks the materials up: an energy outside the tables fails here
    if "simulation" in cfg:
        _check_simulation(cfg["simulation"])
    if "detector_model" in cfg:
        _check_detector_model(cfg["detector_model"])
    if "output" in cfg:
        _check_output(cfg["output"])
    if "dataset" in cfg:
        _check_dataset(cfg["dataset"], cfg)
    return cfg


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string (e.g. --set shape.type=Ellipsoid)


# Setting one key of an alternative removes the others from the same table, so that e.g.
# `--set experiment.photon_energy_eV=90` works on a config that gives a wavelength, and
# `--set shape.material=Ag` on one that gives delta and beta (or another material and its density).
_REPLACES = {
    "photon_energy_eV": ("wavelength",),
    "wavelength": ("photon_energy_eV",),
    "material": ("delta", "beta", "density"),
}


def apply_overrides(cfg: dict, overrides) -> dict:
    """Apply `key.path=value` overrides (values parsed as TOML, bare words as strings) to a config dict.

    Setting `experiment.photon_energy_eV` drops `experiment.wavelength` (and the reverse); setting a shape's
    `material` drops its `delta`, `beta` and `density` (give `density` after it to set one)."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. shape.radius=7.5")
        key, text = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key")
        d = cfg
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a table")
        for k in _REPLACES.get(parts[-1], ()):
            d.pop(k, None)
        d[parts[-1]] = _parse_value(text.strip())
    return cfg


def read_toml(path, overrides=()) -> dict:
    """Read a TOML file and apply `--set` overrides, without validation (every CLI's config starts here).

    Raises FileNotFoundError, or ConfigError for invalid TOML or a malformed override."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such config file: {path}")
    with open(path, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return apply_overrides(cfg, overrides)


def load_config(path, overrides=()) -> dict:
    """Read a TOML config, apply `--set` overrides, validate. Raises FileNotFoundError / ConfigError."""
    return parse_config(read_toml(path, overrides))


# ----------------------------------------------------------------------------------------------- builders


def _arr(v):
    """A list / NumPy array as a JAX array of the default float (no float64 request when x64 is off)."""
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(v, float))


def config_wavelength(cfg: dict) -> float:
    """The wavelength of a validated config in `experiment.length_unit`: `experiment.wavelength`, or
    h c / `experiment.photon_energy_eV` converted to the length unit."""
    e = cfg["experiment"]
    if "wavelength" in e:
        return float(e["wavelength"])
    nm = HC_EV_NM / float(e["photon_energy_eV"])
    return nm * 1e-9 / length_unit_m(e["length_unit"])


def config_photon_energy_eV(cfg: dict) -> float:
    """The photon energy in eV of a validated config: `experiment.photon_energy_eV`, or h c / wavelength
    (the wavelength converted from `experiment.length_unit` to nm)."""
    e = cfg["experiment"]
    if "photon_energy_eV" in e:
        return float(e["photon_energy_eV"])
    nm = float(e["wavelength"]) * length_unit_m(e["length_unit"]) / 1e-9
    return HC_EV_NM / nm


def _material_tables(section: dict, path: str = "shape"):
    """(path, table) of every shape table in `section` (nested parts included) that names a material."""
    if "material" in section:
        yield path, section
    for k in NESTED_SHAPES:
        v = section.get(k)
        if isinstance(v, dict):
            yield from _material_tables(v, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                if isinstance(x, dict):
                    yield from _material_tables(x, f"{path}.{k}[{i}]")


def _lookup(section: dict, photon_energy_eV: float, path: str) -> tuple[float, float]:
    try:
        return get_material(section["material"], section.get("density")).delta_beta(photon_energy_eV)
    except ValueError as e:
        raise ConfigError(f"{path}.material = {section['material']!r}: {e}") from None


def material_records(cfg: dict) -> list[dict[str, Any]]:
    """What each `material` of a config's [shape] (and nested parts) resolves to, for files to record:
    a list of {"path", "name", "formula", "density" [g/cm^3], "density_source", "photon_energy_eV",
    "delta", "beta"}; empty when no shape names a material. Raises `ConfigError` naming the key."""
    tables = list(_material_tables(cfg["shape"]))
    if not tables:
        return []
    energy = config_photon_energy_eV(cfg)
    out = []
    for path, t in tables:
        delta, beta = _lookup(t, energy, path)
        m = get_material(t["material"], t.get("density"))
        out.append(
            {
                "path": path,
                "name": m.name,
                "formula": m.formula,
                "density": m.density,
                "density_source": m.source,
                "photon_energy_eV": energy,
                "delta": delta,
                "beta": beta,
            }
        )
    return out


def build_experiment(cfg: dict) -> Experiment:
    """The `Experiment` of a validated config (lengths in `experiment.length_unit`)."""
    e = cfg["experiment"]
    d = e["detector"]
    det = DETECTOR_TYPES[d["type"]].from_config(d)
    return Experiment(config_wavelength(cfg), det)


def shape_kwargs(section: dict, photon_energy_eV: float | None = None) -> tuple[type, dict[str, Any]]:
    """(class, constructor kwargs) of a validated [shape] table: lists become arrays, euler_deg a rotation,
    `material` (+ `density`) the delta and beta at `photon_energy_eV` (eV; needed only when a table names a
    material: `config_photon_energy_eV(cfg)`)."""
    from .._rotation import rotation_from_euler

    cls = shape_class(section["type"])
    kw = {}
    for k, v in section.items():
        if k in SHAPE_EXTRA or k in SHAPE_MATERIAL:
            continue
        if k in NESTED_SHAPES:  # parts of a CoreShell or Composite
            kw[k] = (
                build_shape(v, photon_energy_eV)
                if isinstance(v, dict)
                else [build_shape(x, photon_energy_eV) for x in v]
            )
            continue
        kw[k] = np.asarray(v, float) if isinstance(v, list) else float(v) if _is_num(v) else v
    if "material" in section:
        if photon_energy_eV is None:
            raise ConfigError(
                f"[shape] material = {section['material']!r} needs the photon energy: pass photon_energy_eV "
                "(diffscat.io.config_photon_energy_eV(cfg))"
            )
        kw["delta"], kw["beta"] = _lookup(section, float(photon_energy_eV), "shape")
    if "euler_deg" in section:
        seq = section.get("euler_seq", "ZYZ")
        kw["rotation"] = np.asarray(
            rotation_from_euler(np.asarray(section["euler_deg"], float), seq, degrees=True)
        )
    return cls, kw


def build_shape(section: dict, photon_energy_eV: float | None = None):
    """The shape of a validated [shape] table (nested tables for the parts of a CoreShell or Composite); a
    constructor error is reported with the section's type. `photon_energy_eV` (eV) is needed when a table
    names a `material` (`config_photon_energy_eV(cfg)`)."""
    cls, kw = shape_kwargs(section, photon_energy_eV)
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[shape] type = {section['type']!r}: {e}") from None


def build_detector_model(cfg: dict, experiment: Experiment):
    """(DetectorModel, seed) of a validated config's [detector_model] (None, None without one).

    Response order: background (photons) -> Poisson -> MCP gain -> readout noise -> offset -> saturation ->
    binning. Fluence from `fluence` [photons / length_unit^2] or pulse_energy [J] / (h c / lambda) /
    focus_area [length_unit^2] x transmission.
    """
    from .. import detectors as dt
    from ._units import length_unit_m

    m = cfg.get("detector_model")
    if m is None:
        return None, None
    if "fluence" in m:
        fluence = float(m["fluence"])
    else:
        hv = dt.photon_energy(config_wavelength(cfg), length_unit_m(cfg["experiment"]["length_unit"]))
        fluence = float(
            dt.fluence_from_pulse(m["pulse_energy"], hv, m["focus_area"], m.get("transmission", 1.0))
        )
    pieces = []
    if m.get("background", 0):
        pieces.append(dt.Background(float(m["background"])))
    if m.get("noise", "poisson") == "poisson":
        pieces.append(dt.Poisson())
    if "mcp" in m:
        mc = m["mcp"]
        det = experiment.detector
        center = det.beam_center()
        center = None if center is None else np.asarray(center)
        pieces.append(
            dt.MCPGain(
                mc.get("gain", 1.0),
                mc.get("gamma", 1.0),
                mc.get("saturation", float("inf")),
                mc.get("hole_radius", 0.0),
                center,
            )
        )
    if m.get("readout_sigma", 0):
        pieces.append(dt.GaussianReadout(float(m["readout_sigma"])))
    if m.get("offset", 0):
        pieces.append(dt.Background(float(m["offset"])))
    if "saturation" in m:
        pieces.append(dt.Saturation(float(m["saturation"]), m.get("saturation_mode", "hard")))
    b = m.get("binning", 1)
    if b > 1:
        ny, nx = experiment.shape
        if ny % b or nx % b:
            raise ConfigError(
                f"detector_model.binning = {b} must divide the detector shape {experiment.shape}"
            )
        pieces.append(dt.Binning(b))
    mask = _build_mask(m.get("mask"), experiment, b)
    model = dt.DetectorModel(
        fluence, m.get("polarisation", "none"), float(m.get("efficiency", 1.0)), dt.Chain(*pieces), mask
    )
    return model, int(m.get("seed", 0))


def _build_mask(mk: dict | None, experiment: Experiment, binning: int):
    from .. import detectors as dt

    if not mk:
        return None
    shape = experiment.shape
    det = experiment.detector
    c = det.beam_center()
    c = ((shape[0] - 1) / 2, (shape[1] - 1) / 2) if c is None else np.asarray(c)
    masks = []
    for k in ("beamstop_radius", "hole_radius"):
        if mk.get(k):
            masks.append(dt.circular_mask(shape, c, mk[k]))
    for r0, r1, c0, c1 in mk.get("rectangles", []):
        try:
            masks.append(dt.rectangular_mask(shape, (r0, r1), (c0, c1)))
        except ValueError as e:
            raise ConfigError(f"detector_model.mask.rectangles: {e}") from None
    if mk.get("gap_rows") or mk.get("gap_cols"):
        masks.append(
            dt.panel_gaps(shape, mk.get("gap_rows", []), mk.get("gap_cols", []), mk.get("gap_width", 1))
        )
    if mk.get("bad_pixels"):
        masks.append(dt.bad_pixels(shape, mk["bad_pixels"]))
    if "theta_min_deg" in mk or "theta_max_deg" in mk:
        masks.append(dt.angular_mask(experiment, mk.get("theta_min_deg", 0.0), mk.get("theta_max_deg", 90.0)))
    if not masks:
        return None
    m = dt.combine_masks(*masks)
    if binning > 1:  # a binned pixel is good only when all its pixels are
        ny, nx = shape
        m = m.reshape(ny // binning, binning, nx // binning, binning).all(axis=(1, 3))
    return m
