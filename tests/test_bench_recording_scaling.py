"""benchmarks/bench_recording_scaling.py runs (a small loop, no timing assertions): a rate per
path and depth, and the two scaling ratios per path."""

from __future__ import annotations

import json

from benchmark_module import benchmark_module


def test_every_path_gives_a_rate_per_depth_and_both_ratios(capsys):
    with benchmark_module("bench_recording_scaling") as bench:
        assert bench.run(bench.parse(["--iterations", "3000", "--repeat", "1"])) == 0
        depths, paths = bench.DEPTHS, bench.PATHS
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rates = [(d["path"], d["depth"]) for d in out
             if d["figure"] == "recording_branches_per_second"]
    assert rates == [(p, d) for p in paths for d in depths]
    for figure in ("recording_seconds_deepest_vs_shallowest",
                   "recording_seconds_twice_the_branches"):
        assert [d["path"] for d in out if d["figure"] == figure] == list(paths)
    assert all(d["value"] > 0 for d in out)
    python = [d for d in out if d["path"] == "python"]
    assert python[0]["iterations"] == 300  # a tenth of the loop on the slow path
