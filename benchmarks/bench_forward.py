"""Forward / gradient speed, accuracy vs Mie, peak memory, pymsft comparison and batch throughput.

Run: `make bench` or `.venv/bin/python benchmarks/bench_forward.py [--quick] [--sections ...]`.
Prints tables and writes JSON to benchmarks/results/bench_forward.json. Timings are medians of several runs
after a warm-up (compilation excluded), single precision (jax default), on whatever device jax picks.
Peak memory: each case runs in a fresh subprocess, reporting ru_maxrss (CPU RSS, includes ~0.3 GB of python +
jax) or, on GPU, the device's peak_bytes_in_use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # references.py: Mie, radial profile, rel_l2

LAM = 1.0
TMAX = 30.0
DELTA, BETA = 0.0, 0.001


def _timeit(fn, repeats=5, min_time=0.0):
    """Median wall time of fn() (which must block), after one warm-up call."""
    fn()
    ts = []
    t_start = time.perf_counter()
    while len(ts) < repeats or (time.perf_counter() - t_start < min_time and len(ts) < 50):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(np.min(ts))


def _mie_error(image, theta, R):
    """rel-L2 of the azimuthal profile over 10-30 deg vs Mie |S1|^2, both normalised to unit integral."""
    from references import mie_dcs, radial_profile, rel_l2

    bins = np.radians(np.linspace(10, 30, 81))
    sel = (theta >= bins[0]) & (theta <= bins[-1])
    _, p = radial_profile(image[sel], theta[sel], bins)
    _, r = radial_profile(mie_dcs(R, DELTA, BETA, LAM, theta[sel]), theta[sel], bins)
    w = np.diff(bins)
    return rel_l2(p / np.sum(p * w), r / np.sum(r * w))


def _ours(R, n, transform="auto"):
    import equinox as eqx
    import jax

    import diffscat as ds

    exp = ds.Experiment(LAM, ds.QGrid(n, TMAX))
    s = ds.Sphere(R, DELTA, BETA)
    grid = ds.default_grid(s, exp)
    f = eqx.filter_jit(lambda s: ds.simulate(s, exp, grid=grid, transform=transform))
    render = jax.jit(lambda s: s.render(grid))
    return exp, s, grid, f, render


# --- forward time and accuracy ------------------------------------------------------------------------


def bench_forward(radii, sizes, repeats):
    rows = []
    for R in radii:
        for n in sizes:
            exp, s, grid, f, render = _ours(R, n)
            t_med, t_min = _timeit(lambda: f(s).block_until_ready(), repeats)
            tr, _ = _timeit(lambda: render(s).block_until_ready(), repeats)
            img = np.asarray(f(s))
            err = _mie_error(img, np.asarray(exp.theta), R)
            rows.append(
                dict(R=R, n=n, grid=grid.shape[0], t_med=t_med, t_min=t_min, t_render=tr, mie_err=err)
            )
            print(
                f"  R={R:5.1f} n={n:5d} grid={grid.shape[0]:4d}^3  forward {t_med * 1e3:9.1f} ms "
                f"(min {t_min * 1e3:8.1f})  render {tr * 1e3:7.1f} ms  vs Mie {err:.4f}",
                flush=True,
            )
    return rows


# --- transform routes ---------------------------------------------------------------------------------


def bench_routes(R, n, repeats):
    import equinox as eqx

    import diffscat as ds

    rows = []
    s = ds.Sphere(R, DELTA, BETA)
    for det_name, det in [
        ("QGrid", ds.QGrid(n, TMAX)),
        ("AngleGrid", ds.AngleGrid(n, TMAX)),
        ("Flat", ds.FlatDetector(100.0, 2 * 100.0 * math.tan(math.radians(TMAX)) / n, (n, n))),
    ]:
        exp = ds.Experiment(LAM, det)
        grid = ds.default_grid(s, exp)
        ref = None
        for tr in ("fast", "separable", "direct"):
            if tr == "separable" and det_name != "QGrid":
                continue
            f = eqx.filter_jit(lambda s, tr=tr, exp=exp: ds.simulate(s, exp, grid=grid, transform=tr))
            t_med, _ = _timeit(lambda f=f: f(s).block_until_ready(), repeats)
            img = np.asarray(f(s))
            if ref is None:
                ref = img
            diff = float(np.max(np.abs(img - ref)) / np.max(np.abs(ref)))
            rows.append(dict(detector=det_name, transform=tr, n=n, R=R, t_med=t_med, max_rel_diff=diff))
            print(
                f"  {det_name:9s} {tr:9s} n={n} R={R}: {t_med * 1e3:9.1f} ms   max|diff|/max vs fast {diff:.1e}",
                flush=True,
            )
    return rows


# --- gradients ----------------------------------------------------------------------------------------


def _grad_cases():
    import jax.numpy as jnp

    import diffscat as ds

    cases = {
        "sphere radius": (jnp.asarray(10.0), lambda p: ds.Sphere(p, DELTA, BETA)),
        "ellipsoid axes+orientation": (
            jnp.array([9.0, 10.0, 11.0, 0.3, 0.6, -0.2]),
            lambda p: ds.Ellipsoid(p[:3], DELTA, BETA, rotation=ds.rotation_from_euler(p[3:])),
        ),
    }
    SH = getattr(ds, "SphericalHarmonics", None)
    if SH is not None:
        try:
            nc = (6 + 1) ** 2
            c0 = jnp.zeros(nc).at[0].set(10.0 * math.sqrt(4 * math.pi))
            SH(c0, delta=DELTA, beta=BETA)
            cases["spherical harmonics lmax 6"] = (c0, lambda p: SH(p, delta=DELTA, beta=BETA))
        except Exception as e:  # another worker's API may differ: report, do not fail
            print(f"  (SphericalHarmonics present but not usable here: {e!r})")
    return cases


def bench_grad(n, repeats):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import diffscat as ds

    exp = ds.Experiment(LAM, ds.QGrid(n, TMAX))
    rows = []
    cases = _grad_cases()
    for name, (p0, make) in cases.items():
        grid = ds.default_grid(make(p0), exp)
        target = ds.simulate(make(p0 * 1.01), exp, grid=grid)
        w = 1.0 / (target + 1e-3 * jnp.max(target))

        def loss(p, make=make, grid=grid, w=w, target=target):
            return jnp.sum(w * (ds.simulate(make(p), exp, grid=grid) - target) ** 2)

        fwd = eqx.filter_jit(loss)
        vg = eqx.filter_jit(jax.value_and_grad(loss))
        tf, _ = _timeit(lambda fwd=fwd: fwd(p0).block_until_ready(), repeats)
        tg, _ = _timeit(lambda vg=vg: jax.block_until_ready(vg(p0)), repeats)
        g = np.asarray(vg(p0)[1])
        rows.append(dict(case=name, n=n, grid=grid.shape[0], t_fwd=tf, t_vg=tg, ratio=tg / tf))
        print(
            f"  {name:30s} n={n} grid={grid.shape[0]}^3: forward {tf * 1e3:8.1f} ms  value_and_grad "
            f"{tg * 1e3:8.1f} ms  ratio {tg / tf:4.2f}  finite={bool(np.all(np.isfinite(g)))}",
            flush=True,
        )
    if "spherical harmonics lmax 6" not in cases:
        print("  spherical harmonics lmax 6: skipped (ds.SphericalHarmonics not available)")
    return rows


# --- peak memory (subprocess per case) ----------------------------------------------------------------


def _memory_worker(R, n, mode):
    import jax
    import jax.numpy as jnp

    import diffscat as ds

    exp = ds.Experiment(LAM, ds.QGrid(n, TMAX))
    grid = ds.default_grid(ds.Sphere(R, DELTA, BETA), exp)

    def loss(r):
        return jnp.sum(jnp.log1p(ds.simulate(ds.Sphere(r, DELTA, BETA), exp, grid=grid)))

    f = jax.jit(loss if mode == "forward" else jax.value_and_grad(loss))
    t = time.perf_counter()
    jax.block_until_ready(f(jnp.asarray(R)))
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(f(jnp.asarray(R)))
    t2 = time.perf_counter() - t
    dev = jax.devices()[0]
    out = dict(R=R, n=n, mode=mode, grid=grid.shape[0], t_first=t1, t_second=t2)
    # VmHWM: this process's peak RSS (ru_maxrss would include the parent's peak, Linux keeps it across exec)
    hwm = None
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])  # kB
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["rss_gb"] = hwm / 2**20  # kB -> GB
    if dev.platform == "gpu":
        st = dev.memory_stats() or {}
        out["device_peak_gb"] = st.get("peak_bytes_in_use", float("nan")) / 2**30
    print(json.dumps(out))


def bench_memory(cases):
    rows = []
    for R, n, mode in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", f"{R},{n},{mode}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  R={R} n={n} {mode}: failed\n{res.stderr[-2000:]}")
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        extra = f"  device peak {row['device_peak_gb']:.2f} GB" if "device_peak_gb" in row else ""
        print(
            f"  R={R:5.1f} n={n:5d} {mode:8s} grid={row['grid']}^3: peak RSS {row['rss_gb']:.2f} GB{extra} "
            f"(run {row['t_second']:.2f} s)",
            flush=True,
        )
    return rows


# --- pymsft ---------------------------------------------------------------------------------------------


def _hard_sphere(R, pitch):
    """Hard-voxel sphere (centre test) on an even grid of `pitch`, dn = -delta + i beta: pymsft's own style."""
    m = 2 * (int(math.ceil(R / pitch)) + 1)  # even: pymsft pads (nfft - m) / 2 on each side
    ax = (np.arange(m) - (m - 1) / 2) * pitch
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    inside = X**2 + Y**2 + Z**2 <= R**2
    return np.where(inside, complex(-DELTA, BETA), 0).astype(np.complex128), pitch


