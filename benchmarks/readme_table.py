"""README's Benchmarks table from the JSON lines of a `make bench` run (build/bench.jsonl).

Each row names the figures it shows; a figure the run did not give (a benchmark skipped, or
failed) is shown as "not measured" with the benchmark's reason, never left out silently.

Run: .venv/bin/python benchmarks/readme_table.py build/bench.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable


class Missing(Exception):
    """A figure the run did not give."""


class Figures:
    """The run's lines, found by bench, figure and any other fields they must carry."""

    def __init__(self, lines: list[dict]):
        self.lines = lines

    def __call__(self, bench: str, figure: str, **match) -> dict:
        for line in self.lines:
            if line.get("bench") == bench and line.get("figure") == figure and all(
                    line.get(k) == v for k, v in match.items()):
                if line.get("value") is None:
                    raise Missing(line.get("skipped") or line.get("detail") or "no value")
                return line
        skipped = [ln["skipped"] for ln in self.lines
                   if ln.get("bench") == bench and "skipped" in ln]
        raise Missing(skipped[0] if skipped else f"no {bench} {figure} line")


def si(value: float) -> str:
    """3 significant digits and a G/M/k prefix: 67123 -> '67.1 k'."""
    for scale, prefix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def ratio(value: float) -> str:
    return f"{value:.3g}"


def _corpus(f: Figures) -> str:
    mean, worst = f("corpus_read", "per_dump_mean"), f("corpus_read", "per_dump_max")
    return f"{mean['value'] * 1e3:.2g} ms mean, {worst['value']:.2g} s max ({worst['dump']})"


def _model(f: Figures) -> str:
    single = f("recording", "per-branch retire_branch, filters on, depth 32")["value"]
    batch = f("recording", "batch record_batch 1M trace, filters on, depth 32")["value"]
    return f"{si(single)}/s / {si(batch)}/s"


def _kvm_filter(f: Figures) -> str:
    return f"ratio {ratio(f('kvm', 'lbren_clear_loop_seconds')['ratio'])}"


def _kvm_recording(f: Figures) -> str:
    hybrid = f("kvm", "recorded_branches_per_second")
    step = f("kvm", "recorded_branches_per_second_step")
    return (f"{si(hybrid['value'])} / {si(step['value'])} branches/s "
            f"(ratio {ratio(hybrid['ratio'])})")


def _kvm_ring3(f: Figures) -> str:
    line = f("kvm", "recorded_branches_per_second_ring3")
    return (f"{si(line['value'])} / {si(line['step_branches_per_second'])} branches/s "
            f"(ratio {ratio(line['ratio'])})")


def _software_recording(f: Figures) -> str:
    rates = [f("software", figure)["value"] for figure in (
        "backend_recording_native", "backend_recording_call_stack", "backend_recording_python")]
    raw = f("software", "unhooked_unicorn")["value"]
    return (f"{' / '.join(si(r) for r in rates)} branches/s "
            f"({' / '.join(ratio(r / raw) + 'x' for r in rates)} unhooked unicorn, {si(raw)})")


def _kvm_step(f: Figures) -> str:
    line = f("kvm_step", "step_path_vs_minimal_kvm_run_loop")
    ours = f("kvm_step", "vlbr_step_path_single_steps_per_second")["value"]
    return f"ratio {ratio(line['value'])} ({si(ours)} steps/s; goal: within 2x)"


def _software_clear(f: Figures) -> str:
    return f"ratio {ratio(f('software', 'backend_lbren_clear')['ratio'])}"


def _scaling(f: Figures) -> str:
    out = []
    for path in ("native", "python"):
        depth = f("recording_scaling", "recording_seconds_deepest_vs_shallowest", path=path)
        twice = f("recording_scaling", "recording_seconds_twice_the_branches", path=path)
        out.append(f"{path} {ratio(depth['value'])} / {ratio(twice['value'])}")
    return "; ".join(out)


def _qemu_peer(f: Figures) -> str:
    qemu = f("qemu_peer", "qemu_tcg_branches_per_second")["value"]
    clear = f("qemu_peer", "software_lbren_clear_vs_qemu_tcg")["value"]
    native = f("qemu_peer", "software_recording_native_vs_qemu_tcg")["value"]
    return f"{si(qemu)} branches/s; software backend {ratio(clear)}x / {ratio(native)}x of it"


def _linux_boot(f: Figures) -> str:
    vlbr = f("linux", "linux_boot_to_workload_seconds", runner="vlbr")["value"]
    qemu = f("linux", "linux_boot_to_workload_seconds", runner="qemu-tcg")["value"]
    return f"{vlbr:.3g} s / {qemu:.2g} s (ratio {ratio(vlbr / qemu)})"


def _linux_rate(f: Figures) -> str:
    return f"{si(f('linux', 'linux_instructions_retired_per_second')['value'])}/s"


def _perf_record(f: Figures) -> str:
    line = f("perf_record", "perf_record_recorded_branches_per_second")
    return (f"{si(line['value'])}/s ({si(line['over_the_time_b_adds'])}/s over the time `-b` "
            "adds)")


def _perf_slowdown(f: Figures) -> str:
    plain = f("perf_record", "perf_record_slowdown")
    perf = f("perf_record", "perf_record_branch_stack_slowdown")
    return (f"slowdown {plain['value']:.3g} / {perf['value']:.2g} (perf itself retires "
            f"{plain['instructions_ratio']:.3g}x the loop's instructions)")


ROWS: list[tuple[str, Callable[[Figures], str]]] = [
    ("corpus read, per dump", _corpus),
    ("vCPU model, per-branch / batch (1 M branches, filters on)", _model),
    ("KVM guest, LBREn clear, with vs without vlbr's MSR filter", _kvm_filter),
    ("KVM recording at CPL0, hybrid / step (call-ret-Jcc loop, median of 5 whole runs each)",
     _kvm_recording),
    ("KVM recording in ring 3, hybrid block ring / per-instruction hook (same loop)",
     _kvm_ring3),
    ("KVM step path vs a minimal Python KVM_RUN single-step loop (same loop)", _kvm_step),
    ("software backend recording, native block ring / call-stack mode / Python hook "
     "(2 M iterations)",
     _software_recording),
    ("software backend, LBREn clear vs unhooked unicorn (2 M iterations)", _software_clear),
    ("software recording time, depth 64 vs 8 / twice the branches (should be 1 / 2)", _scaling),
    ("QEMU TCG on the same freestanding loop (a multiboot kernel)", _qemu_peer),
    ("Linux boot to the workload's first line, vlbr / QEMU TCG (same kernel and initramfs)",
     _linux_boot),
    ("vlbr PC machine, instructions retired per second (whole boot)", _linux_rate),
    ("`perf record -b` in the Linux guest (a 2 M-iteration loop): branches recorded into the "
     "Arch LBR per second", _perf_record),
    ("the same loop under `perf record -b` vs alone / vs under `perf record` without `-b`",
     _perf_slowdown),
]


def table(lines: list[dict]) -> str:
    figures = Figures(lines)
    out = ["| figure | value |", "|---|---|"]
    for label, render in ROWS:
        try:
            value = render(figures)
        except Missing as reason:
            value = f"not measured ({reason})"
        out.append(f"| {label} | {value} |")
    return "\n".join(out)


def read_lines(path: Path) -> list[dict]:
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            print(f"readme_table: {path}:{number} is not a JSON line, skipped", file=sys.stderr)
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: readme_table.py BENCH.jsonl")
    print(table(read_lines(Path(sys.argv[1]))))
