"""Retrieval benchmark: `fitting.fit_auto` over the evaluation set (`fitting.evaluation_set`).

python benchmarks/bench_retrieval.py [--n 4] [--size 64] [--families harmonics,ellipsoid,polyhedra]
    [--candidates Sphere,Ellipsoid,SphericalHarmonics,Cube,...] [--lmax 4] [--quick] [--seed 0] [--x64]
    [--cache-dir DIR] [--no-split] [--coarse N] [--init default|MODEL] [--class-network M] [--network-min-prob P]
    [--sh-route compact_all|ladder|...]

Per pattern: fit_auto with the candidates, then the IoU of the chosen shape against the truth (best over the
twins, `fitting.iou`), the size error (volume-equivalent radius), for ellipsoids the sorted semi-axes error, and
whether the chosen class is the truth's (harmonic truths count as right when "SphericalHarmonics" is chosen).
Time per pattern is split into compile and run: the first pattern of each family is fitted twice; the second
call finds every function compiled (same pattern, so the same voxel grids), so compile = t(first call) -
t(second call) and run = t(second call). Later patterns reuse the compiled steps when their size falls on
the same rung of the grid ladder (`fitting.ladder_grid`), else they compile too. Success: IoU >= 0.9.
"loss - truth's": the chosen fit's data loss minus the TRUE shape's (`truth_loss`): >> 0 means the search
missed the truth's basin, <= 0 that the data cannot tell the two apart (an information, not a search, limit).
`--coarse N`: `fit_auto(coarse=N)` (1: every stage at full resolution; default: the drivers' default, the
multi-resolution ladder on the low-q crop). The CPU time per pattern (process user + system) is printed too.
`--quick`: 48^2 detector, sizes 3-5 wavelengths, 2 shapes per family, few optimiser steps.
`--init`: network-started fits (`fit_auto(init=...)`); `--network-min-prob P`: polyhedra the network gives a
probability below P are not fitted (the time a good class head saves, and the classes a bad one loses);
`--class-network M --network-min-prob P`: the same pruning, the usual no-guess searches on the kept classes.
Ellipsoid truths also get each axis's direction error and its Laplace sigma (`dir_err`, `dir_sigma`, computed
after the timed fit). `--oracle N`: N fresh Poisson draws of each ellipsoid truth's expected counts, each
fitted from the truth itself; their hit rate (2 %, 2 deg) is the information limit of the set: what a perfect
search would reach at these photon counts and axis contrasts.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def _dump(path, rows, args, oracle=None):
    """Write the rows so far (JSON, atomically: a killed run keeps its finished patterns)."""
    import json
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"args": args, "rows": rows, "oracle": oracle or []}, f, indent=1, default=float)
    os.replace(tmp, path)


def axis_errors(truth, model) -> tuple[float, float, list[float]]:
    """(largest relative semi-axis error, largest axis-direction error [deg], per-axis direction errors
    shortest axis first): `fitting.ellipsoid_axis_errors`."""
    import fitting

    lengths, dirs = fitting.ellipsoid_axis_errors(truth, model)
    return float(np.max(np.abs(lengths))), float(np.max(dirs)), dirs.tolist()


def axes_ok(row: dict) -> bool:
    """Issue 13's ellipsoid criterion: every semi-axis within 2 % and every axis direction within 2 deg."""
    return row["axis_err"] <= 0.02 and row.get("axis_deg", np.inf) <= 2.0


def ellipsoid_sigmas(counts, experiment, mask, model) -> tuple[np.ndarray, np.ndarray]:
    """Laplace sigmas of a fitted ellipsoid (outside the timed fit: one polishing step and the Hessian):
    `fitting.ellipsoid_axis_sigmas`, shortest axis first."""
    import fitting

    res = fitting.fit(counts, experiment, model, mask, free=("semi_axes", "orientation"), max_steps=1)
    return fitting.ellipsoid_axis_sigmas(res)


def oracle_rows(es, n_draws: int, seed: int = 0) -> list[dict]:
    """The information limit of each ellipsoid truth: `n_draws` fresh Poisson draws of its expected counts,
    each fitted by `fitting.fit` STARTED AT THE TRUTH (semi-axes and orientation free, delta and beta at
    the truth's). No search can do better than a local fit from the truth, so the fraction of these fits
    within 2 % / 2 deg bounds what any retrieval reaches on the set at its photon counts."""
    import fitting

    rows = []
    for p in es:
        t = p.truth
        if t["class"] != "Ellipsoid":
            continue
        truth = p.truth_shape()
        rng = np.random.default_rng([seed, 7919, t["index"]])
        for k in range(int(n_draws)):
            counts = rng.poisson(p.expected).astype(float)
            res = fitting.fit(
                counts, es.experiment, truth, p.mask, free=("semi_axes", "orientation"), uncertainties=False
            )
            axis_err, axis_deg, _ = axis_errors(truth, res.model)
            rows.append(
                dict(
                    family=t["family"],
                    index=t["index"],
                    draw=k,
                    axis_err=axis_err,
                    axis_deg=axis_deg,
                    photons=t["photons"],
                )
            )
            r = rows[-1]
            print(
                f"oracle {t['index']:3d} draw {k}: axes {100 * r['axis_err']:.2f} %, directions {r['axis_deg']:.2f} deg",
                flush=True,
            )
    return rows


