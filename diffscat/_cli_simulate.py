"""`diffscat simulate CONFIG [-o OUT.cxi] [--set key=value ...]`: config -> pattern(s) -> CXI + PNG.

Single mode (no [dataset]): one pattern, written with its truth, plus a log-scale PNG.
Dataset mode ([dataset] count = N): N patterns with parameters drawn from [dataset.vary], simulated in vmapped
chunks on one fixed voxel grid (large enough for the largest shape), streamed to one CXI file with a progress
bar. Config keys: docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

__all__ = ["add_arguments", "run", "simulate_config"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML config (see configs/*.toml and docs/cli.md)")
    p.add_argument("-o", "--output", help="output .cxi file (default: [output].path or CONFIG name + .cxi)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value parsed as TOML (repeatable), e.g. --set shape.radius=7.5",
    )
    p.add_argument("--no-png", action="store_true", help="do not write the PNG preview")
    p.add_argument(
        "--chunk", type=int, help="dataset mode: patterns per vmapped chunk (overrides dataset.chunk)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "sections: [experiment] wavelength or photon_energy_eV, length_unit,\n"
        '[experiment.detector] type = qgrid|anglegrid|flat; [shape] type + fields (material = "He" in place\n'
        "of delta, beta); [simulation] method, pitch, transform; [detector_model] fluence, polarisation, noise,\n"
        "mcp, mask, ...; [output] path, png, dtype; [dataset] count, seed, chunk, [dataset.vary.<field>]."
    )


_LABELS = {"dsigma_domega": r"d$\sigma$/d$\Omega$", "photons": "photons", "detector_units": "detector units"}


def _label(quantity: str, unit: str) -> str:
    return _LABELS[quantity] + (f" [{unit}$^2$/sr]" if quantity == "dsigma_domega" else "")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _title(what: str, exp, unit: str) -> str:
    """Figure title: the shape (with its parameters) and the wavelength."""
    return f"{what}\nwavelength {float(exp.wavelength):.4g} {unit}, {type(exp.detector).__name__}"


def _binned_experiment(exp, b: int):
    """The experiment whose pixels are the b x b bins of `exp` (`AbstractDetector.binned`)."""
    import diffscat as ds

    if b == 1:
        return exp
    return ds.Experiment(exp.wavelength, exp.detector.binned(b))


def _quantity(model) -> str:
    if model is None:
        return "dsigma_domega"
    from .detectors import Background, Binning, Chain, Ideal, Poisson

    pieces = model.response.pieces if isinstance(model.response, Chain) else (model.response,)
    return (
        "photons"
        if all(isinstance(p, Ideal | Poisson | Background | Binning) for p in pieces)
        else "detector_units"
    )


def _paths(cfg, config_path, output):
    out = output or cfg.get("output", {}).get("path")
    if out is None:
        out = os.path.splitext(os.path.basename(config_path))[0] + ".cxi"
    png = cfg.get("output", {}).get("png", True)
    if png is True:
        png = os.path.splitext(out)[0] + ".png"
    return out, (png or None)


def simulate_config(
    cfg: dict, out: str, png: str | None = None, *, chunk=None, progress=True, config_path=None
):
    """Run a validated config; write `out` (CXI) and `png`. Returns a dict summary (path, n, shape, ...)."""
    import jax

    import diffscat as ds
    from diffscat.io import (
        build_detector_model,
        build_experiment,
        config_photon_energy_eV,
        material_records,
        write_cxi,
    )

    exp = build_experiment(cfg)
    unit = cfg["experiment"]["length_unit"]
    sim = cfg.get("simulation", {})
    kw = dict(method=sim.get("method", "msft"), transform=sim.get("transform", "auto"))
    o = cfg.get("output", {})
    dtype = np.float64 if o.get("dtype", "float32") == "float64" else np.float32
    model, seed = build_detector_model(cfg, exp)
    binning = cfg.get("detector_model", {}).get("binning", 1)
    exp_out = _binned_experiment(exp, binning)
    quantity = _quantity(model)
    attrs = {"config_json": json.dumps(cfg), "command": "diffscat simulate"}
    energy = config_photon_energy_eV(cfg)
    attrs["photon_energy_eV"] = energy
    records = material_records(cfg)
    if records:  # what each material resolved to: name, formula, density, energy, delta, beta
        attrs["materials_json"] = json.dumps(records)
    if config_path:
        attrs["config_path"] = os.path.abspath(config_path)
    protect = [config_path] if config_path else []
    if "dataset" not in cfg:
        from diffscat.io import build_shape

        say = _say if progress else (lambda msg: None)
        shape = build_shape(cfg["shape"], energy)
        grid = ds.default_grid(shape, exp, pitch=sim.get("pitch"))
        from diffscat._preflight import check_memory

        # refuse an impossible grid before saying anything (one line on stderr, nothing else)
        check_memory(grid.shape, math.prod(exp.shape), what=f"simulate({type(shape).__name__})",
                     knobs="a coarser [simulation] pitch, a smaller shape or fewer detector pixels")  # fmt: skip
        say(
            f"simulating {type(shape).__name__} ({kw['method']}) on a {'x'.join(map(str, exp.shape))} "
            f"{type(exp.detector).__name__}, voxel grid {'x'.join(map(str, grid.shape))} "
            "(compiling first; this can take a minute) ..."
        )
        t0 = time.perf_counter()
        I = ds.simulate(shape, exp, grid=grid, **kw)
        if model is not None:
            attrs["seed"] = seed
            img = model(I, exp, jax.random.key(seed) if model.is_random else None)
            mask = None if model.mask is None else np.asarray(model.mask)
            per = {"fluence": np.asarray([float(model.fluence)])}
        else:
            img, mask, per = I, None, None
        img = np.asarray(img)
        say(f"simulated in {time.perf_counter() - t0:.1f} s; writing {out}")
        write_cxi(
            out,
            img,
            exp_out,
            length_unit=unit,
            quantity=quantity,
            mask=mask,
            truth=shape,
            attrs=attrs,
            dtype=dtype,
            protect=protect,
            per_image=per,
        )
        if png:
            say(f"writing {png}")
            _close(
                ds.plot.plot_pattern(
                    img,
                    exp_out,
                    png,
                    title=_title(ds.plot.shape_summary(shape, unit), exp, unit),
                    label=_label(quantity, unit),
                    length_unit=unit,
                    mask=mask,
                )
            )
        return {"path": out, "png": png, "n": 1, "image_shape": img.shape, "quantity": quantity}
    return _simulate_dataset(
        cfg,
        exp,
        exp_out,
        model,
        seed,
        out,
        png,
        kw,
        sim,
        unit,
        quantity,
        attrs,
        dtype,
        chunk,
        progress,
        protect,
    )


def _simulate_dataset(
    cfg, exp, exp_out, model, seed, out, png, kw, sim, unit, quantity, attrs, dtype, chunk, progress, protect
):
    import equinox as eqx
    import jax
    from tqdm import tqdm

    import diffscat as ds
    from diffscat._preflight import check_memory
    from diffscat.io import CXIWriter
    from diffscat.io._dataset import sample_parameters

    d = cfg["dataset"]
    n = d["count"]
    dseed = d.get("seed", 0)
    chunk = int(chunk or d.get("chunk", 16))
    cls, kws, fluences = sample_parameters(cfg, n, dseed)
    try:
        shapes = [cls(**k) for k in kws]
    except (ValueError, TypeError) as e:
        raise ValueError(f"dataset.vary drew invalid {cls.__name__} parameters: {e}") from None
    batch = ds.stack(shapes)
    del shapes
    grid = ds.default_grid(batch, exp, pitch=sim.get("pitch"))  # the batch's hint is the largest shape's
    check_memory(
        grid.shape,
        math.prod(exp.shape),
        batch=chunk,
        itemsize=np.dtype(batch.dtype).itemsize,
        what=f"simulate of {chunk} patterns per chunk",
        knobs="a smaller --chunk / dataset.chunk, a coarser simulation.pitch, smaller shapes or fewer pixels",
    )
    if model is not None and fluences is None:
        fluences = np.full(n, float(model.fluence))
    base_key = jax.random.key(seed if seed is not None else dseed)

    @eqx.filter_jit
    def run_chunk(shapes, fl, idx):
        def one(shape, f, i):
            I = ds.simulate(shape, exp, grid=grid, **kw)
            if model is None:
                return I
            m = eqx.tree_at(lambda m: m.fluence, model, f)
            return m(I, exp, jax.random.fold_in(base_key, i) if m.is_random else None)

        return jax.vmap(one)(shapes, fl, idx)

    attrs = dict(attrs, seed=seed if seed is not None else dseed, dataset_seed=dseed, count=n)
    attrs["grid_shape"], attrs["grid_pitch"] = np.asarray(grid.shape), np.asarray(grid.pitch)
    mask = None if model is None or model.mask is None else np.asarray(model.mask)
    first = None
    with CXIWriter(
        out,
        exp_out.shape,
        exp_out,
        length_unit=unit,
        quantity=quantity,
        mask=mask,
        dtype=dtype,
        attrs=attrs,
        protect=protect,
        chunk_frames=min(chunk, 64),
    ) as w:
        bar = tqdm(total=n, unit="pattern", disable=not progress, file=sys.stderr, desc="simulate")
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            idx = np.minimum(np.arange(s, s + chunk), n - 1)  # pad the last chunk: one compilation
            sub = jax.tree.map(lambda x: x[idx], batch)
            fl = np.zeros(chunk) if fluences is None else fluences[idx]
            imgs = np.asarray(run_chunk(sub, fl, idx))[:m]
            truth = jax.tree.map(lambda x: x[:m], sub)
            per = {"index": np.arange(s, s + m)}
            if model is not None:
                per["fluence"] = fluences[s : s + m]
            w.append(imgs, truth, **per)
            if first is None:
                first = imgs[0]
            bar.update(m)
        bar.close()
    if png:
        _close(
            ds.plot.plot_pattern(
                first,
                exp_out,
                png,
                title=_title(f"{cls.__name__}, pattern 0 of {n}", exp, unit),
                label=_label(quantity, unit),
                length_unit=unit,
                mask=mask,
            )
        )
    return {
        "path": out,
        "png": png,
        "n": n,
        "image_shape": tuple(exp_out.shape),
        "quantity": quantity,
        "grid": grid.shape,
    }


def run(args) -> int:
    from diffscat._files import check_input_file, check_output
    from diffscat.io import load_config

    check_input_file(args.config, "config")
    cfg = load_config(args.config, args.set)
    out, png = _paths(cfg, args.config, args.output)
    if args.no_png:
        png = None
    if args.chunk is not None and args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    if os.path.exists(out) and cfg.get("output", {}).get("overwrite", True) is False:
        raise ValueError(f"{out} exists and output.overwrite = false")
    # every output checked before any computation: writable, not a folder, none of the inputs
    check_output(out, inputs=[args.config], name="output")
    if png:
        check_output(png, inputs=[args.config, out], name="PNG output")
    res = simulate_config(cfg, out, png, chunk=args.chunk, progress=not args.quiet, config_path=args.config)
    if not args.quiet:
        print(
            f"wrote {res['n']} pattern(s) {res['image_shape']} ({res['quantity']}) to {res['path']}"
            + (f" and {res['png']}" if res["png"] else "")
        )
    return 0


def _close(fig) -> None:
    """Release a figure written to disk (a long dataset job must not accumulate open figures)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
