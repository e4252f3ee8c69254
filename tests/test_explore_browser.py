"""`diffscat explore` in a real headless browser (Chromium from Debian's packages, driven by Playwright).

The server runs as `python -m diffscat explore CONFIG --port 0 --no-browser` in a subprocess on 127.0.0.1 and
is stopped with SIGINT (Ctrl-C). Checks: the page loads and draws, moving a slider changes the image, the
exported TOML re-simulates with `diffscat simulate` to the explorer's pattern, a bad value shows a message
(not a traceback). Skipped, with the reason, when Chromium or Playwright is missing (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

CHROMIUM = os.environ.get("DIFFSCAT_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[experiment]
photon_energy_eV = 1239.841984
length_unit = "nm"
[experiment.detector]
type = "qgrid"
n = 96
theta_max_deg = 25.0
[shape]
type = "Ellipsoid"
semi_axes = [8.0, 6.0, 5.0]
delta = 0.0
beta = 0.001
euler_deg = [0.0, 30.0, 0.0]
"""

if not os.path.exists(CHROMIUM):
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("starlette", reason="the explore extra (starlette) is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("explore")
    cfg = d / "start.toml"
    cfg.write_text(CONFIG)
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffscat", "explore", str(cfg), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if m is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the server did not start: {line!r} {err}")
    yield f"http://127.0.0.1:{m.group(1)}", d
    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
    try:
        _, err = proc.communicate(timeout=15)  # also closes the pipes
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the server did not stop on SIGINT")
    rc = proc.returncode
    assert rc == 0 and "stopped" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1500, "height": 980}, accept_downloads=True)
        pg.goto(server[0] + "/")
        yield pg
        browser.close()


def _wait_ready(pg, after_seq: int = 0):
    pg.wait_for_function(
        f"Number(document.getElementById('pattern').dataset.seq || 0) > {after_seq} && !inflight && !pending",
        timeout=60_000,
    )
    return int(pg.eval_on_selector("#pattern", "c => c.dataset.seq"))


def _pixels(pg) -> str:
    return pg.eval_on_selector("#pattern", "c => c.toDataURL()")


def test_page_loads_and_slider_redraws(page):
    seq = _wait_ready(page)
    assert "ready" in page.inner_text("#status")
    assert page.input_value("#shape") == "Ellipsoid" and page.input_value("#p-a-n") == "8"
    before = _pixels(page)
    page.fill("#p-a-r", "10")  # move the semi-axis a slider: an input event, one render
    seq = _wait_ready(page, seq)
    assert page.input_value("#p-a-n") == "10"
    assert _pixels(page) != before
    assert "compiled" not in page.inner_text("#status")  # a size change reuses the compiled model
    assert page.inner_text("#error") == ""


def test_export_resimulates(page, server, tmp_path):
    from diffscat.cli import main
    from diffscat.io import read_cxi

    _wait_ready(page)
    with page.expect_download() as dl:
        page.click("#export-toml")
    path = tmp_path / "exported.toml"
    dl.value.save_as(path)
    assert "semi_axes = [10.0, 6.0, 5.0]" in path.read_text()
    out = tmp_path / "re.cxi"
    assert main(["simulate", str(path), "-o", str(out), "--no-png", "--quiet"]) == 0
    again = read_cxi(out, length_unit="nm").data
    # the explorer's own array for the page's current parameters
    params = page.evaluate("params()")
    req = urllib.request.Request(
        server[0] + "/api/export/npy", data=json.dumps(params).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        shown = np.load(__import__("io").BytesIO(r.read()))
    assert shown.shape == again.shape == (96, 96)
    assert np.linalg.norm(shown - again) / np.linalg.norm(again) < 2e-3


def test_bad_value_shows_a_message(page):
    seq = _wait_ready(page)
    page.fill("#p-b-n", "-4")
    page.press("#p-b-n", "Enter")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
    msg = page.inner_text("#error")
    assert "must be positive" in msg and "Traceback" not in page.content()
    assert "error" in page.inner_text("#status")
    page.fill("#p-b-n", "6")
    page.press("#p-b-n", "Enter")
    _wait_ready(page, seq)
    page.wait_for_function("document.getElementById('error').textContent === ''", timeout=30_000)
