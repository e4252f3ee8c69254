"""`diffscat plan CONFIG [-o plan.pdf] [--set key=value ...]`: an experiment planning report.

Reads the same TOML configs as `diffscat simulate` and writes a 3-page PDF (materials and transmission;
photons per pixel, speckle sampling, q range and resolution, eq. 9 validity; 3-D geometry) plus a PNG per
page, and prints the numbers. docs/cli.md describes the pages and the definitions.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML config (the same as for diffscat simulate; see configs/*.toml)")
    p.add_argument(
        "-o", "--output", help="output PDF (default: CONFIG name + '-plan.pdf' in the working folder)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value parsed as TOML (repeatable), e.g. --set experiment.photon_energy_eV=90",
    )
    p.add_argument("--no-png", action="store_true", help="do not write the PNG of each page")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=128 * 128,
        help="bin the detector for the photon-profile simulation above this many pixels (default 16384)",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the summary")


def run(args) -> int:
    from ._files import check_input_file, check_output
    from ._plan import format_summary, plan_report

    check_input_file(args.config, "config")
    out = args.output or os.path.splitext(os.path.basename(args.config))[0] + "-plan.pdf"
    check_output(out, inputs=[args.config], name="output")
    if args.max_pixels < 4:
        raise ValueError(f"--max-pixels must be >= 4, got {args.max_pixels}")
    r = plan_report(args.config, out, overrides=args.set, png=not args.no_png, max_pixels=args.max_pixels)
    if not args.quiet:
        print(format_summary(r))
        for w in r["warnings"]:
            print(f"warning: {w}")
        print(f"wrote {r['pdf']}" + (f" and {len(r['pngs'])} PNGs" if r["pngs"] else ""))
    return 0
