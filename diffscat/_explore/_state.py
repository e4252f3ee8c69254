"""The explorer's model: UI parameters -> a `diffscat simulate` config -> pattern, views, exports, fits.

The page's state is a small JSON object (`DEFAULTS`); `Explorer.config` turns it into the same TOML config
dict that `diffscat simulate` reads (validated by `diffscat.io.parse_config`, so a bad value comes back as
a `ConfigError` naming the key), and the pattern is built from that config with the `diffscat.io` builders,
so an exported config re-simulates to the pattern on screen.

Speed: the forward model is one `eqx.filter_jit` function of (shape, experiment, detector model, key) with
the voxel grid and method static. Shapes lose their static `extent_hint` before the call and the voxel grid
is fixed per (shape class, detector, wavelength) -- sized with a margin of `GRID_GROWTH` over the largest
shape seen -- so moving a size, orientation, material, fluence or noise slider reuses the compiled code;
a new class, detector, photon energy or method compiles once (cached afterwards).
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from typing import Any

import numpy as np

from diffscat._plot_shape import surface_voxels

__all__ = ["DEFAULTS", "SHAPES", "Explorer", "to_toml"]

LENGTH_UNIT = "nm"
GRID_GROWTH = 1.5  # the grid holds GRID_GROWTH x the bounding radius that (re)built it
LMAX = 4  # spherical-harmonics coefficients up to l = 4: 25 values
MAX_PIXELS = 1024 * 1024  # bounded work per request
MAX_FIT_STEPS = 400

# Slider specs per shape class: (name, label, min, max, step, default); lengths in nm.
_EDGE = ("edge", "edge [nm]", 1.0, 60.0, 0.1, 12.0)
SHAPES: dict[str, list[tuple[str, str, float, float, float, float]]] = {
    "Sphere": [("radius", "radius [nm]", 1.0, 60.0, 0.1, 7.0)],
    "Ellipsoid": [
        ("a", "semi-axis a [nm]", 1.0, 60.0, 0.1, 9.0),
        ("b", "semi-axis b [nm]", 1.0, 60.0, 0.1, 7.0),
        ("c", "semi-axis c [nm]", 1.0, 60.0, 0.1, 5.0),
    ],
    "SphericalHarmonics": [("radius", "mean radius [nm]", 1.0, 60.0, 0.1, 7.0)]
    + [
        (f"c_{l}_{m}", f"c({l},{m}) [nm]", -20.0, 20.0, 0.05, 0.0)
        for l in range(1, LMAX + 1)
        for m in range(-l, l + 1)
    ],
    "Cube": [_EDGE],
    "Octahedron": [_EDGE],
    "Icosahedron": [_EDGE],
    "Decahedron": [
        _EDGE,
        ("ino", "Ino truncation", 0.0, 0.95, 0.01, 0.0),
        ("marks", "Marks notch", 0.0, 0.6, 0.01, 0.0),
    ],
    "TruncatedOctahedron": [_EDGE, ("truncation", "truncation", 0.0, 0.5, 0.01, 1.0 / 3.0)],
    "Cuboctahedron": [_EDGE],
}

DEFAULTS: dict[str, Any] = {
    "shape": "Sphere",
    "params": {},  # per-class values; missing ones take the SHAPES defaults
    "orientation": {"mode": "euler", "angles": [0.0, 0.0, 0.0]},  # ZYZ degrees, or scatman lat/lon/rot
    "material": "custom",  # a preset name / formula, or "custom" (then delta, beta)
    "density": None,
    "delta": 0.0,
    "beta": 0.001,
    "photon_energy_eV": 1239.841984,  # lambda = 1 nm
    "detector": {"type": "qgrid", "n": 256, "theta_max_deg": 30.0, "distance_mm": 50.0, "pixel_um": 75.0},
    "method": "msft",
    "fluence": None,  # photons / nm^2; None: dsigma/dOmega
    "noise": False,
    "seed": 0,
}

MATERIALS = ["custom", "He", "Ne", "Ar", "Xe", "Ag", "Au", "Cu", "Fe", "Al", "Si", "SiO2", "NaCl", "water"]


class ExploreError(ValueError):
    """A bad value from the page: shown as a message, never as a traceback."""


# --------------------------------------------------------------------------------------------- helpers


def _num(v, name: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ExploreError(f"{name} = {v!r} is not a number") from None
    if not math.isfinite(x):
        raise ExploreError(f"{name} = {v!r} must be finite")
    return x


def merge_params(p: Any) -> dict:
    """The page's parameters with defaults filled in (a shallow merge per section)."""
    if p is not None and not isinstance(p, dict):
        raise ExploreError("the request body must be a JSON object")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for k, v in (p or {}).items():
        if k not in DEFAULTS:
            raise ExploreError(f"unknown parameter {k!r}")
        if isinstance(DEFAULTS[k], dict) and isinstance(v, dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def _shape_table(p: dict) -> dict:
    """The [shape] table (without material) of the page's shape and parameters."""
    cls = p["shape"]
    if cls not in SHAPES:
        raise ExploreError(f"shape = {cls!r} is not one of {', '.join(SHAPES)}")
    given = p.get("params") or {}
    if not isinstance(given, dict):
        raise ExploreError("params must be an object")
    vals = {}
    for name, label, lo, hi, _step, default in SHAPES[cls]:
        v = _num(given.get(name, default), f"{cls}.{name}")
        if name in ("radius", "edge", "a", "b", "c") and v <= 0:
            raise ExploreError(f"{label.split(' [')[0]} = {v:g} must be positive")
        vals[name] = v
    t: dict[str, Any] = {"type": cls}
    if cls == "Sphere":
        t["radius"] = vals["radius"]
    elif cls == "Ellipsoid":
        t["semi_axes"] = [vals["a"], vals["b"], vals["c"]]
    elif cls == "SphericalHarmonics":
        c = [vals["radius"] * math.sqrt(4 * math.pi)]
        c += [vals[f"c_{l}_{m}"] for l in range(1, LMAX + 1) for m in range(-l, l + 1)]
        t["coefficients"] = c
    else:
        for name, *_ in SHAPES[cls]:
            t[name] = vals[name]
    o = p.get("orientation") or {}
    angles = o.get("angles", [0.0, 0.0, 0.0])
    if not isinstance(angles, list | tuple) or len(angles) != 3:
        raise ExploreError(f"orientation.angles must be three numbers, got {angles!r}")
    a = [_num(x, "orientation angle") for x in angles]
    mode = o.get("mode", "euler")
    if mode == "scatman":  # PyScatman lat/lon/rot = intrinsic ZYZ (lon, 90 + lat, rot): rotation_from_scatman
        lat, lon, rot = a
        a = [lon, 90.0 + lat, rot]
    elif mode != "euler":
        raise ExploreError(f"orientation.mode = {mode!r} must be 'euler' or 'scatman'")
    t["euler_deg"] = a
    return t


def _detector_table(d: dict) -> dict:
    t = d.get("type")
    n = d.get("n", 256)
    if not isinstance(n, int) or isinstance(n, bool):
        n = _num(n, "detector.n")
        if n != int(n):
            raise ExploreError(f"detector.n = {n:g} must be an integer")
        n = int(n)
    if not 8 <= n <= 1024:
        raise ExploreError(f"detector.n = {n} must be between 8 and 1024 pixels")
    if t in ("qgrid", "anglegrid"):
        return {"type": t, "n": n, "theta_max_deg": _num(d.get("theta_max_deg", 30.0), "theta_max_deg")}
    if t == "flat":
        dist = _num(d.get("distance_mm", 50.0), "distance_mm") * 1e6  # mm -> nm
        pix = _num(d.get("pixel_um", 75.0), "pixel_um") * 1e3  # um -> nm
        return {"type": "flat", "distance": dist, "pixel_size": pix, "shape": [n, n]}
    raise ExploreError(f"detector.type = {t!r} must be qgrid, anglegrid or flat")


def to_toml(cfg: dict, header: str = "") -> str:
    """A config dict as TOML text (tables, arrays of numbers, strings, booleans): what `diffscat simulate` reads."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines = [header.rstrip()] if header else []

    def table(name, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {val(v)}" for k, v in scalars.items())
        for k, v in subs.items():
            table(f"{name}.{k}", v)

    for name, d in cfg.items():
        table(name, d)
    return "\n".join(lines).lstrip("\n") + "\n"


def _png(rgba: np.ndarray) -> str:
    """An (ny, nx, 4) uint8 image (row 0 at the bottom) as a base64 PNG."""
    import matplotlib.image as mimg

    buf = io.BytesIO()
    mimg.imsave(buf, rgba, format="png", origin="lower")
    return base64.b64encode(buf.getvalue()).decode()


def _colour(img: np.ndarray, lo: float, hi: float, cmap: str) -> np.ndarray:
    import matplotlib

    x = np.clip((img - lo) / max(hi - lo, 1e-30), 0, 1)
    return (matplotlib.colormaps[cmap](x) * 255).astype(np.uint8)


def log_image(img: np.ndarray, floor: float, decades: float = 6.0) -> tuple[np.ndarray, float, float]:
    """(log10 image, lo, hi): values below max(floor, max / 10^decades) are clipped."""
    vmax = float(np.nanmax(img)) if img.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    lo_lin = max(floor, vmax * 10.0**-decades)
    lo_lin = min(lo_lin, vmax / 10)
    li = np.log10(np.maximum(img, lo_lin))
    return li, math.log10(lo_lin), math.log10(vmax)


def radial_profile(img: np.ndarray, qmag: np.ndarray, valid: np.ndarray, n_bins: int = 120):
    """Azimuthal mean of `img` in |q| bins over `valid` pixels: (bin centres, means); empty bins dropped."""
    q = qmag[valid]
    if q.size == 0:
        return [], []
    edges = np.linspace(0.0, float(q.max()) * (1 + 1e-9), n_bins + 1)
    idx = np.clip(np.digitize(q, edges) - 1, 0, n_bins - 1)
    s = np.bincount(idx, img[valid], n_bins)
    c = np.bincount(idx, None, n_bins)
    keep = c > 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres[keep].tolist(), (s[keep] / c[keep]).tolist()


# ------------------------------------------------------------------------------------------- explorer


class Explorer:
    """Holds the compiled forward models, voxel grids, the optional measured pattern and the fit job.

    **Arguments:**
    - `data_path`: a CXI file (single pattern, or frame `frame` of a stack) to compare with and fit.
    - `initial`: page parameters to start from (e.g. from a config file: `params_from_config`).
    """

    def __init__(self, data_path: str | None = None, initial: dict | None = None, frame: int = 0):
        self._lock = threading.Lock()
        self._grids: dict[tuple, tuple[Any, float]] = {}
        self._compiled: set[tuple] = set()
        self._views: dict[tuple, Any] = {}
        self.initial = merge_params(initial)
        self.data = None
        self.fit = FitJob(self)
        if data_path is not None:
            self.data = _load_data(data_path, frame)
            self.initial["detector"] = {"type": "data"}
            self.initial["photon_energy_eV"] = self.data["photon_energy_eV"]

    # ------------------------------------------------------------------------------------------- config

    def config(self, params: Any) -> dict:
        """The validated `diffscat simulate` config of the page's parameters (raises ExploreError)."""
        from diffscat.io import ConfigError, parse_config

        p = merge_params(params)
        shape = _shape_table(p)
        mat = p.get("material") or "custom"
        if not isinstance(mat, str):
            raise ExploreError(f"material = {mat!r} must be a name")
        if mat == "custom":
            shape["delta"] = _num(p.get("delta"), "delta")
            shape["beta"] = _num(p.get("beta"), "beta")
            if shape["beta"] < 0:
                raise ExploreError(f"beta = {shape['beta']:g} must be >= 0 (beta > 0 absorbs)")
        else:
            shape["material"] = mat
            if p.get("density") not in (None, ""):
                shape["density"] = _num(p["density"], "density")
        energy = _num(p.get("photon_energy_eV"), "photon_energy_eV")
        if energy <= 0:
            raise ExploreError(f"photon energy = {energy:g} eV must be positive")
        if self.data is not None:
            det = self.data["detector_table"]
            energy = self.data["photon_energy_eV"]
        else:
            det = _detector_table(p.get("detector") or {})
        exp: dict[str, Any] = {"photon_energy_eV": energy, "length_unit": LENGTH_UNIT, "detector": det}
        method = p.get("method", "msft")
        if method not in ("msft", "born"):
            raise ExploreError(f"method = {method!r} must be 'msft' or 'born'")
        cfg: dict[str, Any] = {"experiment": exp, "shape": shape, "simulation": {"method": method}}
        if p.get("fluence") not in (None, "", 0, 0.0):
            fl = _num(p["fluence"], "fluence")
            if fl <= 0:
                raise ExploreError(f"fluence = {fl:g} photons/nm^2 must be positive")
            seed = p.get("seed", 0)
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ExploreError(f"seed = {seed!r} must be a non-negative integer")
            cfg["detector_model"] = {
                "fluence": fl,
                "noise": "poisson" if p.get("noise") else "none",
                "seed": seed,
            }
        try:
            parse_config(cfg)
        except ConfigError as e:
            raise ExploreError(str(e)) from None
        return cfg

    def toml(self, params: Any) -> str:
        """The current state as a TOML config for `diffscat simulate` (pitch written out)."""
        cfg = self.config(params)
        exp, _, _, grid = self._build(cfg)[:4]
        cfg["simulation"]["pitch"] = float(grid.pitch[0])
        from diffscat import __version__

        head = (
            f"# Exported by `diffscat explore` (diffscat {__version__}).\n"
            "# Re-simulate: diffscat simulate THIS.toml -o pattern.cxi"
        )
        return to_toml(cfg, head)

    # -------------------------------------------------------------------------------------------- model

    def _build(self, cfg: dict):
        """(experiment, shape without extent hint, detector model, voxel grid, seed, grid key) of a config."""
        import diffscat as ds
        from diffscat.io import ConfigError, build_detector_model, build_experiment, build_shape
        from diffscat.shapes._base import with_extent_hint

        try:
            exp = build_experiment(cfg)
            if int(np.prod(exp.shape)) > MAX_PIXELS:
                raise ExploreError(f"the detector has {int(np.prod(exp.shape))} pixels; at most {MAX_PIXELS}")
            shape = build_shape(cfg["shape"], cfg["experiment"]["photon_energy_eV"])
            model, seed = build_detector_model(cfg, exp)
        except ConfigError as e:
            raise ExploreError(str(e)) from None
        if self.data is not None:
            exp = self.data["experiment"]
        pitch = ds.default_pitch(*exp.sampling_hint)
        if "pitch" in cfg.get("simulation", {}):
            pitch = float(cfg["simulation"]["pitch"])
        r = float(np.asarray(shape.bounding_radius()))
        key = (type(shape).__name__, repr(cfg["experiment"]), pitch)
        grid, radius = self._grids.get(key, (None, 0.0))
        if grid is None or r > radius:
            radius = max(GRID_GROWTH * r, GRID_GROWTH * radius)
            grid = ds.VoxelGrid.around(radius, pitch, margin=2)
            if int(np.prod(grid.shape)) > 400**3:
                raise ExploreError(
                    f"the particle (bounding radius {r:.3g} nm) needs a voxel grid of {grid.shape}: too large "
                    "for interactive use; lower the size or the photon energy"
                )
            self._grids[key] = (grid, radius)
        return exp, with_extent_hint(shape, None), model, grid, seed, key

    def simulate(self, params: Any):
        """(config, experiment, dsigma/dOmega, shown image, quantity, info dict) for the page's parameters."""
        import jax

        cfg = self.config(params)
        with self._lock:
            exp, shape, model, grid, seed, key = self._build(cfg)
            method = cfg["simulation"]["method"]
            ckey = (key, grid.shape, method, model is not None and model.is_random, model is not None)
            first = ckey not in self._compiled
            t0 = time.perf_counter()
            k = jax.random.key(seed) if (model is not None and model.is_random) else None
            I, shown = _forward(shape, exp, grid, method, model, k)
            I, shown = np.asarray(I), np.asarray(shown)
            dt = time.perf_counter() - t0
            self._compiled.add(ckey)
        quantity = "photons" if model is not None else "dsigma_domega"
        info = {"ms": round(1e3 * dt, 1), "compiled": first, "grid": list(grid.shape), "pitch": grid.pitch[0]}
        return cfg, exp, I, shown, quantity, info

    # -------------------------------------------------------------------------------------------- views

    def render(self, params: Any) -> dict:
        """Everything the page shows for a parameter set, as JSON-able values (PNG images as base64)."""
        cfg, exp, I, shown, quantity, info = self.simulate(params)
        pix = exp.pixels()
        valid = np.asarray(pix.valid)
        qmag = np.linalg.norm(np.asarray(pix.q(exp.k0)), axis=-1)
        ext, xl, yl, unit = exp.detector.plot_axes(float(exp.wavelength), LENGTH_UNIT)
        out: dict[str, Any] = {"ok": True, "info": info, "quantity": quantity}
        out["axes"] = {"extent": [float(v) for v in ext] if ext else None, "x": xl, "y": yl, "unit": unit}
        out["qunit"] = f"1/{LENGTH_UNIT}"
        if self.data is not None:
            d, m = self.data["data"], self.data["mask"] & valid
            s = float(np.sum(d[m]) / max(np.sum(I[m]), 1e-300))
            model_counts = s * I
            floor = 0.5
            li, lo, hi = log_image(np.where(m, d, 0), floor)
            lm, lo2, hi2 = log_image(model_counts, floor)
            lo, hi = min(lo, lo2), max(hi, hi2)
            out["pattern"] = _png(_colour(np.where(valid, lm, lo), lo, hi, "viridis"))
            out["data"] = _png(_colour(np.where(m, li, lo), lo, hi, "viridis"))
            res = np.where(m, (d - model_counts) / np.sqrt(model_counts + 1.0), 0.0)
            out["residual"] = _png(_colour(res, -5.0, 5.0, "RdBu_r"))
            out["residual_rms"] = float(np.sqrt(np.mean(res[m] ** 2))) if m.any() else None
            out["range"] = [lo, hi]
            out["label"] = "photons (model scaled to the data's total)"
            out["profile"] = radial_profile(model_counts, qmag, m)
            out["profile_data"] = radial_profile(d, qmag, m)
            out["scale"] = s
        else:
            floor = 0.5 if quantity == "photons" else 0.0
            li, lo, hi = log_image(np.where(valid, shown, 0), floor)
            out["pattern"] = _png(_colour(np.where(valid, li, lo), lo, hi, "viridis"))
            out["range"] = [lo, hi]
            out["label"] = "photons / pixel" if quantity == "photons" else f"dσ/dΩ [{LENGTH_UNIT}²/sr]"
            out["profile"] = radial_profile(shown, qmag, valid)
            if quantity == "photons":
                out["total_photons"] = float(np.sum(shown))
        out["toml"] = self._toml_of(cfg, info["pitch"])
        return out

    def _toml_of(self, cfg, pitch):
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
        cfg["simulation"] = dict(cfg["simulation"], pitch=float(pitch))
        return to_toml(cfg, "# Exported by `diffscat explore`: diffscat simulate THIS.toml -o pattern.cxi")

    def particle(self, params: Any, n: int = 36, max_points: int = 2500) -> dict:
        """Surface points of the particle in the lab (beam) frame for the page's 3-D view: {points [[x, y, z]],
        radius} in nm, beam along +z. The occupancy is evaluated on an n^3 grid (compiled once per class)."""
        import diffscat as ds
        from diffscat.io import ConfigError, build_shape
        from diffscat.shapes._base import with_extent_hint

        cfg = self.config(params)
        try:
            shape = build_shape(cfg["shape"], cfg["experiment"]["photon_energy_eV"])
        except ConfigError as e:
            raise ExploreError(str(e)) from None
        r = float(np.asarray(shape.bounding_radius())) * 1.1
        grid = ds.VoxelGrid((n, n, n), 2 * r / n)
        with self._lock:
            occ = np.asarray(_occupancy(with_extent_hint(shape, None), grid))
        inside = occ >= 0.5
        surf = surface_voxels(inside)
        x = (np.arange(n) - (n - 1) / 2) * (2 * r / n)
        X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
        pts = np.stack([X[surf], Y[surf], Z[surf]], -1)
        if len(pts) > max_points:
            pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
        return {"ok": True, "points": np.round(pts, 3).tolist(), "radius": r, "unit": LENGTH_UNIT}

    def pattern_npy(self, params: Any) -> bytes:
        """The pattern shown (dsigma/dOmega [nm^2/sr], or photons per pixel with a fluence) as .npy bytes."""
        shown = self.simulate(params)[3]
        buf = io.BytesIO()
        np.save(buf, shown)
        return buf.getvalue()

    def figure_png(self, params: Any) -> bytes:
        """A PNG figure of the current state: the pattern (and data, residual) and the radial profile."""
        from matplotlib.figure import Figure  # no pyplot: no global state, safe in worker threads

        import diffscat as ds

        cfg, exp, I, shown, quantity, _ = self.simulate(params)
        valid = np.asarray(exp.pixels().valid)
        qmag = np.linalg.norm(np.asarray(exp.pixels().q(exp.k0)), axis=-1)
        title = f"{cfg['shape']['type']}, {cfg['experiment']['photon_energy_eV']:.5g} eV, {cfg['simulation']['method']}"
        if self.data is None:
            fig = Figure(figsize=(10.5, 4.4), dpi=100, layout="constrained")
            axs = fig.subplots(1, 2)
            label = "photons" if quantity == "photons" else r"d$\sigma$/d$\Omega$ [nm$^2$/sr]"
            ds.plot.plot_pattern(shown, exp, ax=axs[0], title=title, label=label, length_unit=LENGTH_UNIT)
            q, v = radial_profile(shown, qmag, valid)
            axs[1].semilogy(q, v)
            axs[1].set_ylabel(label)
        else:
            d, m = self.data["data"], self.data["mask"] & valid
            s = float(np.sum(d[m]) / max(np.sum(I[m]), 1e-300))
            mc = s * I
            fig = Figure(figsize=(19, 4.4), dpi=90, layout="constrained")
            axs = fig.subplots(1, 4)
            ds.plot.plot_pattern(np.where(m, d, 0), exp, ax=axs[0], title="data", label="photons")
            ds.plot.plot_pattern(mc, exp, ax=axs[1], title=title, label="photons (scaled)")
            res = np.where(m, (d - mc) / np.sqrt(mc + 1.0), 0.0)
            im = axs[2].imshow(res, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
            axs[2].set_title("residual (data - model) / sqrt(model + 1)")
            fig.colorbar(im, ax=axs[2])
            for img, lab in ((d, "data"), (mc, "model")):
                q, v = radial_profile(img, qmag, m)
                axs[3].semilogy(q, v, label=lab)
            axs[3].legend()
            axs[3].set_ylabel("photons / pixel")
            axs = [None, axs[3]]
        axs[1].set_xlabel(f"|q| [1/{LENGTH_UNIT}]")
        axs[1].set_title("radial profile")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def schema(self) -> dict:
        """What the page builds its controls from."""
        return {
            "shapes": {
                k: [dict(zip(("name", "label", "min", "max", "step", "value"), s, strict=True)) for s in v]
                for k, v in SHAPES.items()
            },
            "materials": MATERIALS,
            "defaults": self.initial,
            "data": None
            if self.data is None
            else {"path": self.data["path"], "shape": list(self.data["data"].shape)},
        }


# --------------------------------------------------------------------------------------------- compiled


def _forward_impl(shape, exp, grid, method, model, key):
    import diffscat as ds

    I = ds.simulate(shape, exp, grid=grid, method=method)
    if model is None:
        return I, I
    return I, model(I, exp, key)


def _occupancy_impl(shape, grid):
    from diffscat.shapes._base import soft_width

    if hasattr(shape, "occupancy"):
        return shape.occupancy(grid.points(shape.dtype), soft_width(grid.pitch))
    dn = abs(shape.render(grid))
    return dn / dn.max()


_jitted: dict[str, Any] = {}


def _forward(*args):
    if "forward" not in _jitted:
        import equinox as eqx

        _jitted["forward"] = eqx.filter_jit(_forward_impl)
    return _jitted["forward"](*args)


def _occupancy(*args):
    if "occ" not in _jitted:
        import equinox as eqx

        _jitted["occ"] = eqx.filter_jit(_occupancy_impl)
    return _jitted["occ"](*args)


# --------------------------------------------------------------------------------------------- data, fit


def _load_data(path: str, frame: int = 0) -> dict:
    from diffscat.io import read_cxi
    from diffscat.materials import HC_EV_NM

    cx = read_cxi(path, length_unit=LENGTH_UNIT)
    data, mask = cx.data, cx.mask
    if not (isinstance(data, np.ndarray) and data.ndim == 2):
        data = np.asarray(data[frame])
        mask = cx.mask[frame] if cx.mask is not None and cx.mask.ndim == 3 else cx.mask
    exp = cx.experiment
    if exp is None:
        raise ValueError(f"{path} has no detector geometry")
    data = np.asarray(data, float)
    mask = np.ones(data.shape, bool) if mask is None else np.asarray(mask, bool)
    try:
        det = exp.detector.to_config()
    except ValueError as e:
        raise ValueError(f"{path}: its detector cannot be written to a config: {e}") from None
    return {
        "path": str(path),
        "data": data,
        "mask": mask,
        "experiment": exp,
        "detector_table": det,
        "photon_energy_eV": HC_EV_NM / float(exp.wavelength),
    }


class FitJob:
    """Runs `fitting.fit` in a background thread, in chunks of `chunk` steps (each chunk starts from the
    previous chunk's model), so that `status()` can report the loss curve while it runs."""

    def __init__(self, explorer: Explorer, chunk: int = 10):
        self.explorer = explorer
        self.chunk = chunk
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state: dict[str, Any] = {"running": False, "losses": [], "message": "idle", "result": None}

    def status(self) -> dict:
        with self._lock:
            s = dict(self._state)
            s["losses"] = list(s["losses"])
            return s

    def start(self, params: Any, max_steps: int = 60) -> dict:
        if self.explorer.data is None:
            raise ExploreError("no measured pattern: start `diffscat explore --data FILE.cxi`")
        max_steps = int(_num(max_steps, "max_steps"))
        if not 1 <= max_steps <= MAX_FIT_STEPS:
            raise ExploreError(f"max_steps = {max_steps} must be between 1 and {MAX_FIT_STEPS}")
        cfg = self.explorer.config(params)
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise ExploreError("a fit is already running")
            self._stop.clear()
            self._state = {"running": True, "losses": [], "message": "compiling the fit…", "result": None}
            self._thread = threading.Thread(target=self._run, args=(cfg, max_steps), daemon=True)
            self._thread.start()
        return self.status()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout=None) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _set(self, **kw) -> None:
        with self._lock:
            self._state.update(kw)

    def _run(self, cfg: dict, max_steps: int) -> None:
        import fitting

        ex = self.explorer
        try:
            exp, shape, _, grid, _, _ = ex._build(cfg)
            d = ex.data
            steps, t0 = 0, time.perf_counter()
            result = None
            while steps < max_steps and not self._stop.is_set():
                n = min(self.chunk, max_steps - steps)
                result = fitting.fit(
                    d["data"], exp, shape, d["mask"], max_steps=n, uncertainties=False, grid=grid
                )
                shape = result.model
                steps += result.n_steps
                with self._lock:
                    self._state["losses"].extend(float(v) for v in result.loss_history)
                    self._state["message"] = f"step {steps}, loss {result.loss:.6g}"
                if result.converged:
                    break
            values = {k: np.asarray(v).tolist() for k, v in (result.values if result else {}).items()}
            why = (
                "stopped"
                if self._stop.is_set()
                else ("converged" if result and result.converged else "max steps")
            )
            self._set(
                running=False,
                message=f"done ({why}): {steps} steps in {time.perf_counter() - t0:.1f} s",
                result={"values": values, "params": _params_of(result.model) if result else None},
            )
        except Exception as e:  # reported to the page, never raised into the server
            self._set(running=False, message=f"fit failed: {type(e).__name__}: {e}")


def _params_of(shape) -> dict:
    """Page parameters (shape class, sizes, ZYZ Euler angles, delta, beta) of a fitted shape."""
    import diffscat as ds

    cls = type(shape).__name__
    out: dict[str, Any] = {"shape": cls, "params": {}}
    g = lambda name: float(np.asarray(getattr(shape, name)))
    if cls == "Sphere":
        out["params"]["radius"] = g("radius")
    elif cls == "Ellipsoid":
        a, b, c = (float(v) for v in np.asarray(shape.semi_axes))
        out["params"].update(a=a, b=b, c=c)
    elif cls == "SphericalHarmonics":
        c = np.asarray(shape.coefficients, float)
        out["params"]["radius"] = float(c[0] / math.sqrt(4 * math.pi))
        i = 1
        for l in range(1, LMAX + 1):
            for m in range(-l, l + 1):
                out["params"][f"c_{l}_{m}"] = float(c[i]) if i < c.size else 0.0
                i += 1
    else:
        for name, *_ in SHAPES.get(cls, []):
            out["params"][name] = g(name)
    e = np.asarray(ds.euler_from_rotation(np.asarray(shape.rotation), "ZYZ", degrees=True), float)
    out["orientation"] = {"mode": "euler", "angles": [float(v) for v in e]}
    out["material"], out["delta"], out["beta"] = "custom", g("delta"), g("beta")
    return out


def params_from_config(cfg: dict) -> dict:
    """Page parameters from a `diffscat simulate` config (single shape of an explorer class); best effort:
    what the page cannot show (a dataset section, masks, MCP, ...) is left out."""
    from diffscat.io import build_shape, config_photon_energy_eV

    p: dict[str, Any] = {}
    s = cfg["shape"]
    if s["type"] not in SHAPES:
        raise ValueError(f"the explorer shows {', '.join(SHAPES)}; the config's shape is {s['type']!r}")
    energy = config_photon_energy_eV(cfg)
    p.update(_params_of(build_shape(s, energy)))
    if "material" in s:
        p["material"] = s["material"]
        p["density"] = s.get("density")
    p["photon_energy_eV"] = energy
    d = cfg["experiment"]["detector"]
    if cfg["experiment"].get("length_unit") != LENGTH_UNIT:
        raise ValueError(
            f"the explorer works in nm; the config's length_unit is {cfg['experiment']['length_unit']!r}"
        )
    if d["type"] in ("qgrid", "anglegrid"):
        p["detector"] = {"type": d["type"], "n": d["n"], "theta_max_deg": d["theta_max_deg"]}
    elif d["type"] == "flat":
        ps = d["pixel_size"]
        ps = ps[0] if isinstance(ps, list) else ps
        p["detector"] = {
            "type": "flat",
            "n": d["shape"][0],
            "distance_mm": d["distance"] / 1e6,
            "pixel_um": ps / 1e3,
        }
    p["method"] = cfg.get("simulation", {}).get("method", "msft")
    m = cfg.get("detector_model")
    if m and "fluence" in m:
        p["fluence"] = m["fluence"]
        p["noise"] = m.get("noise", "poisson") == "poisson"
        p["seed"] = m.get("seed", 0)
    return p
