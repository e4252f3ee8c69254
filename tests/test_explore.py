"""`diffscat explore`: the app's HTTP endpoints on a real uvicorn server on 127.0.0.1 (no browser).

The browser tests are in test_explore_browser.py. Here: the page and schema are served, a render returns a
PNG and a profile, bad values answer 400 with a one-line message (never a traceback), oversized bodies 413,
an exported TOML config re-simulates with `diffscat simulate` to the pattern the explorer computed, and with
a measured pattern the data/residual views and the background fit with its loss curve work.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import tomllib
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the explore extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the explore extra (uvicorn) is not installed")

from diffscat._explore import Explorer, bind_socket, make_server  # noqa: E402

SMALL = {"detector": {"type": "qgrid", "n": 32, "theta_max_deg": 25.0}}


class Served:
    """An explorer served by uvicorn in a thread on a free port of 127.0.0.1; `stop()` shuts it down."""

    def __init__(self, explorer: Explorer):
        self.explorer = explorer
        self.sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(explorer)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.025)
        assert self.server.started

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive()

    def request(self, path: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers.get("content-type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("content-type", ""), e.read()


@pytest.fixture(scope="module")
def served():
    s = Served(Explorer())
    yield s
    s.stop()


def test_page_and_schema(served):
    status, ctype, page = served.request("/")
    assert status == 200 and "text/html" in ctype
    assert b"diffscat explore" in page and b"<script>" in page
    status, _, body = served.request("/api/schema")
    sch = json.loads(body)
    for name in ("Sphere", "Ellipsoid", "SphericalHarmonics", "Cube", "Octahedron", "Icosahedron"):
        assert name in sch["shapes"]
    for name in ("Decahedron", "TruncatedOctahedron", "Cuboctahedron"):
        assert name in sch["shapes"]
    sh = [s["name"] for s in sch["shapes"]["SphericalHarmonics"]]
    assert len(sh) == 1 + 24 and "c_4_-4" in sh  # mean radius + c_lm for l = 1..4
    assert sch["data"] is None


def test_render_png_profile_and_no_recompile(served):
    p = dict(SMALL, shape="Ellipsoid", params={"a": 8.0, "b": 6.0, "c": 5.0})
    status, _, body = served.request("/api/render", p)
    j = json.loads(body)
    assert status == 200 and j["ok"]
    png = base64.b64decode(j["pattern"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    q, v = j["profile"]
    assert len(q) == len(v) > 5 and all(np.isfinite(v))
    assert j["axes"]["unit"] == "1/nm" and j["axes"]["x"] == "q_x"
    # a size and orientation change reuses the compiled model (same grid: sizes below the grid's margin)
    p2 = dict(
        p, params={"a": 9.0, "b": 6.5, "c": 5.0}, orientation={"mode": "scatman", "angles": [30, 10, 0]}
    )
    j2 = json.loads(served.request("/api/render", p2)[2])
    assert j2["ok"] and not j2["info"]["compiled"] and j2["info"]["grid"] == j["info"]["grid"]
    assert j2["pattern"] != j["pattern"]
    # photons with Poisson noise: counts are integers
    p3 = dict(p, fluence=1e4, noise=True, seed=3)
    j3 = json.loads(served.request("/api/render", p3)[2])
    assert j3["ok"] and j3["quantity"] == "photons" and j3["total_photons"] == round(j3["total_photons"])


@pytest.mark.parametrize(
    "params, words",
    [
        ({"params": {"radius": -5}}, "radius = -5 must be positive"),
        ({"params": {"radius": "big"}}, "is not a number"),
        ({"shape": "Teapot"}, "shape = 'Teapot'"),
        ({"material": "Unobtainium"}, "material"),
        ({"photon_energy_eV": -10}, "must be positive"),
        ({"detector": {"type": "qgrid", "n": 5000}}, "detector.n"),
        ({"fluence": -1}, "fluence"),
        ({"colour": "red"}, "unknown parameter 'colour'"),
    ],
)
def test_bad_values_answer_a_message(served, params, words):
    status, ctype, body = served.request("/api/render", dict(SMALL, **params))
    assert status == 400 and "json" in ctype
    j = json.loads(body)
    assert j["ok"] is False and words in j["error"]
    assert "Traceback" not in j["error"] and "\n" not in j["error"]


def test_bad_body(served):
    status, _, body = served.request("/api/render", raw=b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, _, body = served.request("/api/render", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in json.loads(body)["error"]
    status, _, body = served.request("/api/render", raw=b" " * (70 * 1024))
    assert status == 413
    assert served.request("/api/fit/start", SMALL)[0] == 400  # no data: a message, not a crash


def test_export_toml_resimulates(served, tmp_path):
    from diffscat.cli import main
    from diffscat.io import read_cxi

    p = dict(
        SMALL,
        shape="Octahedron",
        params={"edge": 14.0},
        orientation={"mode": "euler", "angles": [20, 35, -10]},
        material="Au",
        photon_energy_eV=1500.0,
        fluence=3e3,
    )
    status, ctype, text = served.request("/api/export/toml", p)
    assert status == 200 and "toml" in ctype
    cfg = tomllib.loads(text.decode())
    assert cfg["shape"]["material"] == "Au" and cfg["shape"]["euler_deg"] == [20.0, 35.0, -10.0]
    assert cfg["experiment"]["photon_energy_eV"] == 1500.0 and cfg["detector_model"]["noise"] == "none"
    path = tmp_path / "explore.toml"
    path.write_bytes(text)
    out = tmp_path / "re.cxi"
    assert main(["simulate", str(path), "-o", str(out), "--no-png", "--quiet"]) == 0
    again = read_cxi(out, length_unit="nm").data
    shown = served.explorer.simulate(p)[3]
    assert again.shape == shown.shape == (32, 32)
    # same config, the CLI's default voxel grid vs the explorer's fixed (larger) one: ~1e-4 apart
    rel = np.linalg.norm(again - shown) / np.linalg.norm(again)
    assert rel < 2e-3, rel
    status, ctype, png = served.request("/api/export/png", p)
    assert status == 200 and ctype == "image/png" and png[:4] == b"\x89PNG"


def test_particle_points(served):
    j = json.loads(served.request("/api/particle", dict(SMALL, shape="Cube", params={"edge": 10.0}))[2])
    pts = np.asarray(j["points"])
    assert j["ok"] and pts.ndim == 2 and pts.shape[1] == 3 and len(pts) > 100
    # a cube of edge 10 centred on the origin: surface points within the half-diagonal, none deep inside
    r = np.linalg.norm(pts, axis=1)
    assert r.max() <= 5 * np.sqrt(3) + 0.6 and np.max(np.abs(pts), axis=1).min() >= 5 - 0.6


def test_cli_parser_defaults_to_loopback():
    from diffscat.cli import build_parser

    args = build_parser().parse_args(["explore", "--no-browser"])
    assert args.host == "127.0.0.1" and args.port == 8765 and args.data is None


@pytest.mark.slow
def test_data_views_and_fit(tmp_path):
    """A measured pattern: data, residual and the background fit, whose loss curve grows while it runs."""
    import diffscat as ds
    from diffscat.io import write_cxi

    exp = ds.Experiment(1.0, ds.QGrid(32, 25.0))
    truth = ds.Sphere(6.0, 0.0, 0.001)
    I = np.asarray(ds.simulate(truth, exp))
    data = np.random.default_rng(0).poisson(I / I.max() * 2e3).astype(float)
    path = tmp_path / "data.cxi"
    write_cxi(path, data, exp, length_unit="nm", quantity="photons")
    s = Served(Explorer(str(path)))
    try:
        start = {"shape": "Sphere", "params": {"radius": 5.5}, "delta": 0.0, "beta": 0.001}
        j = json.loads(s.request("/api/render", start)[2])
        assert j["ok"] and {"data", "residual", "profile_data"} <= set(j)
        assert json.loads(s.request("/api/schema")[2])["data"]["shape"] == [32, 32]
        st = json.loads(s.request("/api/fit/start", dict(start, max_steps=30))[2])
        assert st["running"]
        assert s.request("/api/fit/start", start)[0] == 400  # one fit at a time
        for _ in range(600):
            st = json.loads(s.request("/api/fit/status")[2])
            if not st["running"]:
                break
            time.sleep(0.2)
        assert not st["running"] and st["message"].startswith("done"), st["message"]
        assert len(st["losses"]) >= 2 and st["losses"][-1] < st["losses"][0]
        assert abs(st["result"]["params"]["params"]["radius"] - 6.0) < 0.1
    finally:
        s.explorer.fit.stop()
        s.stop()
