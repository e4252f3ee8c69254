"""jax's persistent compilation cache for the command line: compiled programs are reused across runs.

A fit compiles a few dozen XLA programs (one per voxel grid, batch size and stage); on a 2-core CPU that is
~45 s of a 128^2 ellipsoid fit from no guess. jax can keep compiled programs on disk, keyed by the program
and the jax / XLA versions, so a later run with the same geometry skips the XLA compilation (tracing still
runs). The `diffscat` command turns this on (`enable_compile_cache`); the library never changes jax's global
configuration by itself: call `diffscat.enable_compile_cache()` in a script to get the same.
"""

from __future__ import annotations

import os

__all__ = ["enable_compile_cache", "COMPILE_CACHE_ENV", "default_compile_cache_dir"]

COMPILE_CACHE_ENV = "DIFFSCAT_COMPILE_CACHE"
"""Environment variable: a directory for the cache, or "off" (also "0", "no", "false") to disable it."""

_OFF = ("off", "0", "no", "false", "none")


def default_compile_cache_dir() -> str:
    """$XDG_CACHE_HOME/diffscat/jax, else ~/.cache/diffscat/jax."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffscat", "jax")


def enable_compile_cache(
    path: str | os.PathLike | None = None, *, max_size_gb: float | int = 1.0
) -> str | None:
    """Turn on jax's persistent compilation cache.

    **Arguments:**
    - `path`: the cache directory; default `$DIFFSCAT_COMPILE_CACHE` if set, else `default_compile_cache_dir()`.
      `$DIFFSCAT_COMPILE_CACHE=off` disables the cache when `path` is not given.
    - `max_size_gb` (> 0): the cache's size limit in GB (jax evicts the least recently used programs; needs
      the `filelock` package, a dependency of diffscat; without it the cache has no limit).

    **Returns:** the directory in use, or None when disabled or when the directory cannot be created (e.g. a
    read-only home: the run goes on without a cache). A cache directory the user already configured in jax
    (`jax_compilation_cache_dir`) is kept and returned. Call it before the first compilation: jax reads the
    setting when it first compiles. Programs that compile in under 0.5 s are not stored.
    """
    import jax

    if not float(max_size_gb) > 0:
        raise ValueError(f"max_size_gb must be > 0, got {max_size_gb}")
    env = os.environ.get(COMPILE_CACHE_ENV)
    if path is None and env is not None and env.strip().lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return str(current)
    d = os.fspath(path) if path is not None else (env.strip() if env else default_compile_cache_dir())
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    try:  # jax's size limit (least recently used programs evicted) needs filelock (a declared dependency)
        import filelock  # noqa: F401

        jax.config.update("jax_compilation_cache_max_size", int(float(max_size_gb) * 1e9))
    except ImportError:  # without it jax would write nothing at all when a limit is set: no limit then
        pass
    return d
