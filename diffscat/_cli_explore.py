"""`diffscat explore [CONFIG] [--port P] [--data FILE.cxi] [--host 127.0.0.1] [--no-browser]`.

Starts the interactive explorer (docs/explore.md): a local web page with the shape, material, detector and
photon-count controls, the pattern and its radial profile, a 3-D view of the particle, and with `--data` the
measured pattern, residual map and a background fit. Binds to 127.0.0.1 unless `--host` says otherwise;
Ctrl-C stops it. Needs the `explore` extra: pip install 'diffscat[explore]' (starlette, uvicorn).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="TOML config to start from (as for `diffscat simulate`)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--data", metavar="FILE.cxi", help="measured pattern to compare with and fit")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-pattern --data file (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise ValueError(
            f"diffscat explore needs {e.name}: pip install 'diffscat[explore]' (starlette, uvicorn)"
        ) from None
    from diffscat._explore import Explorer, params_from_config, serve

    initial = None
    if args.config:
        from diffscat.io import load_config

        cfg = load_config(args.config, args.set)
        if "dataset" in cfg:
            raise ValueError(f"{args.config}: the explorer shows one pattern; drop the [dataset] section")
        initial = params_from_config(cfg)
    elif args.set:
        raise ValueError("--set needs a CONFIG")
    explorer = Explorer(args.data, initial, frame=args.frame)
    return serve(explorer, args.host, args.port, open_browser=not args.no_browser)
