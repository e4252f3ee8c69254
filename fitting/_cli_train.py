"""`diffscat train CONFIG -o model.eqx [--resume]`: train the amortised-inversion network on simulations.

CONFIG is a TOML file whose tables override `fitting._train.DEFAULT_CONFIG` (see configs/train-default.toml
and docs/network.md). Writes model.eqx (model leaves), model.eqx.state (optimiser state, for --resume) and
model.eqx.json (config, step, seed, versions, loss curve), each atomically.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training config (TOML); its tables override the defaults")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.eqx)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --output")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this much wall time and write a checkpoint (--resume continues it)",
    )


def run(args) -> int:
    import tomllib

    from ._train import train

    if not os.path.exists(args.config):
        raise FileNotFoundError(f"no such config: {args.config}")
    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    if args.steps is not None:
        cfg.setdefault("train", {})["steps"] = int(args.steps)
    meta = train(
        cfg,
        args.output,
        resume=args.resume,
        progress=lambda s: print(s, flush=True),
        time_limit=args.time_limit,
    )
    rate = meta.get("samples_per_s")
    speed = f", {rate:.1f} samples/s" if rate else ""
    print(f"wrote {args.output} (step {meta['step']}, {meta['samples_seen']} samples{speed})")
    return 0
