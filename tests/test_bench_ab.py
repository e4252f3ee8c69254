"""The bookkeeping of `benchmarks/bench_network_ab.py` (issue 17's A/B, which spans sessions): rows resume by
key, the newest row of a key is the one reported, and the reach rate and its interval are counted right."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
bench = pytest.importorskip("bench_network_ab")


def _row(key, dnll, set_id="s1", cls="SphericalHarmonics", position=20, **more):
    return {
        "key": key, "set": set_id, "class": cls, "position": position, "dnll": dnll,
        "reached": dnll <= bench.REACH_TOL, "reached_own_grid": dnll <= bench.REACH_TOL, "t_net": 10.0,
        "t_auto": 20.0, "iou_net": 0.9, "iou_auto": 0.9, "size_err_net": 0.01, **more,
    }  # fmt: skip


def test_done_keys_newest_row_wins_and_other_sets_and_cut_lines_are_skipped(tmp_path):
    out = str(tmp_path / "ab.jsonl")
    bench.append(out, _row("harmonics:45", 209.6))
    bench.append(out, _row("harmonics:46", 0.0))
    bench.append(out, _row("harmonics:47", 0.0, set_id="other"))
    bench.append(out, _row("harmonics:45", -0.5, commit="abc1234"))  # --redo: the same key again
    with open(out, "a") as f:
        f.write('{"key": "harmonics:48", "set": "s1", "dn')  # a line cut by a kill
    done = bench.done_keys(out, "s1")
    assert sorted(done) == ["harmonics:45", "harmonics:46"]
    assert done["harmonics:45"]["dnll"] == -0.5 and done["harmonics:45"]["commit"] == "abc1234"
    with open(out) as f:  # the older row stays in the file
        assert sum(1 for line in f if '"harmonics:45"' in line) == 2
    json.dumps(bench.summary(list(done.values())))  # the summary is JSON-writable


def test_summary_counts_reach_and_wilson_interval():
    rows = [_row(f"harmonics:{i}", 0.0) for i in range(48)] + [
        _row("harmonics:90", 5.0),
        _row("e:1", 0.5, cls="Ellipsoid"),
    ]
    s = bench.summary(rows)
    assert s["all"]["n"] == 50 and s["all"]["reached"] == 49
    assert s["SphericalHarmonics"]["misses"] == [("harmonics:90", 5.0)]
    assert s["all"]["ratio_sum"] == pytest.approx(2.0)
    lo, hi = s["all"]["reached_wilson95"]
    assert lo < 49 / 50 < hi and 0.88 < lo < 0.91 and hi == pytest.approx(0.9965, abs=2e-3)
    assert all(math.isnan(x) for x in bench.wilson(0, 0))  # no rows
