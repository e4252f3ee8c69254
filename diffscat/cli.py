"""The `diffscat` command line: one small dispatcher whose only job is wiring subcommands.

`simulate` and `info` live in diffscat; `fit` and `batch-fit` live in the `fitting` package, which is
imported here lazily (diffscat's library code never imports fitting; this module is the one exception,
and only for the command line).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, function, one-line help). Each function takes (argparse subparser) to add its
# arguments via `<module>.add_arguments` and is called as `<function>(args) -> int`.
SUBCOMMANDS = {
    "simulate": ("diffscat._cli_simulate", "Simulate pattern(s) from a TOML config and write CXI + PNG"),
    "plan": ("diffscat._cli_plan", "Planning report of a config: transmission, photons, sampling, validity"),
    "info": ("diffscat._cli_info", "Summarise a CXI / HDF5 file"),
    "explore": ("diffscat._cli_explore", "Interactive explorer in the browser: turn knobs, see the pattern"),
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
    ap.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (default: one line)"
    )
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
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            p.set_defaults(_run=mod.run)
    return ap


# Errors answered in one line (exit code 2) unless --debug: bad values and configs, every file problem
# (OSError covers FileNotFoundError, PermissionError, IsADirectoryError and h5py's errors) and a memory
# budget refusal. Anything else is a bug and keeps its traceback.
_ONE_LINE_ERRORS = (ValueError, TypeError, KeyError, OSError, MemoryError)
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as `yes | head` reports for `yes`


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in str(msg):
        msg = f"{msg}: {e.filename}"
    msg = " ".join(str(msg).split()) or type(e).__name__
    if isinstance(e, MemoryError) and type(e) is MemoryError:
        msg = f"out of memory ({msg}); lower the pitch, grid, detector size or chunk size"
    return msg


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured stdout)
        pass


def main(argv=None) -> int:
    """Run the `diffscat` command line; returns the exit code (0 ok, 2 error, 141 broken pipe)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"diffscat {args.command}: not available in this version", file=sys.stderr)
        return EXIT_ERROR
    from ._compile_cache import enable_compile_cache

    # compiled programs on disk, reused by later runs (docs/performance.md "Compilation"); off with
    # DIFFSCAT_COMPILE_CACHE=off
    enable_compile_cache()
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `diffscat info f.cxi | head`: the reader left; stop quietly
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except _ONE_LINE_ERRORS as e:
        if args.debug:
            raise
        print(f"diffscat {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"diffscat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
