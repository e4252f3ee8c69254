"""Network-started fits against multi-start fits, pattern by pattern, on a large independent-path set: resumable.

Issue 17 asks for the comparison on >= 500 held-out patterns: does the network-started refinement reach the
multi-start optimum (>= 98 %), and in how much less time (>= 5x)? On a 2-core CPU that is hours of fits, more
than one sitting, so this benchmark appends one JSON line per pattern to `--out` and, run again with the same
arguments, continues where it stopped (`--budget-min` bounds one sitting). Unlike `bench_network.py` (cold
fits, each class compiling in the timed call) this is a dataset run: one process, the programs compiled once
and reused, as in `diffscat batch-fit`.

Patterns: `fitting.evaluation_set` (supersampled box-averaged occupancy, float64 exact slice sum: not the
fitting renderer), harmonic bodies (l <= 4), triaxial ellipsoids and the named polyhedra at a 64^2 QGrid up to
30 deg (the shipped network's input), sizes 3-10 wavelengths, 1e5-1e7 photons, 2 deg beamstop. Classes are
interleaved so that a partial run samples them in proportion.

Per pattern, the true class as the only candidate, delta and beta at the truth, on both paths:
- network: `fitting.fit_auto(..., init=network)` (its starts and refinement, with its escape routes);
- multi-start: `fitting.fit_auto(...)` without a guess (the searches and ladders of docs/fitting.md).
The order of the two alternates from pattern to pattern. Reached: the network path's data NLL within 1 unit of
the multi-start's or lower (each on its own voxel grid; where that says "missed", both optima are also polished
on one common grid, `bench_network.common_grid_nll`, and that comparison decides).

    python benchmarks/bench_network_ab.py --n-harmonics 300 --n-ellipsoids 100 --poly-orientations 17 \
        --out benchmarks/results/network_ab.jsonl --budget-min 100     # again later: continues
    python benchmarks/bench_network_ab.py ... --report                   # the tables only
    python benchmarks/bench_network_ab.py ... --redo harmonics:45         # a pattern again (new code)

The set is simulated once (~1.5 s per pattern on 2 cores, 13 min for the 502 above), in a child process
(the reference simulations leave ~20 GB of heap in use), and cached in `--cache-dir`. Its reference simulation of the largest polyhedra needs ~2.1 GiB (a 261^3 supersampled grid),
above the default memory budget on a machine with 4 GiB free: raise it, e.g. `DIFFSCAT_MEMORY_BUDGET=12GiB`.
`--candidates all`: every class of the model on both paths (class selection; the network path prunes with
`network_min_prob=0.05`, `network_prune="all"`); classes chosen differently then compare by BIC within 1 unit.
CPU timings depend on the machine's load: run it alone and say so when quoting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fitting  # noqa: E402

REACH_TOL = 1.0  # NLL units
WARMUP = 10  # patterns excluded from the "compiled" time sums (they compile most programs)


def ordered(es) -> list:
    """The set's patterns, classes interleaved in proportion (k-th of n at position (k + 0.5) / n), so that a
    partial run samples every class (the polyhedra family lists its classes one after the other)."""
    by: dict[str, list] = {}
    for p in es:
        by.setdefault(p.truth["class"], []).append(p)
    keyed = [((k + 0.5) / len(ps), f, k, p) for f, ps in by.items() for k, p in enumerate(ps)]
    return [x[-1] for x in sorted(keyed, key=lambda x: x[:3])]


def key_of(p) -> str:
    return f"{p.truth['family']}:{p.truth['index']}"


def done_keys(path: str, set_id: str) -> dict[str, dict]:
    """The rows already in `path` of the evaluation set `set_id`."""
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: the pattern runs again
                        continue
                    if r.get("set") == set_id:
                        rows[r["key"]] = r
    return rows


def code_version() -> str:
    """The repository's commit (short hash, "+dirty" with uncommitted changes; "unknown" outside git): which
    code a row was measured with, as the comparison spans sessions."""
    import subprocess

    def git(*a):
        return subprocess.run(
            ["git", *a], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "../fitting", "../diffscat")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def append(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_pattern(p, exp, net, i: int, lmax: int, set_id: str, every: tuple | None = None) -> dict:
    t = p.truth
    cls = t["class"]
    kw = dict(delta=float(t["delta"]), beta=float(t["beta"]), uncertainties=False, seed=i)
    cands = (cls,) if every is None else every
    if "SphericalHarmonics" in cands:
        kw["lmax"] = int(lmax)
    truth = p.truth_shape()
    row = {
        "key": key_of(p),
        "set": set_id,
        "position": i,
        "family": t["family"],
        "class": cls,
        "radius_eq": t["radius_eq"],
    }
    row["photons"] = float(t["photons"])
    results = {}
    prune = {} if every is None else dict(network_min_prob=0.05, network_prune="all")
    paths = [("net", dict(init=net, **prune)), ("auto", {})]
    if i % 2:
        paths = paths[::-1]
    for name, extra in paths:
        t0 = time.perf_counter()
        try:
            r = fitting.fit_auto(p.counts, exp, cands, p.mask, **kw, **extra)
        except Exception as e:  # noqa: BLE001 - a benchmark records the failure and goes on
            row[f"error_{name}"] = f"{type(e).__name__}: {e}"
            row[f"t_{name}"] = time.perf_counter() - t0
            continue
        row[f"t_{name}"] = time.perf_counter() - t0
        row[f"nll_{name}"] = float(fitting.data_loss(r))
        row[f"loss_{name}"] = float(r.loss)
        row[f"class_{name}"] = type(r.model).__name__
        row[f"iou_{name}"] = float(fitting.iou(truth, r.model))
        row[f"size_err_{name}"] = float(
            np.asarray(r.model.volume()) ** (1 / 3) / np.asarray(truth.volume()) ** (1 / 3) - 1
        )
        # the routes the harmonic stage ran beyond its first (a misfit by the noise test: z > escape_z),
        # and the fit's stages: where a slow pattern's time went
        row[f"escapes_{name}"] = [str(e[0]) for e in (r.escapes or [])]
        # the noise test's z of the kept fit (fitting.noise_consistency; the escapes run above escape_z)
        row[f"z_{name}"] = float(fitting.noise_consistency(r)[0])
        row[f"steps_{name}"] = int(sum(st.n_steps for st in (r.stages or [r])))
        results[name] = r
    row["first"] = paths[0][0]
    if len(results) == 2 and every is not None and row["class_net"] != row["class_auto"]:
        # class selection (--candidates all): other classes compare by the selection criterion (BIC)
        crit = {k: float(r.ranking[0][3]) for k, r in results.items()}  # fit_auto's (class, loss, k, BIC)
        row["dcrit"] = crit["net"] - crit["auto"]
        row["dnll"] = row["nll_net"] - row["nll_auto"]
        row["reached_own_grid"] = row["reached"] = row["dcrit"] <= REACH_TOL
    elif len(results) == 2:
        row["dnll"] = row["nll_net"] - row["nll_auto"]
        row["reached_own_grid"] = row["dnll"] <= REACH_TOL
        row["reached"] = row["reached_own_grid"]
        if not row["reached_own_grid"]:
            from bench_network import common_grid_nll

            c = common_grid_nll(results["net"], results["auto"])
            row |= c
            row["reached"] = c["nll_net_common"] <= c["nll_auto_common"] + REACH_TOL
    return row


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    ph = k / n
    d = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / d
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "reached" in r]
    out: dict = {
        "n": len(rows),
        "n_compared": len(ok),
        "errors": [r["key"] for r in rows if "reached" not in r],
    }
    groups = {"all": ok}
    for r in ok:
        groups.setdefault(r["class"], []).append(r)
    for g, rs in groups.items():
        if not rs:
            continue
        k = sum(bool(r["reached"]) for r in rs)
        tn = np.array([r["t_net"] for r in rs])
        ta = np.array([r["t_auto"] for r in rs])
        warm = [r for r in rs if r["position"] >= WARMUP]
        wn = sum(r["t_net"] for r in warm)
        wa = sum(r["t_auto"] for r in warm)
        out[g] = {
            "n": len(rs),
            "reached": k,
            "reached_own_grid": sum(bool(r["reached_own_grid"]) for r in rs),
            "reached_wilson95": wilson(k, len(rs)),
            "t_net_sum": float(tn.sum()),
            "t_auto_sum": float(ta.sum()),
            "ratio_sum": float(ta.sum() / tn.sum()),
            "ratio_sum_after_warmup": float(wa / wn) if wn > 0 else math.nan,
            "ratio_median": float(np.median(ta / tn)),
            "t_net_median": float(np.median(tn)),
            "t_auto_median": float(np.median(ta)),
            "iou_net_median": float(np.median([r["iou_net"] for r in rs])),
            "iou_auto_median": float(np.median([r["iou_auto"] for r in rs])),
            "iou_net_p10": float(np.percentile([r["iou_net"] for r in rs], 10)),
            "iou_auto_p10": float(np.percentile([r["iou_auto"] for r in rs], 10)),
            "size_err_net_median": float(np.median([abs(r["size_err_net"]) for r in rs])),
            "misses": [(r["key"], round(r["dnll"], 2)) for r in rs if not r["reached"]],
            "net_lower_by_1": sum(r["dnll"] < -REACH_TOL for r in rs),
        }
    return out


def print_summary(s: dict) -> None:
    print(f"patterns {s['n']} (compared {s['n_compared']}; errors {s['errors']})")
    hdr = "| class | n | reached (own grids) | 95 % interval | time net / multi-start (sum) | ratio sum (after warm-up) | median ratio | medians net / ms [s] | IoU median net / ms | IoU p10 net / ms |"
    print(hdr)
    print("|" + " --- |" * 10)
    for g, v in s.items():
        if not isinstance(v, dict):
            continue
        lo, hi = v["reached_wilson95"]
        print(
            f"| {g} | {v['n']} | {v['reached']} ({v['reached_own_grid']}) | {lo:.3f}-{hi:.3f} | "
            f"{v['t_net_sum']:.0f} / {v['t_auto_sum']:.0f} s | {v['ratio_sum']:.2f}x ({v['ratio_sum_after_warmup']:.2f}x) | "
            f"{v['ratio_median']:.2f}x | {v['t_net_median']:.1f} / {v['t_auto_median']:.1f} | "
            f"{v['iou_net_median']:.3f} / {v['iou_auto_median']:.3f} | {v['iou_net_p10']:.3f} / {v['iou_auto_p10']:.3f} |"
        )
    for g, v in s.items():
        if isinstance(v, dict) and v["misses"]:
            print(f"  {g}: misses (key, NLL net - multi-start, own grids) {v['misses']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=1717, help="evaluation-set seed (held out: not 12345 / 0)")
    ap.add_argument("--n-harmonics", type=int, default=300)
    ap.add_argument("--n-ellipsoids", type=int, default=100)
    ap.add_argument(
        "--poly-orientations",
        type=int,
        default=17,
        help="orientations per named polyhedron (502 patterns in all)",
    )
    ap.add_argument("--polyhedra", default=",".join(fitting.POLYHEDRA))
    ap.add_argument("--size", type=int, default=64, help="pixels per axis of the QGrid (30 deg)")
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument(
        "--candidates",
        choices=("true", "all"),
        default="true",
        help="the true class only (the refinement comparison), or every class of the model on both paths (class "
        "selection too; the network path then prunes with network_min_prob=0.05, network_prune='all')",
    )
    ap.add_argument(
        "--rss-budget-mib", type=float, default=6000.0, help="clear jax's caches between patterns above"
    )
    ap.add_argument("--limit", type=int, default=None, help="at most this many patterns in all")
    ap.add_argument(
        "--budget-min", type=float, default=None, help="start no new pattern after this many minutes"
    )
    ap.add_argument("--cache-dir", default=os.path.join(HERE, "results", "evalset-cache"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "network_ab.jsonl"))
    ap.add_argument(
        "--report", action="store_true", help="print the tables of --out (this set's rows) and exit"
    )
    ap.add_argument(
        "--redo",
        default="",
        help="comma-separated keys (e.g. harmonics:45) run again although --out has them; a key's newest row is "
        "the one reported (the older rows stay in the file)",
    )
    ap.add_argument("--generate-only", action="store_true", help="make (or load) the set and exit")
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    families = [f for f, n in (("harmonics", args.n_harmonics), ("ellipsoid", args.n_ellipsoids)) if n > 0]
    poly = tuple(x for x in args.polyhedra.split(",") if x) if args.poly_orientations > 0 else ()
    if poly:
        families.append("polyhedra")
    if not args.generate_only:
        # the set in a child process: the reference simulations leave ~20 GB of this process's heap in use
        # (502 patterns, 2-core CPU), which the fits would then run beside; here the set is only loaded
        import subprocess

        subprocess.run(
            [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]), "--generate-only"],
            check=True,
        )
    es = fitting.evaluation_set(
        args.seed,
        families=tuple(families),
        n_harmonics=args.n_harmonics,
        n_ellipsoids=args.n_ellipsoids,
        polyhedra=poly or ("Cube",),
        n_orientations=max(args.poly_orientations, 1),
        n_pixels=args.size,
        cache_dir=args.cache_dir,
    )
    print(f"evaluation set: {len(es)} patterns ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if args.generate_only:
        return
    pats = ordered(es)
    if args.limit is not None:
        pats = pats[: args.limit]
    net = fitting.load_network(args.model)
    from fitting._evalset import settings_key

    # rows of another set (other arguments) in --out are neither counted nor reported
    set_id = settings_key(es.config | {"candidates": args.candidates})
    done = done_keys(args.out, set_id)
    if args.report:
        todo = []
    else:
        redo = {k for k in args.redo.split(",") if k}
        unknown = redo - {key_of(p) for p in pats}
        if unknown:
            raise SystemExit(f"--redo: no such pattern in this set: {sorted(unknown)}")
        todo = [(i, p) for i, p in enumerate(pats) if key_of(p) not in done or key_of(p) in redo]
        print(f"{len(done)} done, {len(todo)} to go ({len(redo)} again)", flush=True)
    commit = code_version()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from fitting._jitmem import release_jit_memory

    every = None if args.candidates == "true" else tuple(net.classes)
    cleared = False
    for i, p in todo:
        if args.budget_min is not None and time.perf_counter() - t_start > 60 * args.budget_min:
            print("budget spent: run again to continue", flush=True)
            break
        row = run_pattern(p, es.experiment, net, i, args.lmax, set_id, every)
        row["candidates"] = args.candidates
        row["cleared_before"] = cleared
        row["commit"] = commit
        cleared = release_jit_memory(verbose=False, rss_budget_mib=args.rss_budget_mib)
        append(args.out, row)
        done[row["key"]] = row
        print(
            f"{i:4d} {row['key']:18s} {row['class']:19s} net {row.get('t_net', math.nan):6.1f} s "
            f"ms {row.get('t_auto', math.nan):6.1f} s  dNLL {row.get('dnll', math.nan):+8.2f} "
            f"IoU {row.get('iou_net', math.nan):.3f}/{row.get('iou_auto', math.nan):.3f} "
            f"reached {row.get('reached')}",
            flush=True,
        )
    s = summary(list(done.values()))
    print_summary(s)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()
