"""Training throughput of the amortised-inversion network, and a model trained to a wall-time budget.

    python benchmarks/bench_train.py [--config configs/train-gpu.toml] [--out gpu.eqx] [--budget 240]
        [--probe-steps 10]

1. Probe: `fitting.train_network` on a scratch output for 1 + `--probe-steps` steps (the data generators compile
   first, in parallel); its sidecar's `samples_per_s` (data generation included, the first step excluded) is
   the throughput.
2. Train: `train.steps` set so that 80 % of the rest of `--budget` is filled at the probe's rate (the rest: the
   optimiser step compiles anew for the new schedule), with the rest of the budget as a time limit too (the
   checkpoint is written either way; `diffscat train --resume` continues).
Compiled programs are shared through jax's persistent compilation cache (`--cache-dir`), so the second run
compiles little. Prints the device, the throughput and the run's final losses; writes
benchmarks/results/bench_train.json. Evaluate the model with `benchmarks/bench_network.py --model OUT`.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs", "train-gpu.toml"))
    ap.add_argument("--out", default="gpu.eqx", help="model to write (must not exist)")
    ap.add_argument("--budget", type=float, default=240.0, help="wall seconds for probe + training")
    ap.add_argument("--probe-steps", type=int, default=10, help="timed steps of the throughput probe")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on train.steps (default: the config's)")
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "diffscat-jax-cache"))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "bench_train.json"))
    a = ap.parse_args(argv)
    import jax

    jax.config.update("jax_compilation_cache_dir", a.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from fitting import train_network
    from fitting._train import LOSS_TERMS

    t_all = time.perf_counter()
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    dev = jax.devices()[0]
    print(f"device {dev.device_kind} ({dev.platform}) x {jax.device_count()}, jax {jax.__version__}")
    n_probe = 1 + int(a.probe_steps)  # the first step compiles the optimiser step
    probe_cfg = {**cfg, "train": {**cfg.get("train", {}), "steps": n_probe, "checkpoint_every": 10**6}}
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        pm = train_network(probe_cfg, os.path.join(d, "probe.eqx"), time_limit=a.budget)
        probe_s = time.perf_counter() - t
    rate, bsz = float(pm["samples_per_s"]), int(cfg.get("train", {}).get("batch_size", 16))
    print(f"probe: {pm['step']} steps in {probe_s:.0f} s, {rate:.1f} samples/s ({rate / bsz:.2f} steps/s)")
    left = a.budget - (time.perf_counter() - t_all)
    steps = max(int(0.8 * left * rate / bsz), 1)
    if a.max_steps is not None:
        steps = min(steps, a.max_steps)
    cfg.setdefault("train", {})["steps"] = steps
    print(f"training {steps} steps (batch {bsz}) in <= {left:.0f} s -> {a.out}")
    t = time.perf_counter()
    meta = train_network(cfg, a.out, time_limit=max(left, 1.0), progress=lambda s: print(s, flush=True))
    run_s = time.perf_counter() - t
    curve = meta["loss_curve"]
    row = dict(
        device=str(dev.device_kind),
        platform=dev.platform,
        n_devices=jax.device_count(),
        jax=jax.__version__,
        config=os.path.relpath(a.config),
        batch_size=bsz,
        probe_steps=pm["step"],
        probe_s=probe_s,
        samples_per_s_probe=rate,
        steps=meta["step"],
        steps_planned=steps,
        stopped=meta.get("stopped"),
        run_s=run_s,
        samples_per_s_run=meta.get("samples_per_s"),
        final_losses=dict(zip(("total", *LOSS_TERMS), curve[-1][1:])) if curve else None,
        model=a.out,
    )
    print(json.dumps(row, indent=1))
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
