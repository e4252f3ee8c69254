"""Evaluate the amortised-inversion network (default: the shipped model) on held-out patterns.

Held-out patterns, all made by paths other than the training data's:

- "sim": the training generator's noise model (photons 1e4-1e7, background, beamstop 0-4 deg, centre offset)
  with another seed and a FINER voxel pitch (`--pitch`, default 0.3 wavelengths; training: 0.4), every class
  of the model, sizes over the training buckets (2-12 wavelengths);
- "mie": exact Mie spheres (miepython, unpolarised), radius 2-12 wavelengths, photons 1e4-1e7, beamstop 0-4 deg;
- "evalset": `fitting.evaluation_set` (the project's independent-path set: supersampled box-averaged occupancy,
  float64 exact slice sum), ellipsoids and the six polyhedra on a 64^2 QGrid, and (`--n-eval-sh`, models with a
  harmonic head) random harmonic bodies (l <= 4, radius max / min up to 1.5).

Harmonic bodies (models with a harmonic head): the relative rms radius error of the predicted lab-frame shape,
sqrt(min over the 4 twins of sum (s c_pred - c_true)^2) with c = c_lm / c_00 (l >= 1; the truth's lab-frame
coefficients projected from its rotated body), against the same for a sphere (the truth's own deformation), and
the IoU of the predicted body (predicted size) with the truth (`fitting.iou`, best over the twins) against that
of the sphere of the predicted size.

Reported for the network alone: size error |r_pred / r_true - 1| (median, 90th percentile, per class and size
bucket), class accuracy and confusion, orientation error of the ellipsoids and polyhedra up to their twins (geodesic
angle to the nearest of `twin_rotations(R, class)`: the body's point group and the pattern twins), with the
same angle for uniformly random rotations as the chance level (it is small for the icosahedron: 120
twins), inference time per pattern at batch 64 (canonical transform + model, and the
model alone). Then, on `--n-fit` evalset/Mie patterns: `fitting.fit_from_network` (true class as the only
candidate) against the multi-start `fitting.fit_auto` restricted to the true class: the fraction where the
network-started fit reaches the multi-start optimum (data NLL within 1 unit or better, both optima polished on
one common voxel grid first: `common_grid_nll`; the own-grid comparison of sessions <= 25 is reported beside it)
and the time per pattern. `--fit-candidates all`: both paths select the class among all of the model's
classes (`fit_auto` over all of them, no guess, against `fit_auto(init=network)` with `--net-min-prob` /
`--net-prune`); a case is "reached" when both chose the same class and the NLLs compare as above, or the
network path's choice has a criterion value (BIC) within 1 unit of the multi-start's or lower.

    python benchmarks/bench_network.py [--model default] [--n-sim 504] [--n-mie 48] [--n-eval 28] [--n-fit 8]

Writes benchmarks/results/bench_network.json. CPU timings depend on the machine's load: say so when quoting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffscat as ds
import fitting
from fitting._jitmem import release_jit_memory
from fitting._network import rotation_from_6d, twin_rotations
from fitting._train import DataStream

HERE = os.path.dirname(os.path.abspath(__file__))


def mie_counts(exp, radius, delta, beta, photons, beamstop_deg, rng):
    """Poisson counts of an exact Mie sphere (unpolarised), total `photons` in the used pixels."""
    import miepython

    k0 = 2 * np.pi / float(exp.wavelength)
    th = np.asarray(exp.theta)
    fine = np.linspace(0, th.max(), 4000)
    s1, s2 = miepython.S1_S2(complex(1 - delta, beta), k0 * radius, np.cos(fine), norm="wiscombe")
    dcs = np.interp(th, fine, (np.abs(s1) ** 2 + np.abs(s2) ** 2) / (2 * k0**2))
    mask = np.asarray(exp.valid) & (th >= np.radians(beamstop_deg))
    mean = np.where(mask, dcs * np.asarray(exp.solid_angle), 0.0)
    return rng.poisson(mean / mean.sum() * photons).astype(float), mask


def angle_to_twins(R_pred, R_true, class_name: str = "Ellipsoid") -> float:
    """Smallest geodesic angle [deg] between R_pred and the twins of R_true (a body of `class_name`)."""
    tw = np.asarray(twin_rotations(jnp.asarray(R_true, jnp.float32), class_name), float)
    c = (np.einsum("ij,kij->k", np.asarray(R_pred, float), tw) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c.max(), -1, 1))))


def random_rotation(rng) -> np.ndarray:
    """A uniformly random rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


