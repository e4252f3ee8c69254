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


def _schemas() -> dict:
    """The fit config schema (`diffscat.io.Key`s) for [data], [model] (keys beyond the shape's own parameters,
    which are checked by the shape class) and [fit]: the one source of the checks and of `--help`."""
    from diffscat.detectors import POLARISATIONS
    from diffscat.engines import METHODS
    from diffscat.io import Key

    from ._fit import OPTIMIZERS
    from ._losses import LOSSES

    return {
        "data": {
            "path": Key("str", "pattern file (CXI / HDF5); --data wins"),
            "length_unit": Key("str", "unit of every length in the config and the results", default="nm"),
            "entry": Key("int", "CXI entry", min=1),
            "frame": Key("int", "image of a stack", default=0, min=0),
        },
        "model": {
            "type": Key(
                "str", "shape class: Sphere, Ellipsoid, SphericalHarmonics, any diffscat shape", required=True
            ),
            "free": Key("list", "free parameter names; default the shape's geometric parameters"),
            "lmax": Key("int", 'SphericalHarmonics with coefficients = "auto": highest degree', min=0),
        },
        "fit": {
            "loss": Key("str", "negative log-likelihood", default="poisson", choices=tuple(LOSSES)),
            "optimizer": Key("str", "optimiser", default="lbfgs", choices=OPTIMIZERS),
            "learning_rate": Key("number", "Adam learning rate; L-BFGS: line search", positive=True),
            "max_steps": Key("int", "optimiser steps at most", default=200, min=1),
            "polarisation": Key("str", "beam polarisation", default="none", choices=POLARISATIONS),
            "beamstop_deg": Key("number", "pixels below this angle are not used", min=0.0),
            "beam_center": Key(("str", "list"), 'flat detector: "auto" or [cy, cx] (pixels)'),
            "n_starts": Key("int", 'multi-start size for "auto" ellipsoids / harmonics', default=8, min=1),
            "method": Key("str", "forward model", default="msft", choices=METHODS),
            "background": Key("number", "flat background, counts per pixel", default=0.0, min=0.0),
            "solid_angle": Key("bool", "data are counts per pixel (false: dsigma/dOmega)", default=True),
            "pitch": Key("number", "voxel pitch (length unit); default from the q range", positive=True),
            "seed": Key("int", "seed of the random starts", default=0),
        },
    }


def config_keys() -> str:
    """Every fit config key with its type, default and meaning (the text of `--help`)."""
    from diffscat.io import describe_sections

    text = describe_sections(_schemas())
    return text.replace(
        "[model]\n", '[model]\n  <shape parameter> = value | "auto"  # the class\'s own fields\n', 1
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "config keys ([experiment] as in `diffscat simulate`, only for files without geometry):\n"
        + (config_keys())
    )
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
    result = run_config(cfg, args.out, progress=True, allow_external=args.allow_external_links)
    for k in result.free:
        v, s = np.asarray(result.values[k]), np.asarray(result.sigmas.get(k, np.nan))
        if k == "orientation":
            print(f"orientation: sigma {np.array2string(s, precision=3)} deg")
        else:
            print(f"{k} = {np.array2string(v, precision=5)} +- {np.array2string(s, precision=2)}")
    for i, ax in enumerate(result.principal_axes()):
        d = np.array2string(np.asarray(ax["direction"]), precision=3)
        print(
            f"axis {i + 1} (shortest first): {ax['semi_axis']:.5g} +- {ax['semi_axis_sigma']:.2g}, "
            f"direction {d} +- {ax['direction_sigma_deg']:.2g} deg"
        )
    print(
        f"loss/pixel {result.loss / result.n_used:.4f}, {result.n_steps} steps, {result.time_s:.1f} s; wrote {args.out}"
    )
    return 0


def _load_data(cfg: dict, allow_external: bool = False):
    from diffscat.io import build_experiment, check_section, read_cxi

    dsec = check_section(cfg.get("data"), _schemas()["data"], "data")
    if "path" not in dsec:
        raise ValueError("no data: give --data FILE or [data] path")
    cx = read_cxi(
        dsec["path"], length_unit=dsec["length_unit"], entry=dsec.get("entry"), allow_external=allow_external
    )
    data = cx.data
    mask = cx.mask
    if not (isinstance(data, np.ndarray) and data.ndim == 2):
        i = int(dsec["frame"])
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


def run_config(cfg: dict, out: str, *, progress: bool = False, allow_external: bool = False):
    """Run a fit from a config dict (as loaded from TOML, overrides applied); write files into `out`
    (checked writable and distinct from the data file before the fit). `progress`: print the optimiser's
    progress to stderr (`fitting.fit(progress=True)`; the CLI turns it on). Returns the `FitResult`. Errors
    name the offending key; HDF5 external links in the data file are refused unless `allow_external`."""
    import matplotlib.pyplot as plt

    import diffscat as ds
    from diffscat._files import check_output
    from diffscat.io import check_section, shape_class

    from ._fit import fit
    from ._init import (
        estimate_radius,
        fit_ellipsoid_auto,
        fit_sphere_auto,
        fit_spherical_harmonics,
    )
    from ._report import plot_report

    for sec in cfg:
        if sec not in ("data", "experiment", "model", "fit"):
            raise ValueError(f"unknown section [{sec}]; valid: [data], [experiment], [model], [fit]")
    if "model" not in cfg:
        raise ValueError("missing section [model]")
    schemas = _schemas()
    msec = dict(cfg["model"])
    if not isinstance(msec, dict):
        raise ValueError("[model] must be a table")
    extras = check_section(
        {k: v for k, v in msec.items() if k in schemas["model"]}, schemas["model"], "model"
    )
    msec.update({k: v for k, v in extras.items() if v is not None})
    # only the keys the user gave go to the drivers (the ladders choose their own steps per stage)
    given = set(cfg.get("fit") or {})
    fsec = {k: v for k, v in check_section(cfg.get("fit"), schemas["fit"], "fit").items() if k in given}
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
    if progress:
        kw["progress"] = True
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
    unit = cfg.get("data", {}).get("length_unit", "nm")
    fig = plot_report(
        res, os.path.join(out, "fit_report.png"), title=f"diffscat fit: {cls.__name__}", length_unit=unit
    )
    plt.close(fig)
    if hasattr(ds, "plot_shape"):  # 3-D preview of the fitted shape
        plt.close(ds.plot_shape(res.model, os.path.join(out, "fit_shape.png"), length_unit=unit))
    return res
