"""Screenshots of `diffscat explore` for docs/explore.md (headless Chromium via Playwright).

    python examples/explore_screenshots.py [--out docs/img]

Starts the explorer on a free port of 127.0.0.1 (once plain, once with a simulated measured pattern),
sets a few controls, and saves PNGs (palette-quantised, each well under 300 kB). Needs Chromium at
/usr/bin/chromium (Debian: apt-get install chromium) and `pip install playwright`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(*extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "diffscat", "explore", "--port", "0", "--no-browser", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    url = re.search(r"(http://127\.0\.0\.1:\d+/)", proc.stdout.readline()).group(1)
    return proc, url


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)


def _ready(pg):
    pg.wait_for_function(
        "!inflight && !pending && document.getElementById('pattern').dataset.seq", timeout=120_000
    )
    pg.wait_for_timeout(1500)  # the 3-D view follows the pattern


def _save(pg, path):
    from PIL import Image

    pg.screenshot(path=path)
    im = Image.open(path).convert("RGB")
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}: {os.path.getsize(path) // 1024} kB")


def _data_file(tmp):
    import numpy as np

    import diffscat as ds
    from diffscat.io import write_cxi

    exp = ds.Experiment(1.0, ds.QGrid(128, 30.0))
    truth = ds.Ellipsoid(
        [9.0, 7.0, 5.5], 0.0, 0.001, rotation=ds.rotation_from_euler([20.0, 40.0, 0.0], degrees=True)
    )
    I = np.asarray(ds.simulate(truth, exp))
    data = np.random.default_rng(1).poisson(I / I.max() * 5e3).astype(float)
    path = os.path.join(tmp, "measured.cxi")
    write_cxi(path, data, exp, length_unit="nm", quantity="photons")
    return path


def main(argv=None):
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        proc, url = _start()
        try:
            pg.goto(url)
            _ready(pg)
            pg.select_option("#shape", "Icosahedron")
            _ready(pg)
            for sel, v in (("#o0-r", "25"), ("#o1-r", "40")):
                pg.fill(sel, v)
                _ready(pg)
            pg.select_option("#material", "Au")
            pg.check("#photons")
            pg.fill("#fluence", "3e4")
            pg.press("#fluence", "Enter")
            pg.check("#noise")
            _ready(pg)
            _save(pg, os.path.join(a.out, "explore-icosahedron.png"))
        finally:
            _stop(proc)
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = _start("--data", _data_file(tmp))
            try:
                pg.set_viewport_size({"width": 1400, "height": 1000})
                pg.goto(url)
                _ready(pg)
                pg.select_option("#shape", "Ellipsoid")
                _ready(pg)
                pg.click("#fit")
                pg.wait_for_function(
                    "document.getElementById('fit-msg').textContent.startsWith('done')", timeout=600_000
                )
                _ready(pg)
                _save(pg, os.path.join(a.out, "explore-fit.png"))
            finally:
                _stop(proc)
        browser.close()


if __name__ == "__main__":
    main()
