"""An unattended dataset run, end to end through the CLI: simulate, batch-fit (killed once and resumed), score.

    python benchmarks/bench_dataset.py --n 500 --size 64 --out /tmp/dsrun          # 500 ellipsoids + 500 SH
    python benchmarks/bench_dataset.py --n 4 --size 32 --out /tmp/dsrun --init none # a quick trial

For each family (`configs/dataset-ellipsoids.toml` fitted by `configs/batch-ellipsoid.toml`, and
`configs/dataset-harmonics.toml` by `configs/batch-harmonics.toml`) it runs
`diffscat simulate CONFIG -o FAMILY.cxi --set dataset.count=N --set experiment.detector.n=SIZE`, then
`diffscat batch-fit` on it as a user would, in a subprocess: with `--kill-after S` the first run is killed
(SIGKILL) after S seconds and the job is finished by `--resume` (the run must not lose or repeat patterns).
`--init default` (the default) adds `[init] network = "default"` (network-started fits, through the per-pattern
path); `--init none` runs each config as shipped (configs/batch-ellipsoid.toml has the network start itself). Then the results are scored against the truth stored in the CXI file: status counts,
the volume-equivalent radius error, the IoU of the fitted shape with the truth (`fitting.iou`, best over the
twins), a success = status ok and IoU >= `--iou-ok`, and the time per pattern from `/results/time_s` (the
per-pattern path) or the wall time. Existing outputs in `--out` are reused (the simulation) or resumed (the
fit), so a stopped benchmark picks up where it was. Prints a table per family and writes `--out`/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FAMILIES = {
    "ellipsoids": ("configs/dataset-ellipsoids.toml", "configs/batch-ellipsoid.toml"),
    "harmonics": ("configs/dataset-harmonics.toml", "configs/batch-harmonics.toml"),
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffscat", *args]


def _simulate(family: str, a, path: str) -> None:
    if os.path.exists(path):
        return
    cfg = os.path.join(ROOT, FAMILIES[family][0])
    sets = [f"dataset.count={a.n}", f"experiment.detector.n={a.size}", f"dataset.seed={a.seed}"]
    cmd = _cli("simulate", cfg, "-o", path, *[x for s in sets for x in ("--set", s)])
    subprocess.run(cmd, check=True, cwd=ROOT)


def _fit(family: str, a, data: str, out: str) -> dict:
    cfg = os.path.join(ROOT, FAMILIES[family][1])
    sets = [] if a.init == "none" else [f'init.network="{a.init}"']
    if a.max_steps:
        sets.append(f"fit.max_steps={a.max_steps}")
    cmd = _cli("batch-fit", cfg, "--data", data, "-o", out, "--no-progress")
    cmd += [x for s in sets for x in ("--set", s)]
    info = {"kills": 0, "runs": 0}
    t0 = time.perf_counter()
    resume = os.path.exists(out + ".parts") or os.path.exists(out)
    first = True
    while True:
        c = cmd + (["--resume"] if resume else [])
        with open(out + ".log", "a") as log:
            p = subprocess.Popen(c, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        info["runs"] += 1
        try:
            kill = a.kill_after if first and a.kill_after else None
            rc = p.wait(timeout=kill)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            info["kills"] += 1
            print(f"{family}: killed after {a.kill_after:.0f} s; resuming", flush=True)
            first, resume = False, True
            continue
        if rc != 0:
            raise SystemExit(f"{family}: batch-fit exited {rc}; see {out}.log")
        break
    info["wall_s"] = time.perf_counter() - t0
    return info


def _truths(path: str) -> list:
    import diffscat as ds
    from diffscat.io._shape_io import read_shape_group, shape_from_dict

    with h5py.File(path, "r") as f:
        d = read_shape_group(f["entry_1/sample_1/truth/shape"])
        n = f["entry_1/data_1/data"].shape[0] if "entry_1/data_1/data" in f else None
    n = n if n is not None else len(next(v for v in d["fields"].values() if isinstance(v, np.ndarray)))
    out = [shape_from_dict(d, i) for i in range(n)]
    assert all(isinstance(s, ds.AbstractShape) for s in out)
    return out


def _fitted(res: dict, i: int):
    import diffscat as ds

    q = res.get("quaternion")
    if q is None or not np.all(np.isfinite(q[i])):
        return None
    R = np.asarray(ds.rotation_from_quaternion(np.asarray(q[i], float), normalise=True))
    if "coefficients" in res and np.all(np.isfinite(res["coefficients"][i])):
        return ds.SphericalHarmonics(np.asarray(res["coefficients"][i], float), rotation=R)
    if "semi_axes" in res and np.all(np.isfinite(res["semi_axes"][i])):
        return ds.Ellipsoid(np.asarray(res["semi_axes"][i], float), rotation=R)
    return None


def _score(family: str, data: str, out: str, info: dict, a) -> dict:
    import fitting

    res = fitting.read_results(out)
    truths = _truths(data)
    n = len(truths)
    status = np.asarray(res["status"])
    counts: dict[str, int] = {}
    for name in res["status_names"]:
        counts[name] = counts.get(name, 0) + 1
    ious, rerr = np.full(n, np.nan), np.full(n, np.nan)
    for i, t in enumerate(truths):
        fit = _fitted(res, i)
        r_t = (3 * float(np.asarray(t.volume())) / (4 * np.pi)) ** (1 / 3)
        if fit is not None:
            ious[i] = fitting.iou(t, fit, n=a.iou_n)
            r_f = (3 * float(np.asarray(fit.volume())) / (4 * np.pi)) ** (1 / 3)
            rerr[i] = abs(r_f / r_t - 1)
    ok = (status == 0) & (ious >= a.iou_ok)
    t = np.asarray(res["time_s"]) if "time_s" in res else None
    q = lambda x, p: float(np.nanpercentile(x, p)) if np.any(np.isfinite(x)) else float("nan")  # noqa: E731
    row = {
        "family": family,
        "patterns": n,
        "status": counts,
        f"success (ok and IoU >= {a.iou_ok:.2f})": int(ok.sum()),
        "success_rate": float(ok.mean()),
        "iou_median": q(ious, 50),
        "iou_p10": q(ious, 10),
        "iou_min": float(np.nanmin(ious)) if np.any(np.isfinite(ious)) else float("nan"),
        "radius_err_median": q(rerr, 50),
        "radius_err_p90": q(rerr, 90),
        "wall_s": info.get("wall_s"),
        "runs": info.get("runs"),
        "kills": info.get("kills"),
    }
    if t is not None and np.any(np.isfinite(t)):
        row["time_per_pattern_median_s"] = q(t, 50)
        row["time_per_pattern_p90_s"] = q(t, 90)
        row["patterns_per_s (steady, 1 / median)"] = 1.0 / q(t, 50)
    if info.get("wall_s"):
        row["patterns_per_s (wall, incl. compile)"] = n / info["wall_s"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="patterns per family")
    ap.add_argument("--size", type=int, default=64, help="QGrid pixels per side")
    ap.add_argument("--families", default="ellipsoids,harmonics")
    ap.add_argument("--out", required=True, help="working folder (reused: simulation kept, fit resumed)")
    ap.add_argument("--init", default="default", help='network for [init] ("default", a path, or "none")')
    ap.add_argument(
        "--kill-after", type=float, default=0.0, help="SIGKILL the first run after S s (0: never)"
    )
    ap.add_argument("--max-steps", type=int, default=0, help="[fit] max_steps override (0: the config's)")
    ap.add_argument("--seed", type=int, default=7, help="dataset seed (not the configs' 0)")
    ap.add_argument("--iou-ok", type=float, default=0.9)
    ap.add_argument("--iou-n", type=int, default=48)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for fam in a.families.split(","):
        if fam not in FAMILIES:
            raise SystemExit(f"unknown family {fam!r}; valid: {', '.join(FAMILIES)}")
        data = os.path.join(a.out, f"{fam}.cxi")
        out = os.path.join(a.out, f"{fam}-results.h5")
        _simulate(fam, a, data)
        info = _fit(fam, a, data, out)
        row = _score(fam, data, out, info, a)
        rows.append(row)
        for k, v in row.items():
            print(f"{k:>40}: {v}")
        print(flush=True)
    summary = os.path.join(a.out, "summary.json")
    tmp = summary + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    os.replace(tmp, summary)


if __name__ == "__main__":
    main()