# the evaluation-set patterns of this benchmark (64^2 QGrid, r_eq 2.5-8 wavelengths, 1e5-1e7 photons)
EVALSET = dict(
    n_pixels=64,
    size_range=(2.5, 8.0),
    photons_range=(1e5, 1e7),
    pitch_factor=1.0,
    supersample=2,
    cache_dir=os.path.join(HERE, "results"),
)


def lab_relative(shape: ds.SphericalHarmonics, lmax: int) -> np.ndarray:
    """Relative lab-frame coefficients c_lm / c_00 (l = 1 .. lmax) of a harmonic body with a rotation: its
    radius R_body(R^T u) projected on the Y_lm by quadrature (exact for l <= lmax: rotations keep the degree)."""
    from diffscat.shapes._harmonics import _sphere_grid, real_sph_harm
    from fitting._evalset import _x64

    u, w = _sphere_grid(4 * lmax + 8, 8 * lmax + 8)
    u, w = u.reshape(-1, 3), w.reshape(-1)
    c = np.asarray(shape.coefficients, float)
    L = int(np.sqrt(c.size)) - 1
    R = np.asarray(shape.rotation, float)
    with _x64():
        r_lab = np.asarray(real_sph_harm(L, u @ R), float) @ c  # u @ R = (R^T u) per row
        Y = np.asarray(real_sph_harm(lmax, u), float)
    lab = (Y * w[:, None]).T @ r_lab
    return lab[1:] / lab[0]


def harmonic_row(pred_sh, true_sh, r_pred: float, r_true: float) -> dict:
    """The harmonic metrics of one prediction (see the module docstring)."""
    from fitting._network import harmonics_from_relative, sh_twin_signs

    p, t = np.asarray(pred_sh, float), np.asarray(true_sh, float)
    n = min(p.size, t.size)
    L = int(np.sqrt(n + 1)) - 1
    err = min(float(np.sum((sg * p[:n] - t[:n]) ** 2)) for sg in sh_twin_signs(L))
    truth = ds.SphericalHarmonics(harmonics_from_relative(t, r_true))
    pred = ds.SphericalHarmonics(harmonics_from_relative(p, r_pred))
    return {
        "sh_rms_err": math.sqrt(err + float(np.sum(t[n:] ** 2)) + float(np.sum(p[n:] ** 2))),
        "sh_rms_sphere": math.sqrt(float(np.sum(t**2))),
        "iou": fitting.iou(truth, pred, n=48),
        "iou_sphere": fitting.iou(truth, ds.Sphere(r_pred), n=48),
    }


def summarise_harmonics(rows) -> dict | None:
    h = [r for r in rows if "sh_rms_err" in r]
    if not h:
        return None
    out = {"n": len(h)}
    for k in ("sh_rms_err", "sh_rms_sphere", "iou", "iou_sphere"):
        v = np.array([r[k] for r in h])
        out[k] = {
            "median": float(np.median(v)),
            "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)),
        }
    out["iou_ge_0.9"] = float(np.mean([r["iou"] >= 0.9 for r in h]))
    out["iou_sphere_ge_0.9"] = float(np.mean([r["iou_sphere"] >= 0.9 for r in h]))
    return out