def summarise_oracle(oracle: list[dict], rows: list[dict]) -> None:
    """Per ellipsoid truth: the oracle's hit rate (2 %, 2 deg) beside the retrieval's result."""
    if not oracle:
        return
    fits = {r["index"]: r for r in rows if r["truth"] == "Ellipsoid"}
    print()
    print("ellipsoid truths: retrieval against the oracle (local fits from the truth on fresh noise draws)")
    print(
        "index  photons  R_eq   axis-length gaps %   retrieval: axes %  dir deg  dir sigma deg  ok   oracle ok  dir deg med/max"
    )
    hits = []
    for i in sorted({o["index"] for o in oracle}):
        os_ = [o for o in oracle if o["index"] == i]
        ok = [axes_ok(o) for o in os_]
        hits += ok
        deg = np.array([o["axis_deg"] for o in os_])
        r = fits.get(i)
        if r is not None:
            sig = r.get("dir_sigma")
            fit_txt = (
                f"{100 * r['axis_err']:6.2f}  {r['axis_deg']:6.2f}  "
                f"{(max(sig) if sig else float('nan')):6.2f}         {axes_ok(r)!s:5s}"
            )
            ta = np.asarray(r.get("truth_axes", [np.nan] * 3), float)
            gaps = 100 * np.diff(ta) / ta[:2]
            head = f"{i:5d}  {r['photons']:.1e}  {r['radius_eq']:5.2f}  {gaps[0]:6.1f} {gaps[1]:6.1f}"
        else:
            fit_txt, head = "        -       -       -          -    ", f"{i:5d}"
        print(
            f"{head}           {fit_txt}  {sum(ok)}/{len(ok)}      {np.median(deg):5.2f}/{np.max(deg):5.2f}"
        )
    ell = [r for r in rows if r["truth"] == "Ellipsoid" and r["index"] in {o["index"] for o in oracle}]
    reached = np.mean([axes_ok(r) for r in ell]) if ell else np.nan
    print(
        f"within 2 % and 2 deg: retrieval {reached:.2f} of {len(ell)} patterns; oracle {np.mean(hits):.2f} "
        f"of {len(hits)} fits from the truth"
    )


def _params(model) -> dict:
    """The fitted shape's parameters (JSON-able)."""
    out = {"class": type(model).__name__}
    for k in ("radius", "semi_axes", "coefficients", "edge", "exponents", "rotation"):
        v = getattr(model, k, None)
        if v is not None and not callable(v):  # SphericalHarmonics.radius is a method (r(direction))
            out[k] = np.asarray(v, float).tolist()
    return out


def truth_loss(truth, experiment, counts, mask) -> float:
    """The fits' data loss (Poisson deviance, scale profiled, same forward model at the default pitch) of the
    TRUE shape. Fit loss well above it: the optimiser missed the truth's basin; at or below it: the pattern
    (noise, model error) cannot tell the fit from the truth."""
    import diffscat as ds
    import fitting

    grid = ds.VoxelGrid.around(
        1.3 * float(np.asarray(truth.bounding_radius())), ds.default_pitch(*experiment.sampling_hint)
    )
    sig = fitting.expected_signal(truth, experiment, grid)
    return float(fitting.poisson_nll(sig, counts, mask))


