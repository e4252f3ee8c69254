"""The README's ```python blocks run as written, in order, in one namespace (each block may use the names of
the blocks before it). The README keeps them small (64 x 64 pixels, short fits), so no size is substituted."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```\nnot python\n```\n```python\nb = 2\n```\n")
    assert blocks == ["a = 1\n", "b = 2\n"]


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3  # use, photons + mask, fitting
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    ns: dict = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), ns)  # noqa: S102
    plt.close("all")
    # what the blocks promise: a dsigma/dOmega image, a mask with True = use, a fitted radius near 7 nm
    assert np.asarray(ns["I"]).shape == (64, 64) and np.all(np.asarray(ns["I"]) >= 0)
    assert np.asarray(ns["I_vol"]).shape == (64, 64) and float(np.max(ns["I_vol"])) > 0
    assert ns["mask"].dtype == bool and ns["mask"].any() and not ns["mask"].all()
    assert abs(float(ns["res"].stages[0].model.radius) - 7.0) < 0.2
    assert os.path.exists(tmp_path / "report.png")
