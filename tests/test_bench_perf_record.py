"""benchmarks/bench_perf_record.py: its console marks, its JSON lines and its workload, with a
fake boot (no kernel, no timing assertions). The real boot is tests/commands' perf tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from benchmark_module import BENCHMARKS, benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_perf_record") as module:
        yield module


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def moment(bench, seconds, instructions, branches):
    return bench.Moment(seconds, instructions, branches)


def fake_run(bench, statuses=(0, 0, 0)) -> "bench.Run":
    times = {"plain": (1.0, 1.5, 10, 0), "perf": (2.0, 6.0, 1000, 0),
             "perf-b": (7.0, 19.0, 1600, 240_000)}
    spans = {}
    for (mode, (t0, t1, insns, branches)), status in zip(times.items(), statuses):
        spans[mode] = bench.Span(moment(bench, t0, 0, 5), moment(bench, t1, insns, 5 + branches),
                                 status)
    return bench.Run(spans, "halted: the guest powered off")


def run_with(bench, run, argv=()):
    return bench.run(bench.parse(list(argv)), lambda where, n: b"initrd", lambda i, t: run)


def test_the_figures_are_rates_and_ratios_of_the_marked_spans(bench, capsys):
    assert run_with(bench, fake_run(bench)) == 0
    out = lines(capsys)
    assert [(d["figure"], d.get("mode")) for d in out] == [
        ("perf_record_workload_seconds", "plain"), ("perf_record_workload_seconds", "perf"),
        ("perf_record_workload_seconds", "perf-b"),
        ("perf_record_recorded_branches_per_second", "perf-b"),
        ("perf_record_slowdown", "perf-b"), ("perf_record_branch_stack_slowdown", "perf-b")]
    assert all(d["bench"] == "perf_record" and d["iterations"] == 2_000_000 for d in out)
    assert [d["value"] for d in out] == [0.5, 4.0, 12.0, 20_000, 24.0, 3.0]
    assert out[2]["branches_recorded"] == 240_000 and out[2]["instructions_per_second"] == 133
    assert out[3]["over_the_time_b_adds"] == 30_000
    assert out[4]["vs"] == "plain" and out[4]["instructions_ratio"] == 160.0
    assert out[5]["vs"] == "perf" and out[5]["instructions_ratio"] == 1.6


def test_a_failed_command_or_a_missing_mark_fails_the_run_and_says_which(bench, capsys):
    failed = fake_run(bench, statuses=(0, 0, 256))
    del failed.spans["perf"]
    assert run_with(bench, failed) == 1
    plain, perf, perf_b = lines(capsys)
    assert plain["value"] == 0.5
    assert perf["value"] is None and perf["skipped"].startswith("no end mark (halted")
    assert perf_b["value"] is None and "exited 256" in perf_b["skipped"]


def test_a_guest_that_cannot_be_prepared_is_one_line_with_the_reason(bench, capsys):
    def no_perf(where, iterations):
        raise bench.Unavailable("apt-get download linux-perf failed")
    assert bench.run(bench.parse([]), no_perf) == 0
    (only,) = lines(capsys)
    assert only["value"] is None and "linux-perf" in only["skipped"]


def test_marks_are_read_when_their_line_is_complete_and_only_the_first_counts(bench):
    clock = iter(range(100))
    marks = bench.Marks(lambda: moment(bench, next(clock), 0, 0))
    for piece in (b"boot...\nvlbr-bench: plain st", b"art\r\nx\n", b"vlbr-bench: plain end 0\n",
                  b"vlbr-bench: plain end 0\n", b"vlbr-bench: perf start\n"):
        marks.feed(piece)
    (span,) = marks.spans().values()  # perf has no end mark
    assert (span.start.seconds, span.end.seconds, span.status) == (0, 1, 0)


def test_the_workload_runs_every_mode_between_marks_and_fails_with_a_command(bench, tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (make test installs it)")
    source = tmp_path / "w.c"
    source.write_text(bench.workload_source(1000).replace("/workload loop", "true")
                      .replace("/usr/bin/perf", "false"))
    subprocess.run([gcc, "-O2", "-o", str(tmp_path / "w"), str(source)], check=True)
    done = subprocess.run([str(tmp_path / "w")], capture_output=True)
    marks = bench.Marks(lambda: moment(bench, 0, 0, 0))
    marks.feed(done.stdout)
    spans = marks.spans()
    assert list(spans) == list(bench.MODES) and done.returncode == 1
    assert spans["plain"].status == 0 and spans["perf"].status != 0


def test_the_benchmark_runs_perf_in_a_real_guest(bench):
    """One real boot (about a minute): every figure has a value, and -b recorded the loop."""
    iterations = 100_000
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_perf_record.py"),
                           "--iterations", str(iterations)], capture_output=True, text=True,
                          timeout=900)
    out = [json.loads(line) for line in done.stdout.splitlines()]
    if len(out) == 1 and "skipped" in out[0]:
        pytest.skip(f"no guest here: {out[0]['skipped']}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(out) == 6 and all(d["value"] for d in out)
    by_mode = {d["mode"]: d for d in out if d["figure"] == "perf_record_workload_seconds"}
    assert by_mode["plain"]["branches_recorded"] == by_mode["perf"]["branches_recorded"] == 0
    assert by_mode["perf-b"]["branches_recorded"] >= iterations  # the loop's back edges