def summarise(rows: list[dict], fams) -> None:
    """Print the per-family table of the rows (also `--from-json FILE`)."""
    print()
    print(
        "family     n  success(IoU>=0.9)  class-ok  IoU med/p10  size err med/p90 %  axis err med/p90 %  "
        "axis dir med/p90 deg  axes ok(2%,2deg)  time med/max s  missed(loss>truth+10)"
    )
    for fam in tuple(fams) + ("all",):
        rs = [r for r in rows if fam in ("all", r["family"])]
        if not rs:
            continue
        iou = np.array([r["iou"] for r in rs])
        se = 100 * np.array([r["size_err"] for r in rs])
        ae = 100 * np.array([r["axis_err"] for r in rs], float)
        ad = np.array([r.get("axis_deg", np.nan) for r in rs], float)
        ell = [r for r in rs if r["truth"] == "Ellipsoid"]
        frac_ok = np.mean([axes_ok(r) for r in ell]) if ell else np.nan
        tt = np.array([r["time"] for r in rs])
        ok = np.mean([r["right"] for r in rs])
        missed = np.mean([r.get("fit_loss", np.nan) - r.get("truth_loss", np.nan) > 10 for r in rs])

        def mp(x, q=90):
            x = x[np.isfinite(x)]
            return f"{np.median(x):6.2f}/{np.percentile(x, q):6.2f}" if x.size else "     -/     -"

        print(
            f"{fam:9s} {len(rs):2d}  {np.mean(iou >= 0.9):17.2f}  {ok:8.2f}  "
            f"{np.median(iou):.3f}/{np.percentile(iou, 10):.3f}  {mp(se)}     {mp(ae)}       {mp(ad)}"
            f"            {frac_ok:.2f}    {np.median(tt):6.1f}/{np.max(tt):6.1f}  {missed:.2f}"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="shapes per family (polyhedra: classes x orientations)")
    ap.add_argument("--n-ellipsoids", type=int, default=None, help="ellipsoids (default: --n)")
    ap.add_argument(
        "--poly-candidates", default=None, help="candidates for polyhedron truths (default: --candidates)"
    )
    ap.add_argument("--json", default=None, help="write the per-pattern rows to this JSON file")
    ap.add_argument("--size", type=int, default=64, help="detector pixels per side (QGrid, 30 deg)")
    ap.add_argument("--families", default="harmonics,ellipsoid,polyhedra")
    ap.add_argument("--candidates", default="Sphere,Ellipsoid,SphericalHarmonics,Cube,Octahedron,Icosahedron")
    ap.add_argument("--polyhedra", default="Cube,Octahedron,Icosahedron")
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument("--sizes", default="3,10", help="volume-equivalent radius range, wavelengths")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--x64", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-split", action="store_true", help="skip the second call that splits compile / run")
    ap.add_argument("--coarse", type=int, default=None, help="coarse= for fit_auto (default: its own)")
    ap.add_argument("--from-json", default=None, help="print the table of a --json file and exit")
    ap.add_argument(
        "--init", default=None, help='fit_auto(init=...): "default" (the shipped network) or a model path'
    )
    ap.add_argument(
        "--class-network",
        default=None,
        help="fit_auto(class_network=...): a network used only to prune polyhedra (with --network-min-prob)",
    )
    ap.add_argument(
        "--network-min-prob",
        type=float,
        default=None,
        help="with --init: fit_auto(network_min_prob=...): polyhedra below this network probability not fitted",
    )
    ap.add_argument(
        "--sh-route",
        default=None,
        help="fit_auto(sh_route=...): the harmonic stage's route (fitting.ESCAPE_ROUTES; default: the driver's)",
    )
    ap.add_argument(
        "--oracle",
        type=int,
        default=0,
        help="ellipsoid truths: also fit N fresh noise draws of each from the truth (the information limit)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="with --json: keep the rows already in the file and fit only the patterns it lacks (a killed run)",
    )
    a = ap.parse_args(argv)
    if a.from_json:
        import json

        with open(a.from_json) as f:
            saved = json.load(f)
        rows = saved["rows"]
        summarise(rows, dict.fromkeys(r["family"] for r in rows))
        summarise_oracle(saved.get("oracle", []), rows)
        return
    import jax

    if a.x64:
        jax.config.update("jax_enable_x64", True)
    import fitting

    if a.quick:
        a.size, a.n, a.sizes, a.max_steps = 48, 2, "3,5", 40
    lo, hi = (float(v) for v in a.sizes.split(","))
    fams = tuple(a.families.split(","))
    polys = tuple(a.polyhedra.split(","))
    cands = tuple(a.candidates.split(","))
    poly_cands = cands if a.poly_candidates is None else tuple(a.poly_candidates.split(","))
    t0 = time.perf_counter()
    es = fitting.evaluation_set(
        a.seed,
        families=fams,
        n_harmonics=a.n,
        n_ellipsoids=a.n if a.n_ellipsoids is None else a.n_ellipsoids,
        polyhedra=polys,
        n_orientations=max(1, math.ceil(a.n / len(polys))),
        n_pixels=a.size,
        size_range=(lo, hi),
        cache_dir=a.cache_dir,
    )
    if "polyhedra" in fams:
        keep = [p for p in es.patterns if p.truth["family"] != "polyhedra"] + es.family("polyhedra")[: a.n]
        es.patterns = keep
    print(f"evaluation set: {len(es)} patterns, {a.size}^2, generated in {time.perf_counter() - t0:.1f} s")
    print(
        f"candidates: {cands} (polyhedra: {poly_cands}), lmax {a.lmax}, max_steps {a.max_steps}, x64 {a.x64}, coarse {a.coarse}, sh_route {a.sh_route}"
    )
    rows = []
    if a.resume:
        import json
        import os

        if not a.json:
            ap.error("--resume needs --json")
        if os.path.exists(a.json):
            with open(a.json) as f:
                rows = json.load(f)["rows"]
            print(f"resuming: {len(rows)} pattern(s) already in {a.json}")
    done = {(r["family"], r.get("index")) for r in rows}
    split = {}

    def run(p):
        from fitting._jitmem import release_jit_memory

        release_jit_memory()  # long runs: stay under vm.max_map_count (fitting/_jitmem.py)
        t = p.truth
        t1, c1 = time.perf_counter(), time.process_time()
        extra = {} if a.coarse is None else {"coarse": a.coarse}
        if a.sh_route is not None:
            extra["sh_route"] = a.sh_route
        if a.init is not None:
            extra |= {"init": a.init, "network_min_prob": a.network_min_prob}
        if a.class_network is not None:
            extra |= {"class_network": a.class_network, "network_min_prob": a.network_min_prob}
        res = fitting.fit_auto(
            p.counts,
            es.experiment,
            poly_cands if t["family"] == "polyhedra" else cands,
            p.mask,
            delta=t["delta"],
            beta=t["beta"],
            lmax=a.lmax,
            max_steps=a.max_steps,
            uncertainties=False,
            seed=t["index"],
            **extra,
        )
        return res, time.perf_counter() - t1, time.process_time() - c1

    for p in es:
        t = p.truth
        if (t["family"], t["index"]) in done:
            continue
        res, dt, cpu = run(p)
        if t["family"] not in split and not a.no_split:
            _, dt2, _ = run(p)
            split[t["family"]] = (dt, dt2)
        truth = p.truth_shape()
        iou = fitting.iou(truth, res.model)
        chosen = res.ranking[0][0]
        r_fit = (3 * float(np.asarray(res.model.volume())) / (4 * math.pi)) ** (1 / 3)
        size_err = abs(r_fit / t["radius_eq"] - 1)
        axis_err = axis_deg = np.nan
        ell_extra = {}
        if t["class"] == "Ellipsoid" and chosen == "Ellipsoid":
            axis_err, axis_deg, dir_err = axis_errors(truth, res.model)
            sig_a, sig_d = ellipsoid_sigmas(p.counts, es.experiment, p.mask, res.model)
            ell_extra = dict(
                truth_axes=np.sort(np.asarray(t["params"]["semi_axes"], float)).tolist(),
                dir_err=dir_err,
                dir_sigma=sig_d.tolist(),
                axes_sigma=sig_a.tolist(),
            )
        rows.append(
            dict(
                family=t["family"],
                index=t["index"],
                truth=t["class"],
                chosen=chosen,
                right=chosen == t["class"],
                iou=iou,
                size_err=size_err,
                axis_err=axis_err,
                axis_deg=axis_deg,
                model=_params(res.model),
                time=dt,
                cpu_s=cpu,
                compile_s=res.compile_s,
                radius_eq=t["radius_eq"],
                photons=t["photons"],
                delta=t["delta"],
                beta=t["beta"],
                ranking=[(n, float(c)) for n, _, _, c in res.ranking],
                pruned=[(n, float(r)) for n, r in (res.pruned or [])],
                network_pruned=[(n, float(q)) for n, q in (res.network_pruned or [])],
                fit_loss=float(res.ranking[0][1]),
                truth_loss=truth_loss(truth, es.experiment, p.counts, p.mask),
                **ell_extra,
            )
        )
        if a.json:
            _dump(a.json, rows, vars(a))
        print(
            f"{t['family']:9s} {t['class']:19s} R={t['radius_eq']:5.2f} ph={t['photons']:.1e} -> {chosen:19s} "
            f"IoU {iou:.3f} size {100 * size_err:5.2f} % loss - truth's {rows[-1]['fit_loss'] - rows[-1]['truth_loss']:+.0f} time {dt:6.1f} s CPU {cpu:6.1f} s ranking "
            + ", ".join(f"{n}:{c:.0f}" for n, _, _, c in res.ranking)
            + (" pruned " + ", ".join(f"{n}:{r:.2f}x" for n, r in res.pruned) if res.pruned else "")
        )
    summarise(rows, fams)
    oracle = oracle_rows(es, a.oracle, a.seed) if a.oracle > 0 else []
    if oracle:
        if a.json:
            _dump(a.json, rows, vars(a), oracle)
        summarise_oracle(oracle, rows)
    for fam, (t1, t2) in split.items():
        print(f"{fam}: first pattern {t1:.1f} s = compile {t1 - t2:.1f} s + run {t2:.1f} s (second call)")


if __name__ == "__main__":
    main()
