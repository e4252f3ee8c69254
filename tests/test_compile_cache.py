"""The command line's persistent compilation cache (`diffscat.enable_compile_cache`), in fresh processes (jax
reads the setting at its first compilation)."""

import os
import subprocess
import sys

import pytest

import diffscat as ds

SCRIPT = """
import sys, jax, jax.numpy as jnp
import diffscat as ds
d = ds.enable_compile_cache(*sys.argv[1:2])
print("DIR", d)
if d is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T)
print(float(f(jnp.ones((8, 8))).sum()))
"""


def _run(tmp_path, env_value, *args):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("DIFFSCAT_COMPILE_CACHE", None)
    if env_value is not None:
        env["DIFFSCAT_COMPILE_CACHE"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return next(line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("DIR "))


def _entries(path):
    return [f for _, _, fs in os.walk(path) for f in fs]


def test_default_directory_is_filled_and_reused(tmp_path):
    d = _run(tmp_path, None)
    assert d == str(tmp_path / "xdg" / "diffscat" / "jax")
    first = sorted(_entries(d))
    assert first  # the compiled program was written
    _run(tmp_path, None)
    assert sorted(_entries(d)) == first  # the second run found it (nothing new written)


def test_environment_directory_and_off(tmp_path):
    mine = tmp_path / "mine"
    assert _run(tmp_path, str(mine)) == str(mine) and _entries(mine)
    assert _run(tmp_path, "off") == "None"
    assert not (tmp_path / "xdg").exists()
    # an explicit path wins over "off"
    assert _run(tmp_path, "off", str(tmp_path / "explicit")) == str(tmp_path / "explicit")


def test_bad_size():
    with pytest.raises(ValueError, match="max_size_gb"):
        ds.enable_compile_cache(max_size_gb=0)
