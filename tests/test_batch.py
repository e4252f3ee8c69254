"""Batch inversion (issue: batch-fit): sharding, resume after SIGKILL, multi-host, bad patterns."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from batch_data import CONFIG, make_dataset

from fitting._batch import read_results

HERE = os.path.dirname(__file__)


def _cli(args, env_extra=None, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "diffscat", "batch-fit", *args, "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _run(args, env_extra=None, timeout=600):
    p = _cli(args, env_extra)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    data = str(d / "patterns.cxi")
    radii = make_dataset(data, n=12, bad=(3, 8))
    cfg = d / "batch.toml"
    cfg.write_text(CONFIG)
    ref = str(d / "ref.h5")
    _run([str(cfg), "--data", data, "-o", ref])
    return d, data, str(cfg), radii, read_results(ref)


def test_results_layout_and_accuracy(dataset):
    d, data, cfg, radii, ref = dataset
    status = ref["status_names"]
    assert status[3] == status[8] == "skipped-bad-input"
    good = [i for i in range(12) if i not in (3, 8)]
    assert all(status[i] == "ok" for i in good), status
    r = ref["radius"]
    assert np.all(np.isnan(r[[3, 8]]))
    np.testing.assert_allclose(r[good], radii[good], rtol=0.01)
    assert np.all(ref["radius_sigma"][good] > 0)
    import h5py

    with h5py.File(os.path.join(d, "ref.h5"), "r") as f:
        assert f["results/radius"].attrs["unit"] == "nm"
        assert "config" in f["results"].attrs
    assert os.path.exists(os.path.join(d, "ref_histograms.png"))


def test_rerun_finished_is_noop_and_unfinished_needs_resume(dataset):
    d, data, cfg, _, ref = dataset
    out = os.path.join(d, "ref.h5")
    mtime = os.path.getmtime(out)
    log = _run([cfg, "--data", data, "-o", out])
    assert "0 pattern(s) fitted now" in log
    np.testing.assert_array_equal(read_results(out)["radius"], ref["radius"])
    # a partial job without --resume is refused, nothing overwritten
    part = os.path.join(d, "partial.h5")
    _run([cfg, "--data", data, "-o", part, "--max-chunks", "1"])
    p = _cli([cfg, "--data", data, "-o", part])
    outp, _ = p.communicate(timeout=600)
    assert p.returncode == 2 and "--resume" in outp
    assert os.path.getmtime(out) == mtime


def test_eight_devices_equal_single_device(dataset):
    d, data, cfg, _, ref = dataset
    out = os.path.join(d, "dev8.h5")
    _run(
        [cfg, "--data", data, "-o", out],
        {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"},
    )
    res = read_results(out)
    assert res["status_names"] == ref["status_names"]
    np.testing.assert_allclose(res["radius"], ref["radius"], rtol=1e-5, equal_nan=True)


def test_sigterm_stops_cleanly_and_releases_the_lock(dataset):
    """A scheduler's SIGTERM (time limit) ends batch-fit like Ctrl-C: exit 143, a message naming --resume, and
    no lock file left behind (Python's default action would leave it, refusing a resume from another host)."""
    d, data, cfg, _, _ = dataset
    out = os.path.join(d, "term.h5")
    lock = os.path.join(out + ".parts", "lock-0.json")
    p = _cli([cfg, "--data", data, "-o", out, "--chunk-size", "2"])
    deadline = time.time() + 300
    while not os.path.exists(lock) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(lock), "batch-fit never took its lock"
    p.send_signal(signal.SIGTERM)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 128 + signal.SIGTERM, log
    assert "--resume" in log
    assert not os.path.exists(lock)
    assert not [n for n in os.listdir(out + ".parts") if n.startswith(".tmp")]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_results(tmp_path):
    data = str(tmp_path / "p.cxi")
    make_dataset(data, n=32, seed=3)
    cfg = tmp_path / "b.toml"
    cfg.write_text(CONFIG)
    ref = str(tmp_path / "ref.h5")
    _run([str(cfg), "--data", data, "-o", ref])
    out = str(tmp_path / "out.h5")
    p = _cli([str(cfg), "--data", data, "-o", out])
    parts = out + ".parts"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill after two chunks have landed
        if os.path.isdir(parts) and sum(n.startswith("part-") for n in os.listdir(parts)) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    mid = read_results(out)  # readable after the kill
    n_done = sum(s != "pending" for s in mid["status_names"])
    assert 0 < n_done < 32
    _run([str(cfg), "--data", data, "-o", out, "--resume"])
    res = read_results(out)
    assert all(s == "ok" for s in res["status_names"])
    np.testing.assert_allclose(res["radius"], read_results(ref)["radius"], rtol=1e-6)
    # every pattern has exactly one result: the parts tile [0, 32) without overlap
    spans = sorted(
        tuple(int(x) for x in n[5:-3].split("-")) for n in os.listdir(parts) if n.startswith("part-")
    )
    assert spans[0][0] == 0 and spans[-1][1] == 32
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.slow
def test_two_process_multihost_equals_single(dataset):
    d, data, cfg, _, ref = dataset
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(d, "mh.h5")
    procs = [
        _cli(
            [
                cfg,
                "--data",
                data,
                "-o",
                out,
                "--distributed",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ]
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    _run([cfg, "--data", data, "-o", out, "--merge-only"])
    res = read_results(out)
    assert res["status_names"] == ref["status_names"]
    np.testing.assert_allclose(res["radius"], ref["radius"], rtol=1e-5, equal_nan=True)


def test_shipped_batch_configs_validate(tmp_path):
    from diffscat.io import ConfigError
    from fitting._cli_batch import load_batch_config

    root = os.path.dirname(HERE)
    sphere = load_batch_config(os.path.join(root, "configs", "batch-sphere.toml"))
    ell = load_batch_config(os.path.join(root, "configs", "batch-ellipsoid.toml"))
    assert sphere["model"]["type"] == "Sphere" and sphere["fit"]["n_steps"] == 8
    assert ell["model"]["type"] == "Ellipsoid" and ell["fit"]["n_starts"] == 4
    bad = tmp_path / "bad.toml"
    for text, match in [
        ("[data]\nlength_unit='nm'\n[model]\nradius_min=1.0\nradius_max=2.0\nfoo=1\n", "model.foo"),
        ("[data]\nlength_unit='nm'\n[model]\nradius_min=3.0\nradius_max=2.0\n", "radius_min"),
        ("[model]\nradius_min=1.0\nradius_max=2.0\n", "length_unit"),
        ("[data]\nlength_unit='nm'\n[model]\ntype='Torus'\nradius_min=1.0\nradius_max=2.0\n", "model.type"),
        ("[data]\nlength_unit='nm'\n[spam]\n", "spam"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_batch_config(str(bad))


def test_summary_figures(dataset):
    """The run writes histograms (units, titles, status counts) and a best / worst grid (data | model)."""
    d, data, cfg, _, ref = dataset
    from fitting._cli_batch import histogram_figure

    assert os.path.exists(os.path.join(d, "ref_fits.png"))
    fig = histogram_figure(os.path.join(d, "ref.h5"), "nm")
    texts = [t.get_text() for ax in fig.axes for t in (ax.xaxis.label, ax.title)]
    assert "radius [nm]" in texts
    assert any(t.startswith("status") for t in texts)
    assert any("10 fitted" in t for t in texts)  # 12 patterns, 2 bad
