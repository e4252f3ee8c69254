"""`diffscat fit CONFIG [--data FILE.cxi] [-o OUT] [--set k=v ...]`: fit a shape model to one pattern.

Config (TOML):

    [data]                      # optional; --data FILE overrides path
    path = "pattern.cxi"
    length_unit = "nm"          # the unit of every length below and of the results
    entry = 1                   # CXI entry (optional)
    frame = 0                   # image of a stack (optional)

    [experiment]                # optional: only when the data file has no geometry (same keys as
    wavelength = 1.0            # `diffscat simulate`'s [experiment] / [experiment.detector])
    [experiment.detector]
    type = "qgrid"
    n = 128
    theta_max_deg = 30.0

    [model]
    type = "Sphere"             # Sphere | Ellipsoid | SphericalHarmonics | any diffscat shape class
    radius = "auto"             # initial values, or "auto" (size from the fringes / the ladder)
    delta = 0.0
    beta = 0.001
    free = ["radius"]           # optional; default: the shape's geometric parameters
    lmax = 3                    # SphericalHarmonics with coefficients = "auto"

    [fit]
    loss = "poisson"            # a name in fitting.LOSSES: poisson | anscombe | log
    optimizer = "lbfgs"         # lbfgs | lbfgs-zoom | adam
    max_steps = 200
    polarisation = "none"       # none | x | y | unpolarised
    beamstop_deg = 2.5          # extra mask: pixels below this angle are not used
    beam_center = "auto"        # FlatDetector: estimate the centre from the pattern's symmetry first
    n_starts = 8                # multi-start size for "auto" ellipsoids / harmonics

Writes OUT/fit.json, OUT/fit.h5 (atomic), OUT/fit_report.png and OUT/fit_shape.png; prints the fitted parameters with sigmas.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

__all__ = ["add_arguments", "run", "run_config"]

_MODEL_EXTRA = ("type", "free", "lmax")
_FIT_KEYS = {
    "loss",
    "optimizer",
    "learning_rate",
    "max_steps",
    "polarisation",
    "beamstop_deg",
    "beam_center",
    "n_starts",
    "method",
    "background",
    "solid_angle",
    "pitch",
    "seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML config with [model] and [fit] sections")
    parser.add_argument("--data", help="pattern file (CXI / HDF5); overrides [data] path")
    parser.add_argument("-o", "--out", default="fit_out", help="output folder (created)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument(
        "--allow-external-links",
        action="store_true",
        help="follow HDF5 external links of the data file to other files (refused by default)",
    )


def run(args) -> int:
    from diffscat._files import check_input_file, check_output
    from diffscat.io import read_toml

    check_input_file(args.config, "config")
    check_output(args.out, inputs=[args.config, args.data], folder=True, name="-o")
    cfg = read_toml(args.config, args.set)
    if args.data:
        cfg.setdefault("data", {})["path"] = args.data
    result = run_config(cfg, args.out, allow_external=args.allow_external_links)
    for k in result.free:
        v, s = np.asarray(result.values[k]), np.asarray(result.sigmas.get(k, np.nan))
        if k == "orientation":
            print(f"orientation: sigma {np.array2string(s, precision=3)} deg")
        else:
            print(f"{k} = {np.array2string(v, precision=5)} +- {np.array2string(s, precision=2)}")
    print(
        f"loss/pixel {result.loss / result.n_used:.4f}, {result.n_steps} steps, {result.time_s:.1f} s; wrote {args.out}"
    )
    return 0


def _load_data(cfg: dict, allow_external: bool = False):
    from diffscat.io import build_experiment, read_cxi

    dsec = cfg.get("data", {})
    unknown = set(dsec) - {"path", "length_unit", "entry", "frame"}
    if unknown:
        raise ValueError(f"[data]: unknown key(s) {sorted(unknown)}")
    if "path" not in dsec:
        raise ValueError("no data: give --data FILE or [data] path")
    cx = read_cxi(
        dsec["path"],
        length_unit=dsec.get("length_unit", "nm"),
        entry=dsec.get("entry"),
        allow_external=allow_external,
    )
    data = cx.data
    mask = cx.mask
    if not (isinstance(data, np.ndarray) and data.ndim == 2):
        i = int(dsec.get("frame", 0))
        data = np.asarray(data[i])
        mask = data_mask = None
        if hasattr(cx.data, "masks_for"):
            data_mask = cx.data.masks_for(i)
        mask = (
            data_mask
            if data_mask is not None
            else (cx.mask if cx.mask is not None and cx.mask.ndim == 2 else None)
        )
    exp = cx.experiment
    if "experiment" in cfg:
        exp = build_experiment(cfg)
    if exp is None:
        raise ValueError(f"{dsec['path']} has no detector geometry: add an [experiment] section")
    data = np.asarray(data, float)
    mask = np.ones(data.shape, bool) if mask is None else np.asarray(mask, bool)
    return data, mask, exp


def _with_beam_center(exp, center, data, mask):
    """The experiment with the detector's beam centre set from [fit] beam_center: "auto" (estimated from the
    pattern's symmetry) or (cy, cx) in fractional pixels. Every other detector field (tilt included) is kept."""
    import diffscat as ds

    from ._init import estimate_center

    try:
        exp.detector.with_beam_center(exp.detector.beam_center())  # fails early for fixed-centre detectors
    except ValueError:
        raise ValueError(
            f"[fit] beam_center needs a detector with an adjustable beam centre (a flat detector), got "
            f"{type(exp.detector).__name__}"
        ) from None
    c = estimate_center(data, mask) if center == "auto" else tuple(float(x) for x in center)
    return ds.Experiment(exp.wavelength, exp.detector.with_beam_center(c))


