"""`diffscat batch-fit CONFIG --data FILE.cxi -o RESULTS.h5 [--resume] [--set k=v]`: fit every pattern.

Config (TOML; see configs/batch-sphere.toml):

    [data]
    length_unit = "nm"        # unit of every length in the config and the results
    entry = 1                 # CXI entry holding a stack (N, ny, nx); multi-entry files (one image per
                              # /entry_N, as CXIDB id-94) are read entry by entry when entry = "all"

    [model]
    type = "Sphere"           # Sphere | Ellipsoid (fast vmapped fitters; configs/batch-sphere.toml,
                              # batch-ellipsoid.toml) | SphericalHarmonics | Cube | Octahedron | Icosahedron |
                              # Decahedron | TruncatedOctahedron | Cuboctahedron | Superellipsoid | auto
                              # (per-pattern fitting.fit_auto; configs/batch-harmonics.toml, batch-polyhedra.toml)
    candidates = ["Cube", "Octahedron"]   # type = "auto" only: classes compared per pattern by BIC
    lmax = 4                  # SphericalHarmonics: largest degree
    delta = 0.0
    beta = 0.001
    radius_min = 20.0         # Sphere / Ellipsoid: range searched by the automatic initialisation (required);
    radius_max = 200.0        # other types: optional check of the volume-equivalent radius (out-of-range)

    [fit]
    loss = "poisson"          # a name in fitting.LOSSES: poisson | anscombe | log
    polarisation = "unpolarised"
    beamstop_deg = 2.5        # pixels below this angle are not used (combined with the file's mask)
    n_steps = 8               # vmapped fitters
    n_candidates = 64
    driver = "vmapped"        # Sphere / Ellipsoid: "fit_auto" runs them through the per-pattern path
    max_steps = 200           # per-pattern path: steps per fit stage; n_starts, n_orientations, n_refine,
                              # class_margin, min_classes, refine_margin, criterion, seed, alternatives_tol, pitch, method
                              # as fitting.fit_auto
    gof_draws = 8             # per-pattern path: "misfit" when (loss - mean) / sd over gof_draws Poisson
    gof_threshold = 5.0       # realisations of the fit exceeds gof_threshold (docs/batch.md)
    sh_escapes = "misfit"     # SphericalHarmonics: "always" runs the escapes on every pattern (docs/batch.md)

    [batch]
    chunk_size = 16           # patterns per vmapped call (per part file for the per-pattern path), rounded up
                              # to a multiple of the local devices
    lockstep = "auto"         # per-pattern path: "on" runs a chunk's patterns together, their fits merged into
                              # vmapped batches ("auto": on an accelerator only); max_batch caps a merged fit,
                              # merge_grids = false merges only equal voxel grids
    rss_budget_mib = 1200     # per-pattern path: clear the compiled programs before a pattern (and before the
                              # polyhedra's search / refinement stages) when the process holds more (MiB;
                              # default 1200 on a CPU, none on an accelerator; 0: none)

Geometry comes from the data file. Results: RESULTS.h5 `/results/<name>` (row i = pattern i), status codes,
the config (the per-pattern path adds `class` with its `names`, `class_losses`, `coefficients` with `lmax`,
`radius` (volume-equivalent), `quaternion`, `scatman_angles`, `gof_z`, `n_alternatives`; docs/batch.md);
parts in RESULTS.h5.parts/ make `--resume` exact. Multi-host: start one process per host with `--distributed`
(jax.distributed.initialize auto-detects SLURM / Open MPI; `--coordinator`, `--num-processes`, `--process-id`
for manual setups); each process fits its slice, the last one to finish
writes the merged file (`--merge-only` rebuilds it from the parts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading

import numpy as np

__all__ = [
    "add_arguments",
    "run",
    "load_batch_config",
    "config_keys",
    "CXISource",
    "make_fitter",
    "uses_vmapped",
]


def _schemas() -> dict:
    """The batch-fit config schema (`diffscat.io.Key`s): the one source of the checks and of `--help`."""
    from diffscat.detectors import POLARISATIONS
    from diffscat.engines import METHODS
    from diffscat.io import Key

    from ._auto import CANDIDATES, NETWORK_PRUNE
    from ._init import ESCAPE_WHEN
    from ._losses import LOSSES

    return {
        "data": {
            "length_unit": Key("str", "unit of every length in the config and the results", required=True),
            "entry": Key(
                ("int", "str"), 'CXI entry holding a stack, or "all" (one image per entry)', default=1
            ),
        },
        "model": {
            "type": Key(
                "str",
                'model class ("auto": chosen per pattern among `candidates` by BIC)',
                default="Sphere",
                choices=(*CANDIDATES, "auto"),
            ),
            "candidates": Key("list", 'type = "auto": class names among the types above'),
            "lmax": Key("int", "SphericalHarmonics: largest degree", default=4, min=0),
            "delta": Key("number", "n = 1 - delta + i beta", default=0.0),
            "beta": Key("number", "absorption (>= 0)", default=0.0, min=0.0),
            "fit_optics": Key(
                "list",
                'optical constants fitted per pattern, among ["delta", "beta"] (delta, beta above: the starts); '
                "a last full-resolution refinement per class (fitting.fit_auto(fit_optics=...))",
                default=[],
            ),
            "delta_sign_tol": Key(
                "number",
                'with "delta" in fit_optics: a fit that crossed to the other sign of delta keeps the start\'s '
                "sign when that fits within this many NLL units (fitting.keep_delta_sign; 0: the data decides)",
                default=2.0,
                min=0.0,
            ),
            "radius_min": Key(
                "number",
                "smallest size (length unit): searched by the fast Sphere / Ellipsoid fitters (required "
                "there); for the other models a check of the fitted volume-equivalent radius (out-of-range)",
                positive=True,
            ),
            "radius_max": Key("number", "largest size (length unit), as radius_min", positive=True),
            "max_aspect": Key("number", "Ellipsoid: largest axis ratio searched", positive=True),
        },
        "fit": {
            "loss": Key("str", "negative log-likelihood", default="poisson", choices=tuple(LOSSES)),
            "polarisation": Key("str", "beam polarisation", default="unpolarised", choices=POLARISATIONS),
            "method": Key(
                "str", "forward model (propagating: strong refraction)", default="msft", choices=METHODS
            ),
            "beamstop_deg": Key("number", "pixels below this angle are not used", default=0.0, min=0.0),
            "n_steps": Key("int", "optimiser steps (default 8 for spheres, 200 for ellipsoids)", min=1),
            "n_candidates": Key("int", "sizes in the initial scan", default=64, min=1),
            "n_theta": Key("int", "Sphere: samples of the radial profile", default=512, min=1),
            "pitch": Key("number", "voxel pitch (length unit); default from the q range", positive=True),
            "n_starts": Key("int", "Ellipsoid: orientation starts", min=1),
            "learning_rate": Key("number", "Ellipsoid: Adam learning rate", positive=True),
            "driver": Key(
                "str",
                'Sphere / Ellipsoid: "vmapped" (fast batch fitters) or "fit_auto" (the per-pattern path of '
                "every other model); other models always use fit_auto",
                default="vmapped",
                choices=("vmapped", "fit_auto"),
            ),
            "max_steps": Key("int", "fit_auto path: optimiser steps per fit stage", default=200, min=1),
            "n_orientations": Key(
                "int",
                "fit_auto path: random orientations searched (polyhedra...); absent: 96, and with [init] network "
                "a local search near the network's orientation for the classes it orients (else 48)",
                min=1,
            ),
            "n_refine": Key("int", "fit_auto path: best orientations refined", default=4, min=1),
            "class_margin": Key(
                "number",
                "fit_auto path: polyhedra refined when their orientation search's deviance is within this "
                "factor of the best (inf: all)",
                default=1.5,
                min=1,
            ),
            "min_classes": Key(
                "int", "fit_auto path: at least this many polyhedra refined (best searches)", default=2, min=1
            ),
            "refine_margin": Key(
                "number",
                "fit_auto path: of those, refined at full resolution when their crop refinement's deviance is "
                "within this factor of the best (inf: all)",
                default=1.5,
                min=1,
            ),
            "criterion": Key(
                "str", "fit_auto path: class selection", default="bic", choices=("bic", "aic", "nll")
            ),
            "seed": Key("int", "fit_auto path: seed of the starts (same for every pattern)", default=0),
            "alternatives_tol": Key(
                "number",
                "fit_auto path: starts within this NLL of the best count as alternatives",
                default=5.0,
            ),
            "gof_draws": Key(
                "int", "fit_auto path: Poisson draws of the noise-consistency check", default=8, min=2
            ),
            "gof_threshold": Key(
                "number", "fit_auto path: misfit when (loss - mean) / sd of the draws exceeds it", default=5.0
            ),
            "sh_escapes": Key(
                "str",
                'fit_auto path, SphericalHarmonics: when the escapes from a local minimum run: "misfit" (the '
                'default: the fit is a misfit by gof_threshold) or "always" (every route on every pattern; ~7x the '
                "time; docs/batch.md)",
                choices=ESCAPE_WHEN,
            ),
        },
        "init": {
            "network": Key(
                "str",
                'start every fit from a network\'s prediction: a model file of `diffscat train`, or "default" '
                "(the shipped model); runs fitting.fit_auto(init=...) per pattern",
            ),
            "min_prob": Key(
                "number",
                "with network: polyhedra the network gives a class probability below this are not fitted "
                "(the most probable always is; fitting.fit_auto(network_min_prob=...))",
                min=0,
            ),
            "prune": Key(
                "str",
                'with min_prob: which candidates the network may rule out: "polyhedra" (the sphere, ellipsoid '
                'and harmonic shape always fitted) or "all" (every class it knows; the most probable kept; '
                "fitting.fit_auto(network_prune=...); default polyhedra)",
                choices=NETWORK_PRUNE,
            ),
            "nested": Key(
                "bool",
                'with prune = "all": the sphere, ellipsoid and harmonic shape the network ruled out are fitted '
                "after all around the best of them (the simpler ones by one local fit each, the richer ones when "
                "it is a misfit; fitting.fit_auto(network_nested=...); default true)",
            ),
            "sh_start": Key(
                "str",
                'with network, SphericalHarmonics: "auto" (the network\'s own coefficients when it predicts '
                'them, else the network-started ellipsoid), "network" or "ellipsoid" (fitting.fit_auto(sh_start=...))',
                default="auto",
            ),
            "ellipsoid_start": Key(
                "str",
                'with network, Ellipsoid: "robust" (size pinned by a sphere fit, 16 starts, the 3 best refined) '
                'or "network" (the network\'s 8 starts, the best refined: ~4x faster, misses near-spherical '
                "optima more often; fitting.fit_auto(ellipsoid_start=...), docs/batch.md)",
                default="robust",
            ),
        },
        "batch": {
            "chunk_size": Key(
                "int", "patterns per vmapped call (rounded up to the devices)", default=16, min=1
            ),
            "lockstep": Key(
                "str",
                'fit_auto path: "auto" (on when JAX runs on an accelerator), "on" or "off": the chunk\'s '
                "patterns run together, their fits merged into vmapped batches (fitting.lockstep_map)",
                default="auto",
                choices=("auto", "on", "off"),
            ),
            "max_batch": Key("int", "lockstep: at most this many patterns per merged fit", min=1),
            "rss_budget_mib": Key(
                "number",
                "per-pattern path: clear jax's compiled programs before a pattern (a chunk in lockstep) and "
                "before each polyhedron-class stage of a pattern when the process's resident memory exceeds "
                "this many MiB (default: 1200 on a CPU, none on an accelerator; 0: none)",
                min=0,
            ),
            "merge_grids": Key(
                "bool",
                "lockstep: merged fits run on the smallest voxel grid holding every member's (true), or merge "
                "only patterns whose grids are equal (false: each result equals its pattern-by-pattern fit)",
                default=True,
            ),
        },
    }


def config_keys() -> str:
    """Every batch-fit config key with its type, default and meaning (the text of `--help`)."""
    from diffscat.io import describe_sections

    return describe_sections(_schemas())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "config keys:\n" + config_keys()
    parser.add_argument("config", help="TOML config with [data], [model], [fit], [batch] sections")
    parser.add_argument("--data", required=True, help="CXI / HDF5 file with the patterns")
    parser.add_argument("-o", "--out", required=True, help="results file (HDF5); parts go to OUT.parts/")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted job")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--chunk-size", type=int, help="patterns per vmapped call (overrides [batch])")
    parser.add_argument("--max-chunks", type=int, help="stop after this many chunks (trial runs)")
    parser.add_argument("--merge-only", action="store_true", help="only rebuild OUT from OUT.parts/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--distributed", action="store_true", help="multi-host: jax.distributed.initialize()")
    parser.add_argument("--coordinator", help="coordinator address host:port (with --distributed)")
    parser.add_argument("--num-processes", type=int, help="number of processes (with --distributed)")
    parser.add_argument("--process-id", type=int, help="this process's index (with --distributed)")
    parser.add_argument(
        "--allow-external-links",
        action="store_true",
        help="follow HDF5 external links of the data file to other files (refused by default)",
    )


def load_batch_config(path, overrides=()) -> dict:
    """Read and validate a batch-fit config; unknown sections/keys and wrong types are errors naming them."""
    from diffscat.io import ConfigError, check_section, read_toml

    cfg = read_toml(path, overrides)
    schemas = _schemas()
    for sec in cfg:
        if sec not in schemas:
            raise ConfigError(f"unknown section [{sec}]; valid: {sorted(schemas)}")
    out = {sec: check_section(cfg.get(sec), schema, sec) for sec, schema in schemas.items()}
    m = out["model"]
    fast = uses_vmapped(out)
    if fast:
        for k in ("radius_min", "radius_max"):
            if k not in m:
                raise ConfigError(
                    f"missing key model.{k} (the size range the {m['type']} batch fitter searches)"
                )
    if ("radius_min" in m) != ("radius_max" in m):
        raise ConfigError("model.radius_min and model.radius_max go together")
    if "radius_min" in m and m["radius_min"] >= m["radius_max"]:
        raise ConfigError("model.radius_min must be below model.radius_max")
    from ._auto import CANDIDATES

    if m["type"] == "auto":
        c = m.get("candidates")
        if not c or not all(isinstance(x, str) for x in c):
            raise ConfigError('model.candidates must be a non-empty list of class names when type = "auto"')
        bad = [x for x in c if x not in CANDIDATES]
        if bad:
            raise ConfigError(f"model.candidates = {bad} are not among {', '.join(CANDIDATES)}")
    elif "candidates" in m:
        raise ConfigError(f'model.candidates needs type = "auto" (type is {m["type"]!r})')
    from ._auto import check_fit_optics

    try:
        check_fit_optics(m["fit_optics"])
    except (ValueError, TypeError) as e:  # TypeError: a table in the list
        raise ConfigError(f"model.fit_optics = {m['fit_optics']}: {e}") from None
    ini = out.get("init") or {}
    if ini.get("min_prob") is not None:
        if ini.get("network") is None:
            raise ConfigError(
                "init.min_prob needs init.network (it prunes classes by the network's probabilities)"
            )
        if not float(ini["min_prob"]) < 1:
            raise ConfigError(f"init.min_prob = {ini['min_prob']} must be below 1")
    if ini.get("prune", "polyhedra") != "polyhedra" and ini.get("min_prob") is None:
        raise ConfigError(
            "init.prune needs init.min_prob (the probability below which a class is not fitted)"
        )
    if ini.get("sh_start", "auto") not in ("auto", "network", "ellipsoid"):
        raise ConfigError(f"init.sh_start = {ini['sh_start']!r} must be 'auto', 'network' or 'ellipsoid'")
    from ._auto import ELLIPSOID_STARTS

    if ini.get("ellipsoid_start", "robust") not in ELLIPSOID_STARTS:
        raise ConfigError(
            f"init.ellipsoid_start = {ini['ellipsoid_start']!r} must be one of {tuple(ELLIPSOID_STARTS)}"
        )
    if ini.get("sh_start", "auto") != "auto" and ini.get("network") is None:
        raise ConfigError(
            "init.sh_start needs init.network (where the harmonic shape starts from the network)"
        )
    out["fit"].setdefault("n_steps", 8 if m["type"] == "Sphere" else 200)
    return out


def uses_vmapped(cfg: dict) -> bool:
    """True when a validated config runs a vmapped batch fitter (Sphere / Ellipsoid with driver "vmapped")."""
    if cfg.get("init", {}).get("network") is not None:
        return False  # network starts go through fitting.fit_auto(init=...)
    if cfg["model"]["fit_optics"]:
        return False  # fitted optical constants too
    return cfg["model"]["type"] in ("Sphere", "Ellipsoid") and cfg["fit"]["driver"] == "vmapped"


def make_fitter(cfg: dict, experiment):
    """The batch fitter of a validated config and the units of its columns ("length" -> the config's
    length_unit): `SphereBatchFitter` / `EllipsoidBatchFitter` for Sphere / Ellipsoid (driver "vmapped"),
    `AutoBatchFitter` (per-pattern `fitting.fit_auto`) otherwise."""
    from ._batch_auto import AutoBatchFitter
    from ._batch_fitters import EllipsoidBatchFitter, SphereBatchFitter

    m, fit, lu = cfg["model"], cfg["fit"], cfg["data"]["length_unit"]
    if uses_vmapped(cfg):
        common = dict(
            delta=m["delta"],
            beta=m["beta"],
            radius_range=(m["radius_min"], m["radius_max"]),
            n_candidates=fit["n_candidates"],
            loss=fit["loss"],
            polarisation=fit["polarisation"],
            pitch=fit.get("pitch"),
            method=fit["method"],
        )
        if m["type"] == "Sphere":
            fitter = SphereBatchFitter(experiment, n_steps=fit["n_steps"], n_theta=fit["n_theta"], **common)
            return fitter, {"radius": lu}
        extra = {k: fit[k] for k in ("n_starts", "learning_rate") if k in fit}
        if "max_aspect" in m:
            extra["max_aspect"] = m["max_aspect"]
        fitter = EllipsoidBatchFitter(experiment, n_steps=fit["n_steps"], **extra, **common)
        return fitter, {"semi_axes": lu}
    cands = m["candidates"] if m["type"] == "auto" else [m["type"]]
    rr = (m["radius_min"], m["radius_max"]) if "radius_min" in m else None
    fitter = AutoBatchFitter(
        experiment,
        cands,
        delta=m["delta"],
        beta=m["beta"],
        lmax=m["lmax"],
        loss=fit["loss"],
        polarisation=fit["polarisation"],
        method=fit["method"],
        pitch=fit.get("pitch"),
        max_steps=fit["max_steps"],
        n_starts=fit.get("n_starts", 8),
        n_orientations=fit.get("n_orientations"),
        n_refine=fit["n_refine"],
        class_margin=fit["class_margin"],
        min_classes=fit["min_classes"],
        refine_margin=fit["refine_margin"],
        criterion=fit["criterion"],
        seed=fit["seed"],
        alternatives_tol=fit["alternatives_tol"],
        radius_range=rr,
        gof_draws=fit["gof_draws"],
        gof_threshold=fit["gof_threshold"],
        init=cfg.get("init", {}).get("network"),
        network_min_prob=cfg.get("init", {}).get("min_prob"),
        network_prune=cfg.get("init", {}).get("prune", "polyhedra"),
        network_nested=cfg.get("init", {}).get("nested", True),
        sh_start=cfg.get("init", {}).get("sh_start", "auto"),
        sh_escapes=fit.get("sh_escapes", "misfit"),
        ellipsoid_start=cfg.get("init", {}).get("ellipsoid_start", "robust"),
        fit_optics=tuple(m["fit_optics"]),
        delta_sign_tol=m["delta_sign_tol"],
        lockstep={"auto": "auto", "on": True, "off": False}[cfg["batch"]["lockstep"]],
        max_batch=cfg["batch"].get("max_batch"),
        merge_grids=cfg["batch"]["merge_grids"],
        rss_budget_mib=cfg["batch"].get("rss_budget_mib", "auto"),
    )
    units = {k: v.replace("length", lu) for k, v in fitter.units.items()}
    return fitter, units


class CXISource:
    """Patterns of a CXI file, read lazily chunk by chunk: a stack (N, ny, nx) in one entry, or one image per
    entry (`entry="all"`, CXIDB id-94 style). Masks: the file's mask, finite pixels and `extra_mask`."""

    def __init__(self, path, length_unit: str, entry=1, extra_mask=None, *, allow_external: bool = False):
        from diffscat.io import list_entries, read_cxi

        self.path = os.fspath(path)
        self.length_unit = length_unit
        self.allow_external = bool(allow_external)
        ext = dict(allow_external=self.allow_external)
        if entry == "all":
            self.entries = list_entries(self.path, **ext)
            if not self.entries:
                raise ValueError(f"{self.path}: no /entry_N groups")
            first = read_cxi(self.path, length_unit=length_unit, entry=self.entries[0], **ext)
            self._n = len(self.entries)
            self._stack = None
        else:
            first = read_cxi(self.path, length_unit=length_unit, entry=entry, **ext)
            self.entries = None
            if isinstance(first.data, np.ndarray) and first.data.ndim == 2:
                self._stack = None
                self.entries = [entry]
                self._n = 1
            else:
                self._stack = first.data
                self._n = len(first.data)
        if first.experiment is None:
            raise ValueError(f"{self.path}: no detector geometry in the file (distance, pixel size, energy)")
        self.experiment = first.experiment
        self.image_shape = tuple(first.experiment.shape)
        self.file_mask = first.mask
        self.extra_mask = extra_mask

    def __len__(self) -> int:
        return self._n

    def _mask(self, m):
        if self.file_mask is not None and self.file_mask.shape == m.shape[-2:]:
            m = m & self.file_mask
        if self.extra_mask is not None:
            m = m & self.extra_mask
        return m

    def read(self, start: int, stop: int):
        import warnings

        from diffscat.io import NaNPixelWarning, read_cxi

        if self._stack is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NaNPixelWarning)  # bad pixels are masked and reported
                d = np.asarray(self._stack[start:stop], float)
                m = np.asarray(self._stack.masks_for(slice(start, stop)), bool)
            return d, self._mask(m)
        ds_, ms = [], []
        for e in self.entries[start:stop]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NaNPixelWarning)
                c = read_cxi(
                    self.path, length_unit=self.length_unit, entry=e, allow_external=self.allow_external
                )
            d = np.asarray(c.data, float)
            if d.shape != self.image_shape:  # flagged as bad by the screen (wrong shape)
                d = np.full(self.image_shape, np.nan)
            m = np.isfinite(d) if c.mask is None or c.mask.shape != d.shape else c.mask & np.isfinite(d)
            ds_.append(d)
            ms.append(self._mask(m))
        return np.stack(ds_), np.stack(ms)


