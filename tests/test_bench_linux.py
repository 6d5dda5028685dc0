"""benchmarks/bench_linux.py's JSON lines and its QEMU console reader, with fake runners (no
kernel, no QEMU, no timing assertions)."""

from __future__ import annotations

import json
import sys

import pytest
from benchmark_module import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_linux") as module:
        yield module


def fake_guest(bench):
    return lambda where: bench.Guest(where / "vmlinuz-fake", where / "initrd", "console=ttyS0")


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_both_runners_give_times_a_ratio_and_a_rate(bench, capsys):
    vlbr = lambda guest, timeout: bench.Boot(8.0, "halted: hlt", 3.0, 400_000_000, 10.0)
    qemu = lambda guest: bench.Boot(2.0, "killed at the line")
    assert bench.run(bench.parse([]), fake_guest(bench), vlbr, qemu) == 0
    out = lines(capsys)
    assert [(d["figure"], d["runner"]) for d in out] == [
        ("linux_boot_to_workload_seconds", "vlbr"), ("linux_boot_to_workload_seconds", "qemu-tcg"),
        ("linux_boot_to_workload_ratio", "vlbr"), ("linux_instructions_retired_per_second", "vlbr")]
    assert all(d["bench"] == "linux" and "unit" in d for d in out)
    assert [d["value"] for d in out] == [8.0, 2.0, 4.0, 40_000_000]
    assert out[0]["kernel"] == "vmlinuz-fake" and out[2]["vs"] == "qemu-tcg"
    assert out[0]["init_seconds"] == 3.0


def test_without_qemu_its_line_says_why_and_the_run_still_succeeds(bench, capsys):
    def no_qemu(guest):
        raise bench.Unavailable("apt-get install -y -qq qemu-system-x86 failed: no network")
    vlbr = lambda guest, timeout: bench.Boot(8.0, "halted: hlt", 3.0, 400, 10.0)
    assert bench.run(bench.parse([]), fake_guest(bench), vlbr, no_qemu) == 0
    qemu, ratio = lines(capsys)[1:3]
    assert qemu["value"] is None and "no network" in qemu["skipped"]
    assert ratio["value"] is None and ratio["skipped"]


def test_a_vlbr_boot_that_never_prints_the_line_fails_the_run(bench, capsys):
    vlbr = lambda guest, timeout: bench.Boot(None, "timeout: no power-off within 5 s", None, 9, 5.0)
    qemu = lambda guest: bench.Boot(2.0, "killed at the line")
    assert bench.run(bench.parse(["--timeout", "5"]), fake_guest(bench), vlbr, qemu) == 1
    first = lines(capsys)[0]
    assert first["value"] is None and first["detail"].startswith("timeout")


def test_a_guest_that_cannot_be_prepared_is_one_line_with_the_reason(bench, capsys):
    def no_kernel(where):
        raise bench.Unavailable("apt-get download linux-image-cloud-amd64 failed")
    assert bench.run(bench.parse([]), no_kernel) == 0
    (only,) = lines(capsys)
    assert only["value"] is None and "linux-image" in only["skipped"]


def printer(*code: str) -> list[str]:
    return [sys.executable, "-c", "; ".join(("import sys, time", *code))]


def test_the_reader_stops_the_runner_at_the_line(bench):
    init, line = bench.INIT_LINE.decode(), bench.WORKLOAD_LINE.decode()
    boot = bench.first_line_seconds(printer(f"print({init!r}, flush=True)",
                                            f"print({line!r}, flush=True)", "time.sleep(60)"), 30)
    assert boot.seconds is not None and boot.detail == "killed at the line"
    assert boot.init_seconds is not None


def test_the_reader_says_when_the_runner_exits_or_runs_out_of_time(bench):
    exited = bench.first_line_seconds(printer("print('reboot: Power down')"), 30)
    assert exited.seconds is None and "Power down" in exited.detail
    late = bench.first_line_seconds(printer("print('still booting', flush=True)",
                                            "time.sleep(60)"), 0.5)
    assert late.seconds is None and "0.5 s" in late.detail and "still booting" in late.detail


def test_repeats_report_the_median_run(bench):
    boots = iter([bench.Boot(3.0, "a"), bench.Boot(1.0, "b"), bench.Boot(2.0, "c")])
    assert bench.median_boot(lambda: next(boots), 3).detail == "c"
