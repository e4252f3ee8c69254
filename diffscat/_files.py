"""Output files: the one home of atomic writes, output-path checks and stale-temporary cleanup.

Every file diffscat and fitting write (CXI, HDF5 results, JSON, PNG, PDF) goes through `atomic_output`:
the content is written to a temporary file in the target folder, named `.tmp-diffscat-<pid>@<host>-<random><ext>`,
and renamed over the target only when the writer finished without an error, so a reader never sees a
half-written file. The renamed file gets the permissions an ordinary `open(path, "w")` would give
(0o666 minus the umask), not `tempfile.mkstemp`'s 0600. A process killed mid-write (SIGKILL) leaves its
temporary behind; `clean_stale_temporaries` (called before every write into a folder) removes the
temporaries of ours whose writer process is gone.

`check_output` validates an output path before any computation: its folder can be created and written,
it is not a folder (or, for an output folder, not a file), and it is none of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator, Sequence

__all__ = ["TMP_PREFIX", "atomic_output", "clean_stale_temporaries", "check_output", "check_input_file"]

TMP_PREFIX = ".tmp-diffscat-"
_HOST = socket.gethostname()


def _umask() -> int:
    """The process umask, read without changing it where possible (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)  # fallback: read by setting (not thread-safe, restored at once)
    os.umask(m)
    return m


def _pid_alive(pid: int, since: float) -> bool:
    """True when process `pid` runs and started before `since` (a file's mtime): else its pid was reused."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    except OSError:
        return True
    started = _process_start(pid)
    return started is None or started <= since + 2.0  # unknown start time: trust the pid


def _process_start(pid: int) -> float | None:
    """Start time of process `pid` (seconds since the epoch, ~1 s precision) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def clean_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove `.tmp-diffscat-<pid>@<host>-*` files in `folder` whose writer process on this host is gone (killed
    mid-write). Other hosts' temporaries (a shared folder of a multi-host batch) are left alone. Returns the
    removed paths; never raises (a folder we cannot list or clean is left as it is)."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TMP_PREFIX):
            continue
        rest = name[len(TMP_PREFIX) :]
        if "@" in rest:
            pid_text, after = rest.split("@", 1)
            if after.rsplit("-", 1)[0] != _HOST:
                continue
        else:  # written without a host name: taken as this host's
            pid_text = rest.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        path = os.path.join(folder, name)
        try:
            mtime = os.stat(path).st_mtime
            if not _pid_alive(int(pid_text), mtime):
                os.remove(path)
                removed.append(path)
        except OSError:
            continue
    return removed


def _temp_path(folder: str, suffix: str) -> str:
    return os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}@{_HOST}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Context manager yielding a temporary path beside `path`; on a clean exit it is renamed to `path`
    (permissions 0o666 & ~umask), on an error removed. Creates the folder; cleans stale temporaries first.

        with atomic_output("out.h5") as tmp:
            write_everything(tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temporaries(folder)
    suffix = os.path.splitext(path)[1] if suffix is None else suffix
    tmp = _temp_path(folder, suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _same(a: str, b: str) -> bool:
    a, b = os.path.abspath(a), os.path.abspath(b)
    if a == b:
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike | None] = (),
    folder: bool = False,
    name: str = "output",
) -> str:
    """Validate an output file (or, with `folder=True`, an output folder) before any computation.

    Raises `ValueError` when it is one of `inputs` (or, for a folder, an existing file; for a file, an
    existing folder) and `PermissionError` when it (or the folder it would be created in) is not writable.
    Messages are one line naming `name` and the path. Then removes the stale temporaries of killed writers
    from the output's folder (so a command cleans up at its start). Returns the path."""
    p = os.fspath(path)
    if not p:
        raise ValueError(f"{name} path is empty")
    for inp in inputs:
        if inp is not None and _same(p, os.fspath(inp)):
            raise ValueError(f"{name} {p!r} is the input file {os.fspath(inp)!r}: refusing to overwrite it")
    if folder:
        if os.path.exists(p) and not os.path.isdir(p):
            raise ValueError(f"{name} {p!r} exists and is not a folder (expected an output folder)")
        target = p if os.path.isdir(p) else _nearest_existing(p)
    else:
        if os.path.isdir(p):
            raise ValueError(f"{name} {p!r} is a folder (expected a file name)")
        target = _nearest_existing(os.path.dirname(os.path.abspath(p)))
        if os.path.exists(p) and not os.access(p, os.W_OK) and not os.access(target, os.W_OK):
            raise PermissionError(f"{name} {p!r} is not writable")
    if not os.path.isdir(target):
        raise ValueError(f"{name} {p!r}: {target!r} is a file, so the folder cannot be created")
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {p!r}: no permission to write in {target!r}")
    clean_stale_temporaries(p if folder and os.path.isdir(p) else os.path.dirname(os.path.abspath(p)))
    return p


def check_input_file(path: str | os.PathLike | None, name: str = "input") -> str:
    """Raise FileNotFoundError / IsADirectoryError / PermissionError (one line naming `name` and the path)
    unless `path` is a readable file. Returns the path."""
    if path is None:
        raise ValueError(f"no {name} file given")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such {name} file: {p}")
    if os.path.isdir(p):
        raise IsADirectoryError(f"{name} file {p} is a folder (expected a file)")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{name} file {p}: no permission to read it")
    return p