@contextlib.contextmanager
def _stop_on_sigterm(out: str):
    """SIGTERM (a batch scheduler's time limit, `timeout`, `kill`) ends the run as Ctrl-C does: the chunk in
    progress is dropped, finished parts stay, the job lock is released and temporaries are removed, so that
    `--resume` continues at once (with Python's default action the lock would stay behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    got: list[int] = []

    def stop(signum, frame):
        got.append(signum)
        print(
            f"batch-fit: stopped by signal {signum}; finished chunks are kept in {out}.parts, continue with "
            "--resume",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
    if got:
        # the SystemExit was raised while Python ran a weakref callback or __del__, which prints and ignores
        # it (seen once in the tests): the run went on to its end, but it still exits as stopped
        raise SystemExit(128 + got[0])


def run(args) -> int:
    import jax

    if args.distributed:
        kw = {}
        if args.coordinator:
            kw = dict(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
            )
        jax.distributed.initialize(**kw)

    from diffscat._files import check_input_file, check_output
    from diffscat._preflight import check_memory
    from diffscat.detectors import angular_mask

    from ._batch import batch_fit, merge_parts

    check_input_file(args.config, "config")
    check_input_file(args.data, "data")
    check_output(args.out, inputs=[args.data, args.config], name="-o")
    check_output(args.out + ".parts", inputs=[args.data, args.config], folder=True, name="-o parts folder")
    cfg = load_batch_config(args.config, args.set)
    if args.merge_only:
        counts = merge_parts(args.out)
        print(json.dumps(counts))
        return 0
    src = CXISource(
        args.data,
        cfg["data"]["length_unit"],
        cfg["data"]["entry"],
        allow_external=args.allow_external_links,
    )
    fit = cfg["fit"]
    if fit["beamstop_deg"] > 0:
        src.extra_mask = np.asarray(angular_mask(src.experiment, theta_min_deg=fit["beamstop_deg"]))
    fitter, units = make_fitter(cfg, src.experiment)
    chunk = args.chunk_size or cfg["batch"]["chunk_size"]
    if chunk < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {chunk}")
    if uses_vmapped(cfg):  # the per-pattern path checks each fit's memory itself (fitting.fit)
        check_memory(
            fitter.grid.shape,
            math.prod(src.image_shape),
            batch=chunk,
            grad=True,
            what=f"batch-fit of {chunk} patterns per chunk",
            knobs="a smaller --chunk-size / [batch] chunk_size, a smaller [model] radius_max or a coarser pitch",
        )
    job = {"config": cfg, "data": os.path.abspath(args.data), "n": len(src)}
    with _stop_on_sigterm(args.out):
        summary = batch_fit(
            src,
            fitter,
            args.out,
            chunk_size=chunk,
            resume=args.resume,
            config=job,
            units=units,
            progress=not args.no_progress,
            max_chunks=args.max_chunks,
        )
    print(
        f"{summary.fitted_now} pattern(s) fitted now in {summary.seconds:.1f} s "
        f"({summary.rate:.2f}/s); totals: {json.dumps(summary.counts)}; results: {summary.path}"
    )
    if summary.fitted_now and summary.counts.get("pending", 0) == 0:
        _histograms(args.out, cfg["data"]["length_unit"])
        from diffscat.plot import pyplot as _plt, save_figure

        fig = fits_figure(args.out, src, fitter, length_unit=cfg["data"]["length_unit"])
        save_figure(fig, os.path.splitext(args.out)[0] + "_fits.png")
        _plt().close(fig)
    return 0


def fits_figure(out: str, source, fitter, n: int = 3, length_unit: str | None = None):
    """A grid of the `n` best and `n` worst fits (by loss per pixel, status ok or not-converged): data | model on
    one log colour scale, with the pattern index, status and loss in each title. Returns the figure."""
    from diffscat.plot import plot_pattern, pyplot as _plt

    from ._batch import STATUS, read_results

    res = read_results(out)
    loss = np.asarray(res["loss"], float)
    fitted = np.flatnonzero(np.isfinite(loss))
    order = fitted[np.argsort(loss[fitted])]
    picks = list(order[:n]) + [i for i in order[::-1][:n] if i not in order[:n]]
    plt = _plt()
    fig, axes = plt.subplots(
        max(1, len(picks)),
        2,
        figsize=(7.5, 3.2 * max(1, len(picks))),
        dpi=90,
        layout="constrained",
        squeeze=False,
    )
    names = {c: k for k, c in STATUS.items()}
    for row, i in enumerate(picks):
        data, mask = source.read(int(i), int(i) + 1)
        if hasattr(fitter, "model_image_row"):  # AutoBatchFitter: expected counts, scale included
            model = np.asarray(fitter.model_image_row(res, int(i)))
        elif "radius" in res:
            model = np.asarray(fitter.model_image(res["radius"][i])) * float(res["scale"][i])
        else:
            model = np.asarray(fitter.model_image(res["semi_axes"][i], res["quaternion"][i]))
            model = model * float(res["scale"][i])
        kind = "best" if row < n else "worst"
        vmax = float(np.nanmax(np.where(mask[0], data[0], np.nan)))
        title = f"{kind}: #{i} ({names[int(res['status'][i])]}), loss/pixel {loss[i]:.3g}"
        if "class_name" in res:
            title += f", {res['class_name'][i]}"
        kw = dict(mask=mask[0], label="counts per pixel", length_unit=length_unit, vmax=vmax)
        plot_pattern(data[0], source.experiment, ax=axes[row, 0], title="data " + title, **kw)
        plot_pattern(model, source.experiment, ax=axes[row, 1], title="model", **kw)
    return fig


def _histograms(out: str, length_unit: str | None = None) -> str:
    """Write the histograms of `histogram_figure` next to the results file (OUT_histograms.png); returns the
    path."""
    from diffscat.plot import pyplot as _plt, save_figure

    fig = histogram_figure(out, length_unit)
    path = save_figure(fig, os.path.splitext(out)[0] + "_histograms.png")
    _plt().close(fig)
    return path


def histogram_figure(out: str, length_unit: str | None = None):
    """Histograms of the fitted parameters of a results file (status ok only): size (radius, or the three
    semi-axes), scale and loss per pixel, each labelled with its unit (the results' `unit` attributes, "length"
    read as `length_unit`) and titled with the count and median; the status counts; and, when the class was
    selected per pattern (`/results/class` with several `names`), the patterns per class (fitted and ok).
    Returns the figure."""
    import h5py

    from diffscat.plot import pyplot as _plt

    from ._batch import STATUS, read_results

    res = read_results(out)
    with h5py.File(out, "r") as f:
        units = {k: str(f["results"][k].attrs.get("unit", "")) for k in f["results"]}
        classes = None
        if "class" in f["results"] and "names" in f["results/class"].attrs:
            classes = [str(x) for x in f["results/class"].attrs["names"]]
    names = [k for k in ("radius", "semi_axes", "scale", "loss") if k in res]
    ok = np.asarray(res["status"]) == 0
    if "semi_axes" in res:  # aspect ratios b/a and c/a of the sorted semi-axes (a <= b <= c)
        ax3 = np.sort(np.asarray(res["semi_axes"], float), axis=1)
        res["aspect_ratios"] = ax3[:, 1:] / ax3[:, :1]
        units["aspect_ratios"] = "1"
        names.append("aspect_ratios")
    plt = _plt()
    with_classes = classes is not None and len(classes) > 1
    ncol = len(names) + 1 + int(with_classes)
    fig, axes = plt.subplots(1, ncol, figsize=(4.0 * ncol, 3.4), dpi=100, layout="constrained")
    axes = np.atleast_1d(axes)
    if with_classes:  # patterns per selected class (every fitted pattern, hatched part: status ok)
        code = np.asarray(res["class"])
        n_all = [int(np.sum(code == j)) for j in range(len(classes))]
        n_ok = [int(np.sum((code == j) & ok)) for j in range(len(classes))]
        ax = axes[-2]
        ax.bar(range(len(classes)), n_all, color="0.75", label="fitted")
        ax.bar(range(len(classes)), n_ok, color="C0", label="ok")
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("patterns")
        ax.legend(fontsize=8)
        ax.set_title(f"class (selected per pattern): {sum(n_all)} fitted", fontsize=9)
        axes = np.concatenate([axes[:-2], axes[-1:]])
    counts = {n: int(np.sum(np.asarray(res["status"]) == c)) for n, c in STATUS.items()}
    axes[-1].bar(range(len(counts)), list(counts.values()), color="0.4")
    axes[-1].set_xticks(range(len(counts)), list(counts), rotation=30, ha="right", fontsize=8)
    axes[-1].set_ylabel("patterns")
    axes[-1].set_title("status (ok: converged, loss consistent with noise)", fontsize=9)
    for ax, k in zip(axes[:-1], names, strict=True):
        unit = units.get(k, "")
        if length_unit:
            unit = unit.replace("length", length_unit)
        v = np.asarray(res[k], float)[ok]
        cols = [v] if v.ndim == 1 else [v[:, j] for j in range(v.shape[1])]
        labels = [None] if v.ndim == 1 else [f"{k}[{j}]" for j in range(v.shape[1])]
        if k == "aspect_ratios":
            labels = ["b/a", "c/a"]
        n_ok = 0
        for c, lab in zip(cols, labels, strict=True):
            c = c[np.isfinite(c)]
            n_ok = max(n_ok, c.size)
            ax.hist(
                c, bins=min(40, max(5, c.size // 3)) if c.size else 5, alpha=0.6 if lab else 1.0, label=lab
            )
        if v.ndim > 1:
            ax.legend(fontsize=8)
        med = np.nanmedian(v) if np.isfinite(v).any() else np.nan  # a column no kept class fills: NaN
        ax.set_xlabel(f"{k} [{unit}]" if unit else k)
        ax.set_ylabel("patterns")
        ax.set_title(f"{k}: {n_ok} fitted, median {med:.4g}", fontsize=9)
    fig.suptitle(f"{os.path.basename(out)}: {int(ok.sum())} of {ok.size} patterns ok", fontsize=10)
    return fig
