import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the CLI turns on jax's persistent compilation cache in the user's cache directory: not from the tests
# (tests/test_compile_cache.py checks it with its own directories)
os.environ["DIFFSCAT_COMPILE_CACHE"] = "off"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests run in float64 (as diffrax's do); float32 paths are exercised explicitly with float32 inputs.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    keys = iter(jax.random.split(jax.random.key(1234), 10_000))
    return lambda: next(keys)