def run_config(cfg: dict, out: str, *, allow_external: bool = False):
    """Run a fit from a config dict (as loaded from TOML, overrides applied); write files into `out`
    (checked writable and distinct from the data file before the fit). Returns the `FitResult`. Errors name
    the offending key; HDF5 external links in the data file are refused unless `allow_external`."""
    import matplotlib.pyplot as plt

    import diffscat as ds
    from diffscat._files import check_output
    from diffscat.io import shape_class

    from ._fit import fit
    from ._init import (
        estimate_radius,
        fit_ellipsoid_auto,
        fit_sphere_auto,
        fit_spherical_harmonics,
    )
    from ._losses import as_loss
    from ._report import plot_report

    for sec in cfg:
        if sec not in ("data", "experiment", "model", "fit"):
            raise ValueError(f"unknown section [{sec}]; valid: [data], [experiment], [model], [fit]")
    if "model" not in cfg:
        raise ValueError("missing section [model]")
    msec = dict(cfg["model"])
    fsec = dict(cfg.get("fit", {}))
    unknown = set(fsec) - _FIT_KEYS
    if unknown:
        raise ValueError(f"[fit]: unknown key(s) {sorted(unknown)}; valid: {sorted(_FIT_KEYS)}")
    if "loss" in fsec:
        try:
            as_loss(fsec["loss"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"[fit] loss = {fsec['loss']!r}: {e}") from None
    if "type" not in msec:
        raise ValueError("[model]: missing key 'type'")
    cls = shape_class(msec["type"])
    dpath = cfg.get("data", {}).get("path") if isinstance(cfg.get("data"), dict) else None
    dpath = dpath if isinstance(dpath, str) else None
    check_output(out, inputs=[dpath], folder=True, name="output folder")
    data, mask, exp = _load_data(cfg, allow_external)

    beamstop = fsec.pop("beamstop_deg", None)
    if beamstop is not None:
        mask = mask & (np.asarray(exp.theta) > math.radians(float(beamstop)))
    center = fsec.pop("beam_center", None)
    if center is not None:
        exp = _with_beam_center(exp, center, data, mask)
    n_starts = int(fsec.pop("n_starts", 8))
    seed = int(fsec.pop("seed", 0))
    kw = {k: v for k, v in fsec.items()}
    free = msec.pop("free", None)
    lmax = msec.pop("lmax", None)
    msec.pop("type")
    auto = [k for k, v in msec.items() if v == "auto"]
    params = {k: (np.asarray(v, float) if isinstance(v, list) else v) for k, v in msec.items() if v != "auto"}
    delta = float(params.get("delta", 0.0))
    beta = float(params.get("beta", 0.0))

    if cls is ds.Sphere and auto:
        if auto != ["radius"]:
            raise ValueError(f"[model] Sphere: only radius may be 'auto', got {auto}")
        if free is None or list(free) == ["radius"]:
            res = fit_sphere_auto(data, exp, mask, delta=delta, beta=beta, **kw)
        else:
            res = fit(data, exp, cls(estimate_radius(data, exp, mask), **params), mask, free, **kw)
    elif cls is ds.Ellipsoid and auto:
        if auto != ["semi_axes"]:
            raise ValueError(f"[model] Ellipsoid: only semi_axes may be 'auto', got {auto}")
        res = fit_ellipsoid_auto(
            data,
            exp,
            mask,
            delta=delta,
            beta=beta,
            n_starts=n_starts,
            seed=seed,
            free=tuple(free) if free else ("semi_axes", "orientation"),
            **kw,
        )
    elif auto and cls.__name__ == "SphericalHarmonics":
        if lmax is None:
            raise ValueError("[model] SphericalHarmonics with coefficients = 'auto' needs lmax")
        res = fit_spherical_harmonics(
            data, exp, int(lmax), mask, delta=delta, beta=beta, n_starts=n_starts, seed=seed, **kw
        )
    elif auto:
        raise ValueError(
            f"[model] {cls.__name__}: 'auto' is supported for Sphere, Ellipsoid, SphericalHarmonics"
        )
    else:
        try:
            model = cls(**params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"[model] type = {cls.__name__!r}: {e}") from None
        res = fit(data, exp, model, mask, free, **kw)

    os.makedirs(out, exist_ok=True)
    res.save_json(os.path.join(out, "fit.json"))
    res.save_hdf5(os.path.join(out, "fit.h5"))
    fig = plot_report(res, os.path.join(out, "fit_report.png"), title=f"diffscat fit: {cls.__name__}")
    plt.close(fig)
    if hasattr(ds, "plot_shape"):  # 3-D preview of the fitted shape
        plt.close(ds.plot_shape(res.model, os.path.join(out, "fit_shape.png")))
    return res