def _pymsft_version(mod) -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("pymsft")
    except Exception:
        return getattr(mod, "__version__", "?")


def bench_pymsft(R, n, ours_time, ours_err, repeats, quarter=True):
    try:
        import pyMSFT
        from pyMSFT.simulation import MSFTSimulation, PMSFTSimulation
    except ImportError:
        print("  pymsft not installed: skipped")
        return []
    rows = []
    smax = math.sin(math.radians(TMAX))
    k0 = 2 * math.pi / LAM
    native = LAM / (2 * smax)
    pitches = [("native", native)] + ([("lambda/4", LAM / 4)] if quarter else [])
    for cls in (MSFTSimulation, PMSFTSimulation):
        for pname, pitch in pitches:
            dn, pitch = _hard_sphere(R, pitch)
            npix_real = dn.shape[0]
            # FFT q range is +-pi/pitch: n pixels inside theta_max need n * (pi/pitch) / (k0 sin theta_max).
            nfft = int(round(n * (math.pi / pitch) / (k0 * smax)))
            nfft += nfft % 2
            sim = cls(
                npix_fft=nfft,
                npix_real=npix_real,
                box_delta=pitch,
                wavelength=LAM,
                pool_size=1,
                fftw_plan="FFTW_ESTIMATE",
            )
            reps = repeats if nfft * nfft * npix_real < 2e8 else 1
            img, (KX, KY) = sim.get_diffraction_image(dn, output_axes=True)
            t0 = time.perf_counter()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                img, (KX, KY) = sim.get_diffraction_image(dn, output_axes=True)
                ts.append(time.perf_counter() - t)
            del t0
            t_med = float(np.median(ts))
            img = np.asarray(img)
            KX, KY = np.asarray(KX), np.asarray(KY)
            c = nfft // 2
            sl = slice(c - n // 2, c + n // 2)
            img, KX, KY = img[sl, sl], KX[sl, sl], KY[sl, sl]
            s2 = (KX**2 + KY**2) / k0**2
            theta = np.arcsin(np.sqrt(np.clip(s2, 0, 1)))
            # 'Ewald' output is dsigma/d(qx qy) = dsigma/dOmega / (k0^2 cos theta)
            dcs = np.nan_to_num(img) * k0**2 * np.cos(theta)
            err = _mie_error(dcs, theta, R)
            name = f"pymsft {_pymsft_version(pyMSFT)} {cls.__name__[:-10]} {pname}"
            rows.append(
                dict(
                    method=name,
                    pitch=pitch,
                    voxels=npix_real,
                    nfft=nfft,
                    t_med=t_med,
                    mie_err=err,
                    ours_over_theirs=ours_time / t_med,
                    speedup=t_med / ours_time,
                )
            )
            print(
                f"  {name:34s} pitch {pitch:.3f} voxels {npix_real}^3 fft {nfft}^2: {t_med:8.3f} s "
                f"(x{reps})  vs Mie {err:.4f}   ours/theirs {ours_time / t_med:.4f} (ours vs Mie {ours_err:.4f})",
                flush=True,
            )
    return rows


# --- batch ------------------------------------------------------------------------------------------------


def bench_batch(n, R, batches, repeats):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import diffscat as ds

    exp = ds.Experiment(LAM, ds.QGrid(n, TMAX))
    grid = ds.default_grid(ds.Sphere(R * 1.1, DELTA, BETA), exp)
    rows = []

    def one(r):
        return ds.simulate(ds.Sphere(r, DELTA, BETA), exp, grid=grid)

    for B in batches:
        radii = jnp.linspace(0.9 * R, 1.1 * R, B)
        for how, f in [
            ("vmap", eqx.filter_jit(jax.vmap(one))),
            ("lax.map", eqx.filter_jit(lambda r: jax.lax.map(one, r))),
        ]:
            t, _ = _timeit(lambda f=f, radii=radii: f(radii).block_until_ready(), max(2, repeats // 2))
            rows.append(dict(n=n, R=R, batch=B, how=how, t=t, patterns_per_s=B / t))
            print(f"  {how:8s} batch {B:5d} n={n} R~{R}: {t:7.2f} s  -> {B / t:8.1f} patterns/s", flush=True)
    return rows


# --- main -----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run, ~1 min)")
    ap.add_argument(
        "--sections",
        nargs="*",
        default=["forward", "routes", "grad", "memory", "pymsft", "batch"],
        help="subset of: forward routes grad memory pymsft batch",
    )
    ap.add_argument("--max-n", type=int, default=2048, help="largest detector size in the forward table")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-quarter", action="store_true", help="skip pymsft at lambda/4 (about a minute)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_forward.json"))
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        R, n, mode = args.memory_worker.split(",")
        _memory_worker(float(R), int(n), mode)
        return

    import jax

    dev = jax.devices()[0]
    info = dict(
        device=str(dev.device_kind),
        platform=dev.platform,
        cpus=os.cpu_count(),
        load=os.getloadavg(),
        python=platform.python_version(),
        jax=jax.__version__,
        machine=platform.processor() or platform.machine(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    print(f"device {info['device']} ({info['platform']}), {info['cpus']} cpus, load {info['load']}")
    res = dict(info=info)
    q = args.quick
    sizes = [s for s in (256, 512, 1024, 2048) if s <= args.max_n] if not q else [128, 256]
    radii = [3.0, 7.0, 10.0, 20.0] if not q else [3.0, 7.0]
    if "forward" in args.sections:
        print(
            "forward time and accuracy (sphere, QGrid, theta_max 30 deg, delta 0, beta 1e-3, default grid):"
        )
        res["forward"] = bench_forward(radii, sizes, args.repeats)
    if "routes" in args.sections:
        print("far-field routes (same sphere, same grid; direct only where it finishes):")
        res["routes"] = bench_routes(3.0 if q else 7.0, 64 if q else 128, args.repeats)
    if "grad" in args.sections:
        print("value_and_grad / forward (weighted least squares on the pattern):")
        res["grad"] = bench_grad(128 if q else 512, args.repeats)
    if "memory" in args.sections:
        print("peak memory (fresh process per case):")
        cases = (
            [(3.0, 128, "forward"), (3.0, 128, "grad")]
            if q
            else [(10.0, 512, "forward"), (10.0, 512, "grad"), (20.0, 512, "forward"), (20.0, 512, "grad")]
        )
        res["memory"] = bench_memory(cases)
    if "pymsft" in args.sections:
        R, n = (3.0, 128) if q else (10.0, 512)
        exp, s, grid, f, _ = _ours(R, n)
        t_ours, _ = _timeit(lambda: f(s).block_until_ready(), args.repeats)
        err = _mie_error(np.asarray(f(s)), np.asarray(exp.theta), R)
        print(f"pymsft vs ours (sphere R = {R}, {n}^2): ours {t_ours * 1e3:.1f} ms, vs Mie {err:.4f}")
        res["pymsft"] = dict(
            R=R,
            n=n,
            ours_t=t_ours,
            ours_mie_err=err,
            rows=bench_pymsft(R, n, t_ours, err, args.repeats, quarter=not (q or args.no_quarter)),
        )
    if "batch" in args.sections:
        print("batch throughput (jit(vmap) and jit(lax.map) over spheres of different radii):")
        res["batch"] = bench_batch(128 if q else 256, 3.0 if q else 7.0, [8] if q else [64], args.repeats)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