def summarise(rows, classes) -> dict:
    err = np.array([abs(r["r_pred"] / r["r_true"] - 1) for r in rows])
    out = {
        "n": len(rows),
        "size_err_median": float(np.median(err)),
        "size_err_p90": float(np.percentile(err, 90)),
        "class_accuracy": float(np.mean([r["cls_pred"] == r["cls_true"] for r in rows])),
    }
    by_cls = {}
    for c in classes:
        e = [e for e, r in zip(err, rows) if r["cls_true"] == c]
        if e:
            acc = np.mean([r["cls_pred"] == c for r in rows if r["cls_true"] == c])
            by_cls[c] = {"n": len(e), "size_err_median": float(np.median(e)), "accuracy": float(acc)}
    out["by_class"] = by_cls
    by_size = {}
    for lo, hi in ((2, 4), (4, 7), (7, 12.01)):
        e = [e for e, r in zip(err, rows) if lo <= r["r_true"] < hi]
        if e:
            by_size[f"{lo}-{hi:g}"] = {"n": len(e), "size_err_median": float(np.median(e))}
    out["by_size"] = by_size
    conf = np.zeros((len(classes), len(classes)), int)
    for r in rows:
        conf[classes.index(r["cls_true"]), classes.index(r["cls_pred"])] += 1
    out["confusion"] = conf.tolist()
    by_orient = {}
    for c in classes:
        a = [r["orient_deg"] for r in rows if r["cls_true"] == c and r.get("orient_deg") is not None]
        if a:
            rng = np.random.default_rng(0)
            chance = [angle_to_twins(random_rotation(rng), random_rotation(rng), c) for _ in range(200)]
            by_orient[c] = {
                "n": len(a),
                "median": float(np.median(a)),
                "p90": float(np.percentile(a, 90)),
                "within_10deg": float(np.mean(np.asarray(a) <= 10)),
                "chance_median": float(np.median(chance)),
            }
    if by_orient:
        out["orientation_deg"] = by_orient
    sh = summarise_harmonics(rows)
    if sh is not None:
        out["harmonics"] = sh
    ang = [r["orient_deg"] for r in rows if r.get("orient_deg") is not None and r["cls_true"] == "Ellipsoid"]
    if ang:
        out["ellipsoid_orientation_deg"] = {
            "n": len(ang),
            "median": float(np.median(ang)),
            "p90": float(np.percentile(ang, 90)),
        }
        an = [r["orient_deg"] for r in rows if r.get("orient_deg") is not None and r.get("aniso", 0) >= 1.3]
        if an:
            out["ellipsoid_orientation_deg_c_over_a_ge_1.3"] = {"n": len(an), "median": float(np.median(an))}
    return out


