"""The `diffscat` command line: one small dispatcher whose only job is wiring subcommands.

`simulate` and `info` live in diffscat; `fit` and `batch-fit` live in the `fitting` package, which is
imported here lazily (diffscat's library code never imports fitting; this module is the one exception,
and only for the command line).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function, one-line help). Each function takes (argparse subparser) to add its
# arguments via `<module>.add_arguments` and is called as `<function>(args) -> int`.
SUBCOMMANDS = {
    "simulate": ("diffscat._cli_simulate", "Simulate pattern(s) from a TOML config and write CXI + PNG"),
    "plan": ("diffscat._cli_plan", "Planning report of a config: transmission, photons, sampling, validity"),
    "info": ("diffscat._cli_info", "Summarise a CXI / HDF5 file"),
    "fit": ("fitting._cli_fit", "Fit a shape model to one measured pattern"),
    "batch-fit": ("fitting._cli_batch", "Fit every pattern of a dataset (sharded, resumable)"),
    "train": ("fitting._cli_train", "Train the amortised-inversion network on simulated patterns"),
    "predict": ("fitting._cli_predict", "Network predictions (size, class, orientation) for a CXI file"),
}


def build_parser(load: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="diffscat",
        description="Differentiable MSFT simulation and shape retrieval for wide-angle diffraction.",
    )
    from . import __version__

    ap.add_argument("--version", action="version", version=f"diffscat {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if load:
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as e:
                if e.name != modname:
                    raise
                p.set_defaults(_missing=modname)
                continue
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"diffscat {args.command}: not available in this version", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        print(f"diffscat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
