"""Crash-safety of `batch_fit` (no fits: a stand-in fitter that reports which patterns it saw).

The four failure modes found in a robustness trial: a kill between the last part's rename and the merge left
a stale results file that `--resume` never rebuilt; a resume with another chunk size fitted patterns twice;
two writers on one output both ran; a SIGKILL left `.tmp-*` files behind.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from diffscat._files import TMP_PREFIX
from fitting._batch import ArraySource, JobLock, batch_fit, read_results

N = 10


class RecordingFitter:
    """Pattern i is the constant image i; the 'fit' returns that constant, and every call is recorded."""

    names = ("value",)

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, data, mask):
        v = jnp.mean(data, axis=(1, 2))
        self.seen.extend(int(x) for x in np.asarray(v))
        return {"value": v, "loss": jnp.zeros_like(v), "converged": jnp.ones_like(v, dtype=bool)}


def _source():
    data = np.repeat(np.arange(N, dtype=float)[:, None, None], 16, axis=1).repeat(4, axis=2)  # (N, 16, 4)
    return ArraySource(data)


def _spans(out):
    parts = out + ".parts"
    return sorted(
        tuple(int(x) for x in n[5:-3].split("-")) for n in os.listdir(parts) if n.startswith("part-")
    )


def test_stale_results_file_is_rebuilt_on_resume(tmp_path):
    out = str(tmp_path / "o.h5")
    batch_fit(_source(), RecordingFitter(), out, chunk_size=4, max_chunks=1, progress=False)
    stale = str(tmp_path / "stale.h5")
    shutil.copy(out, stale)
    batch_fit(_source(), RecordingFitter(), out, chunk_size=4, resume=True, progress=False)
    shutil.copy(stale, out)  # as if killed after the last part's rename, before the merge
    assert read_results(out)["status_names"].count("pending") == 6
    s = batch_fit(_source(), RecordingFitter(), out, chunk_size=4, resume=True, progress=False)
    assert s.fitted_now == 0 and s.counts["pending"] == 0
    res = read_results(out)
    assert res["status_names"].count("ok") == N
    np.testing.assert_array_equal(res["value"], np.arange(N))


def test_resume_with_another_chunk_size_fits_each_pattern_once(tmp_path):
    out = str(tmp_path / "o.h5")
    first = RecordingFitter()
    batch_fit(_source(), first, out, chunk_size=4, max_chunks=1, progress=False)  # patterns 0-3
    second = RecordingFitter()
    batch_fit(_source(), second, out, chunk_size=3, resume=True, progress=False)
    spans = _spans(out)
    assert spans[0][0] == 0 and spans[-1][1] == N
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)), spans  # a tiling, no overlap
    # the second run's real rows (not its padding) are exactly the patterns 4..9
    assert min(second.seen) == 4 and sorted(set(second.seen)) == list(range(4, N)), second.seen
    np.testing.assert_array_equal(read_results(out)["value"], np.arange(N))


def test_second_writer_is_refused_and_a_dead_lock_is_taken_over(tmp_path, capsys):
    out = str(tmp_path / "o.h5")
    parts = out + ".parts"
    os.makedirs(parts)
    lock = os.path.join(parts, "lock-0.json")
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}
    with open(lock, "w") as f:
        json.dump(live, f)
    with pytest.raises(ValueError, match=rf"another batch-fit \(pid {os.getppid()} on"):
        batch_fit(_source(), RecordingFitter(), out, chunk_size=4, progress=False)
    assert not os.path.exists(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}, f)
    s = batch_fit(_source(), RecordingFitter(), out, chunk_size=4, progress=False)
    assert s.counts["ok"] == N
    assert f"took over the lock of a dead run (pid {dead.pid})" in capsys.readouterr().err
    assert not os.path.exists(lock)  # released at the end


def test_lock_refuses_while_held(tmp_path):
    with JobLock(str(tmp_path)):
        with pytest.raises(ValueError, match="another batch-fit"):
            with JobLock(str(tmp_path)):
                pass
    with JobLock(str(tmp_path)):  # free again
        pass


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    out = str(tmp_path / "o.h5")
    parts = out + ".parts"
    os.makedirs(parts)
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        os.path.join(parts, f"{TMP_PREFIX}{dead.pid}@{host}-abc.h5"),
        str(tmp_path / f"{TMP_PREFIX}{dead.pid}@{host}-x.h5"),
    ]
    alive = os.path.join(parts, f"{TMP_PREFIX}{os.getppid()}@{host}-def.h5")  # a live writer's: left alone
    other_host = os.path.join(
        parts, f"{TMP_PREFIX}{dead.pid}@another-host.example-0a1b.h5"
    )  # not ours to judge
    for p in stale + [alive, other_host]:
        open(p, "w").close()
    batch_fit(_source(), RecordingFitter(), out, chunk_size=4, progress=False)
    assert not any(os.path.exists(p) for p in stale)
    assert os.path.exists(alive) and os.path.exists(other_host)


def test_shipped_batch_configs_cover_the_shipped_dataset_configs():
    """A new user's first run: `diffscat simulate configs/dataset-ellipsoids.toml` then
    `diffscat batch-fit configs/batch-ellipsoid.toml` must search the sizes the dataset holds."""
    from diffscat.io import load_config
    from fitting._cli_batch import load_batch_config

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    ds_cfg = load_config(os.path.join(root, "dataset-ellipsoids.toml"))
    size = ds_cfg["dataset"]["vary"]["size"]
    fit_cfg = load_batch_config(os.path.join(root, "batch-ellipsoid.toml"))
    m = fit_cfg["model"]
    assert m["radius_min"] < size["low"] and m["radius_max"] > size["high"]
    delta = ds_cfg["dataset"]["vary"]["delta"]
    assert delta["low"] <= m["delta"] <= delta["high"]
    assert fit_cfg["fit"]["polarisation"] == ds_cfg["detector_model"]["polarisation"]