def common_grid_nll(r_net, r_auto, steps: int = 60) -> dict:
    """Both fits' optima polished on ONE voxel grid and their data NLLs compared there.

    Each fit renders on its own grid (`fitting.refine_grid` sizes it from the fit's start), so two fits of
    the same basin can differ by the renderer's discretisation. (Session 25 blamed the grids for two
    Mie-sphere fits 13 units apart at r = 6.484 / 6.482 wavelengths; both grids were the same, and the cause
    was the Poisson loss's float32 rounding, fixed in session 26.) So the optimum of each fit is refitted for
    at most `steps` L-BFGS steps, with the multi-start's free parameters, loss and background, on `fit`'s
    default grid for the larger of the two models; each then sits at its basin's optimum on that common
    grid, and a difference left is a difference of basins."""
    from fitting._fit import GRID_MARGIN, _fit_grid

    grid = _fit_grid([r_net.model, r_auto.model], r_auto.experiment, None, GRID_MARGIN)
    out = {}
    for key, r in (("net", r_net), ("auto", r_auto)):
        p = fitting.fit(
            r.data,
            r.experiment,
            r.model,
            r.mask,
            free=r_auto.free,
            loss=r_auto.loss_function if r_auto.loss_function is not None else r_auto.loss_kind,
            background=r.background,
            grid=grid,
            max_steps=steps,
            uncertainties=False,
        )
        out[f"nll_{key}_common"] = fitting.data_loss(p)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n-sim", type=int, default=504)
    ap.add_argument("--n-mie", type=int, default=48)
    ap.add_argument("--n-eval", type=int, default=28, help="evaluation_set patterns (ellipsoids + polyhedra)")
    ap.add_argument(
        "--n-eval-sh",
        type=int,
        default=20,
        help="evaluation_set harmonic bodies (models with a harmonic head)",
    )
    ap.add_argument("--n-fit", type=int, default=8, help="patterns for the fit comparison (0: skip)")
    ap.add_argument("--fit-steps", type=int, default=100)
    ap.add_argument(
        "--fit-classes", default=None, help="comma-separated: fit comparison on these classes only"
    )
    ap.add_argument(
        "--net-path",
        choices=("auto", "direct"),
        default="auto",
        help="the network-started fit: fitting.fit_auto(init=network) (the user's path, with the harmonic "
        "escape route) or fitting.fit_from_network alone (sessions <= 24)",
    )
    ap.add_argument(
        "--warm",
        action="store_true",
        help="also time each fit a second time on the same pattern (compiled: the run time alone)",
    )
    ap.add_argument(
        "--no-common-grid",
        dest="common_grid",
        action="store_false",
        help="score each fit on its own voxel grid only (sessions <= 25); default: also polish both optima on "
        "one common grid and compare there (`common_grid_nll`)",
    )
    ap.add_argument("--common-steps", type=int, default=60, help="L-BFGS steps of the common-grid polish")
    ap.add_argument(
        "--fit-candidates",
        choices=("true", "all"),
        default="true",
        help="the fit comparison's candidates: the true class only (sessions <= 27), or every class of the model "
        "(class selection on both paths: the no-guess fit_auto over all of them against the network-started one)",
    )
    ap.add_argument(
        "--net-min-prob",
        type=float,
        default=None,
        help="network path: fit_auto(network_min_prob=...) (classes the network gives less are not fitted)",
    )
    ap.add_argument(
        "--net-prune",
        choices=("polyhedra", "all"),
        default="polyhedra",
        help="network path, with --net-min-prob: fit_auto(network_prune=...)",
    )
    ap.add_argument(
        "--net-ellipsoid-start",
        choices=("robust", "network"),
        default="robust",
        help="network path: fit_auto(ellipsoid_start=...) (the network-started ellipsoid's route)",
    )
    ap.add_argument("--fit-skip", type=int, default=0, help="skip the first K fit cases (to extend a sample)")
    ap.add_argument(
        "--fit-cases", default=None, help="comma-separated case indices (of the full case order): only these"
    )
    ap.add_argument(
        "--auto-from",
        default=None,
        help="a JSON of an earlier run on the same cases: its multi-start results (class, losses, time) are "
        "reused and only the network path runs (reached then on own grids; to measure a network-path change)",
    )
    ap.add_argument(
        "--alternate",
        action="store_true",
        help="run the multi-start first on every other case (each path compiles first half the time)",
    )
    ap.add_argument("--pitch", type=float, default=0.3, help="voxel pitch of the 'sim' part [wavelengths]")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_network.json"))
    args = ap.parse_args(argv)

    net = fitting.load_network(args.model)
    cfg = net.meta["config"]
    classes = list(net.classes)
    exp = ds.Experiment(1.0, ds.QGrid(int(cfg["data"]["n_pixels"]), float(cfg["data"]["theta_max_deg"])))
    report: dict = {"model": args.model, "model_step": net.meta["step"], "args": vars(args)}
    rows: dict[str, list] = {"sim": [], "mie": [], "evalset": []}
    t_all = time.perf_counter()

    # --- "sim": the training generator at another seed and a finer pitch
    b = 24
    # fresh simulations (a model trained on a cached pool must not be scored on a pool)
    held = {**cfg, "data": {**cfg["data"], "pool": 0, "pool_cache": ""}}
    stream = DataStream(held, b, pitch=args.pitch, seed_offset=args.seed)
    apply = jax.jit(jax.vmap(net.model))
    for step in range(math.ceil(args.n_sim / b)):
        x, tg, extra = stream.batch(step, with_truth=True)
        o = {k: np.asarray(v) for k, v in apply(x).items()}
        for i in range(len(tg["label"])):
            c_true = classes[int(tg["label"][i])]
            c_pred = classes[int(np.argmax(o["logits"][i]))]
            row = {
                "r_true": float(np.exp(tg["log_size"][i])),
                "r_pred": float(np.exp(o["log_size"][i])),
                "cls_true": c_true,
                "cls_pred": c_pred,
            }
            if c_true == "SphericalHarmonics":
                row.update(harmonic_row(o["sh"][i], tg["sh"][i], row["r_pred"], row["r_true"]))
            elif c_true != "Sphere":
                Rp = np.asarray(rotation_from_6d(jnp.asarray(o["rot6d"][i])))
                row["orient_deg"] = angle_to_twins(Rp, tg["rotation"][i], c_true)
            if c_true == "Ellipsoid":
                row["aniso"] = float(np.exp(tg["log_axes"][i][1] - tg["log_axes"][i][0]))
            rows["sim"].append(row)
        print(f"sim: {len(rows['sim'])} patterns ({time.perf_counter() - t_all:.0f} s)", flush=True)

    # --- "mie": exact spheres
    rng = np.random.default_rng([args.seed, 1])
    mie = []
    for _ in range(args.n_mie):
        r = float(rng.uniform(2.0, 12.0))
        delta, beta = float(rng.uniform(0.001, 0.01)), float(rng.uniform(0.0, 0.002))
        photons = float(np.exp(rng.uniform(np.log(1e4), np.log(1e7))))
        c, m = mie_counts(exp, r, delta, beta, photons, float(rng.uniform(0, 4)), rng)
        mie.append((c, m, r, delta, beta))
        p = net.predict(c, exp, m)
        rows["mie"].append(
            {"r_true": r, "r_pred": p["size_wavelengths"], "cls_true": "Sphere", "cls_pred": p["class"]}
        )
    print(f"mie: {len(mie)} patterns ({time.perf_counter() - t_all:.0f} s)", flush=True)

    # --- "evalset": the project's independent-path set
    es = None
    has_sh = fitting.has_harmonics(net)
    es_sh = None
    if has_sh and args.n_eval_sh > 0:
        t0 = time.perf_counter()
        es_sh = fitting.evaluation_set(
            args.seed,
            families=("harmonics",),
            n_harmonics=args.n_eval_sh,
            **EVALSET,
        )
        report["evalset_sh_build_s"] = time.perf_counter() - t0
        for pat in es_sh:
            t = pat.truth
            p = net.predict(pat.counts, es_sh.experiment, pat.mask)
            truth = ds.SphericalHarmonics(
                np.asarray(t["params"]["coefficients"]), rotation=np.asarray(t["rotation"])
            )
            row = {
                "r_true": t["radius_eq"],
                "r_pred": p["size_wavelengths"],
                "cls_true": t["class"],
                "cls_pred": p["class"],
            }
            row.update(harmonic_row(p["sh_relative"], lab_relative(truth, 4), row["r_pred"], row["r_true"]))
            rows["evalset"].append(row)
        print(f"evalset (harmonics): {len(es_sh)} patterns ({time.perf_counter() - t_all:.0f} s)", flush=True)
    if args.n_eval > 0:
        n_ell = args.n_eval // 2
        n_or = max(1, (args.n_eval - n_ell) // 6)
        t0 = time.perf_counter()
        es = fitting.evaluation_set(
            args.seed,
            families=("ellipsoid", "polyhedra"),
            n_ellipsoids=n_ell,
            n_orientations=n_or,
            **EVALSET,
        )
        report["evalset_build_s"] = time.perf_counter() - t0
        for pat in es:
            t = pat.truth
            p = net.predict(pat.counts, es.experiment, pat.mask)
            row = {
                "r_true": t["radius_eq"],
                "r_pred": p["size_wavelengths"],
                "cls_true": t["class"],
                "cls_pred": p["class"],
            }
            row["orient_deg"] = angle_to_twins(p["rotation"], np.asarray(t["rotation"]), t["class"])
            if t["class"] == "Ellipsoid":
                a = np.asarray(t["params"]["semi_axes"])
                row["aniso"] = float(a.max() / a.min())
            rows["evalset"].append(row)
        print(f"evalset: {len(es)} patterns ({time.perf_counter() - t_all:.0f} s)", flush=True)

    everything = rows["sim"] + rows["mie"] + rows["evalset"]
    report["network"] = {"all": summarise(everything, classes)} if everything else {}
    for k, v in rows.items():
        if v:
            report["network"][k] = summarise(v, classes)
    report["classes"] = classes

    # --- inference time at batch 64 (best of 5): canonical transform + model on 64 Mie patterns; model alone
    if mie:
        counts = np.stack([m[0] for m in (mie * 64)[:64]])
        masks = np.stack([m[1] for m in (mie * 64)[:64]])
        xs = jax.vmap(net._map(exp))(jnp.asarray(counts, jnp.float32), jnp.asarray(masks))
        jax.block_until_ready(apply(xs))
        net.raw(counts, exp, masks)
        tm, tt = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(apply(xs))
            tm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            net.raw(counts, exp, masks)
            tt.append(time.perf_counter() - t0)
        report["inference_ms_per_pattern_batch64"] = {
            "model": 1e3 * min(tm) / 64,
            "transform_and_model": 1e3 * min(tt) / 64,
        }
        print(json.dumps(report["inference_ms_per_pattern_batch64"]), flush=True)

    # --- fit comparison: network + refinement vs multi-start fit_auto restricted to the true class
    cases = []
    if args.n_fit > 0:
        pool = []
        if es is not None:
            ell = es.family("ellipsoid")
            pol = es.family("polyhedra")
            # round-robin over the polyhedron classes, so a few fits already span them
            seen: dict[str, int] = {}
            rank = []
            for p in pol:
                rank.append(seen.get(p.truth["class"], 0))
                seen[p.truth["class"]] = rank[-1] + 1
            pol = [pol[i] for i in sorted(range(len(pol)), key=lambda i: rank[i])]
            for i in range(max(len(ell), len(pol))):
                pool += [
                    (p.counts, p.mask, p.truth["class"], p.truth["delta"], p.truth["beta"])
                    for p in (ell[i : i + 1] + pol[i : i + 1])
                ]
        mie_pool = [(c, m, "Sphere", d, bt) for c, m, r, d, bt in mie if r < 8.0]
        if es_sh is not None:  # harmonic bodies take every third slot after the sphere
            sh_pool = [
                (p.counts, p.mask, "SphericalHarmonics", p.truth["delta"], p.truth["beta"]) for p in es_sh
            ]
            mixed = []
            for i in range(max(len(pool), len(sh_pool))):
                mixed += pool[2 * i : 2 * i + 2] + sh_pool[i : i + 1]
            pool = mixed
        if args.fit_classes:  # only these classes (e.g. to rerun one class after a change)
            keep = set(args.fit_classes.split(","))
            pool = [x for x in pool if x[2] in keep]
            mie_pool = [x for x in mie_pool if x[2] in keep]
        # interleave: sphere, ellipsoid, polyhedron, ...
        order = []
        while (pool or mie_pool) and len(order) < args.n_fit:
            if mie_pool:
                order.append(mie_pool.pop(0))
            for _ in range(2):
                if pool and len(order) < args.n_fit:
                    order.append(pool.pop(0))
        every = args.fit_candidates == "all"
        only = None if args.fit_cases is None else {int(x) for x in args.fit_cases.split(",")}
        earlier = {}
        if args.auto_from:
            with open(args.auto_from) as f:
                old = json.load(f)
            earlier = {k["index"]: k for k in old.get("fits", {}).get("cases", old.get("fit_cases", []))}
        for i_case, (c, m, cls, delta, beta) in enumerate(order):
            if i_case < args.fit_skip or (only is not None and i_case not in only):
                continue
            if args.auto_from and (i_case not in earlier or earlier[i_case]["class"] != cls):
                raise SystemExit(f"--auto-from {args.auto_from}: no case {i_case} of class {cls} there")
            kw = dict(delta=delta, beta=beta, uncertainties=False)
            cands = tuple(classes) if every else (cls,)
            skw = {"lmax": 4} if "SphericalHarmonics" in cands else {}
            nkw = {"ellipsoid_start": args.net_ellipsoid_start}
            if args.net_min_prob is not None:
                nkw |= dict(network_min_prob=args.net_min_prob, network_prune=args.net_prune)

            def run_net():
                if args.net_path == "direct":
                    return fitting.fit_from_network(
                        c, exp, net, m, candidates=list(cands), max_steps=args.fit_steps, **skw, **kw
                    )
                return fitting.fit_auto(c, exp, cands, m, init=net, **nkw, **skw, **kw)

            def run_auto():
                return fitting.fit_auto(c, exp, cands, m, **skw, **kw)

            case = {"class": cls, "index": i_case}
            results = {}
            paths = [("net", run_net), ("auto", run_auto)]
            if args.alternate and i_case % 2:
                paths = paths[::-1]
            if args.auto_from:  # the multi-start's numbers from the earlier run
                paths = [("net", run_net)]
                for k in ("t_auto", "nll_auto", "class_auto", "crit_auto", "fitted_auto", "t_auto_warm"):
                    if k in earlier[i_case]:
                        case[k] = earlier[i_case][k]
                case["auto_from"] = args.auto_from
            for key, fn in paths:
                # stay under vm.max_map_count (fitting/_jitmem.py), at a lower fraction than fit_auto's own guard
                # (0.5), so that the guard does not clear the caches inside a timed (--warm) run
                release_jit_memory(0.3, verbose=False)
                t0 = time.perf_counter()
                r = results[key] = fn()
                case[f"t_{key}"] = time.perf_counter() - t0
                case[f"nll_{key}"] = fitting.data_loss(r)
                if args.warm:  # the same fit again: everything compiled, the run time alone
                    t0 = time.perf_counter()
                    fn()
                    case[f"t_{key}_warm"] = time.perf_counter() - t0
            if args.auto_from:
                same = type(results["net"].model).__name__ == case.get("class_auto", cls)
            else:
                same = type(results["net"].model) is type(results["auto"].model)
            if every:  # class selection: which class each path chose, and its criterion value (BIC)
                for key, r in results.items():
                    case[f"class_{key}"] = type(r.model).__name__
                    case[f"crit_{key}"] = float(r.ranking[0][3])
                    case[f"fitted_{key}"] = [x[0] for x in r.ranking]
                case["net_pruned"] = [x[0] for x in results["net"].network_pruned]
                # fit_auto(network_nested=True): the nested classes the network had ruled out but fitted after
                # all; and the choice without them (what network_nested=False gives, without their time)
                added = [x[0] for x in getattr(results["net"], "network_added", [])]
                case["net_added"] = added
                case["net_added_s"] = float(getattr(results["net"], "network_added_s", 0.0))
                rest = [x for x in results["net"].ranking if x[0] not in added]
                case["class_net_unnested"], case["nll_net_unnested"] = rest[0][0], float(rest[0][1])
                case["crit_net_unnested"] = float(rest[0][3])
            # reached: the same class within 1 NLL unit (or lower); with class selection, another class counts
            # only when its criterion value is within 1 unit of the multi-start's choice (or lower)
            if same:
                case["reached_own_grid"] = case["nll_net"] <= case["nll_auto"] + 1.0
            else:
                case["reached_own_grid"] = every and case["crit_net"] <= case["crit_auto"] + 1.0
            if every:  # the same rule on own grids for the choice without the added nested classes
                if case["class_net_unnested"] == case["class_auto"]:
                    case["reached_unnested"] = case["nll_net_unnested"] <= case["nll_auto"] + 1.0
                else:
                    case["reached_unnested"] = case["crit_net_unnested"] <= case["crit_auto"] + 1.0
            if args.common_grid and same and not args.auto_from:
                case.update(common_grid_nll(results["net"], results["auto"], args.common_steps))
                case["reached"] = case["nll_net_common"] <= case["nll_auto_common"] + 1.0
            else:
                case["reached"] = case["reached_own_grid"]
            cases.append(case)
            warm = (
                f"; compiled: net {case['t_net_warm']:.1f} s, multi-start {case['t_auto_warm']:.1f} s"
                if args.warm
                else ""
            )
            common = (
                f"; common grid: net {case['nll_net_common']:.1f}, multi-start {case['nll_auto_common']:.1f}"
                if "nll_net_common" in case
                else ""
            )
            if every:
                common += f"; chosen: net {case['class_net']}, multi-start {case['class_auto']}"
                if case["net_added"]:
                    common += (
                        f"; nested added {case['net_added']} ({case['net_added_s']:.1f} s; without them: "
                        f"{case['class_net_unnested']}, reached {case['reached_unnested']})"
                    )
            print(
                f"fit {cls}: net NLL {case['nll_net']:.1f} ({case['t_net']:.1f} s), multi-start "
                f"{case['nll_auto']:.1f} ({case['t_auto']:.1f} s){warm}{common}",
                flush=True,
            )
            with open(args.out + ".partial", "w") as f:  # so an interrupted run keeps what it has
                json.dump({**report, "fit_cases": cases}, f, indent=1)
        if cases:
            report["fits"] = {
                "cases": cases,
                "fraction_reached": float(np.mean([k["reached"] for k in cases])),
                "fraction_reached_own_grid": float(np.mean([k["reached_own_grid"] for k in cases])),
                "median_t_net": float(np.median([k["t_net"] for k in cases])),
                "median_t_auto": float(np.median([k["t_auto"] for k in cases])),
                "total_t_net": float(np.sum([k["t_net"] for k in cases])),
                "total_t_auto": float(np.sum([k["t_auto"] for k in cases])),
            }
            if args.warm:
                for key in ("net", "auto"):
                    report["fits"][f"median_t_{key}_warm"] = float(
                        np.median([k[f"t_{key}_warm"] for k in cases])
                    )
                    report["fits"][f"total_t_{key}_warm"] = float(np.sum([k[f"t_{key}_warm"] for k in cases]))
            by: dict[str, list] = {}
            for k in cases:
                by.setdefault(k["class"], []).append(k["reached"])
            report["fits"]["reached_by_class"] = {c: [int(sum(v)), len(v)] for c, v in by.items()}
            if every:
                for key in ("net", "auto"):
                    report["fits"][f"class_right_{key}"] = int(
                        sum(k[f"class_{key}"] == k["class"] for k in cases)
                    )
                report["fits"]["fraction_reached_unnested"] = float(
                    np.mean([k["reached_unnested"] for k in cases])
                )
                report["fits"]["total_t_net_added"] = float(np.sum([k["net_added_s"] for k in cases]))
    report["wall_s"] = time.perf_counter() - t_all
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for k in ("all", "sim", "mie", "evalset"):
        if k in report["network"]:
            s = report["network"][k]
            print(
                f"  {k}: n {s['n']}, median {s['size_err_median']:.3f}, p90 {s['size_err_p90']:.3f}, acc {s['class_accuracy']:.2f}"
            )
            if "harmonics" in s:
                h = s["harmonics"]
                print(
                    f"    harmonics: n {h['n']}, rms radius error median {h['sh_rms_err']['median']:.3f} "
                    f"(sphere {h['sh_rms_sphere']['median']:.3f}), IoU median {h['iou']['median']:.3f} "
                    f"(sphere {h['iou_sphere']['median']:.3f}), IoU >= 0.9 {h['iou_ge_0.9']:.2f} "
                    f"(sphere {h['iou_sphere_ge_0.9']:.2f})"
                )
            for c, o in s.get("orientation_deg", {}).items():
                print(
                    f"    orientation {c}: n {o['n']}, median {o['median']:.1f} deg (chance {o['chance_median']:.1f}), "
                    f"p90 {o['p90']:.1f}, within 10 deg {o['within_10deg']:.2f}"
                )
    if "fits" in report:
        f = report["fits"]
        print(
            f"fits: reached {f['fraction_reached']:.2f} (own grids: {f['fraction_reached_own_grid']:.2f}); median time net {f['median_t_net']:.1f} s, multi-start {f['median_t_auto']:.1f} s"
        )
        print(f"  reached by class: {f['reached_by_class']}")
        if "median_t_net_warm" in f:
            print(
                f"  compiled: median net {f['median_t_net_warm']:.1f} s, multi-start {f['median_t_auto_warm']:.1f} s; "
                f"total {f['total_t_net_warm']:.0f} / {f['total_t_auto_warm']:.0f} s"
            )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
