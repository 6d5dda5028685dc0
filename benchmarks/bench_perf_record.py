"""`perf record -b` in a Linux guest on vlbr: guest branches recorded per second, and the
slowdown against the same loop without perf and under perf without -b. One JSON line per figure.

One boot of Debian's kernel with Debian's perf in the initramfs (`vlbr linux --with-perf`);
the workload runs the same user-mode loop three times, each between two marks on the console:
alone, under `perf record` (sampling instructions:u), and under `perf record -b` (the same
event with a branch stack, so Linux's driver enables the virtual Arch LBR for the task). The
host notes the wall clock, the virtual time (instructions retired) and the branches vlbr
recorded into the Arch LBR model (those retired while LBREn was set at a CPL LBR_CTL records;
the model then keeps the branch types it selects) when each mark reaches the console.

Measured on this machine kind (2 shared cores, 2 M iterations): see README's Benchmarks.

Run: .venv/bin/python benchmarks/bench_perf_record.py [--iterations N] [--timeout S]
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from figures import emit as emit_line, options

PERIOD = 100_000  # instructions:u between samples, as in tests/backends/pc/programs
RECORD = f"/usr/bin/perf record -q -e instructions:u -c {PERIOD}"
MODES = {  # mode -> the command the workload runs between its marks
    "plain": "/workload loop",
    "perf": f"{RECORD} -o /tmp/perf.data /workload loop",
    "perf-b": f"{RECORD} -b -o /tmp/perf-b.data /workload loop",
}
MARK = re.compile(rb"vlbr-bench: (\S+) (start|end)(?: (-?\d+))?")
WORKLOAD_C = r'''#include <stdio.h>
#include <stdlib.h>
#define ITERATIONS %dL
static const char *modes[][2] = {%s};
int main(int argc, char **argv)
{
    if (argc > 1) {
        for (volatile long i = 0; i < ITERATIONS; i++)
            ;
        return 0;
    }
    int failed = 0;
    for (unsigned m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        printf("vlbr-bench: %%s start\n", modes[m][0]);
        fflush(stdout);
        int status = system(modes[m][1]);
        printf("vlbr-bench: %%s end %%d\n", modes[m][0], status);
        fflush(stdout);
        failed |= status != 0;
    }
    return failed;
}
'''


class Unavailable(Exception):
    """The kernel, busybox, perf or gcc cannot be had here; the message says why."""


@dataclass(frozen=True)
class Moment:
    seconds: float  # wall clock since the boot started
    instructions: int  # virtual time
    branches: int  # recorded into the Arch LBR model so far


@dataclass(frozen=True)
class Span:
    """One mode's run between its marks."""
    start: Moment
    end: Moment
    status: int  # system()'s status for the command

    @property
    def seconds(self) -> float:
        return self.end.seconds - self.start.seconds

    @property
    def instructions(self) -> int:
        return self.end.instructions - self.start.instructions

    @property
    def branches(self) -> int:
        return self.end.branches - self.start.branches


class Marks:
    """The console as it arrives; each mark's Moment, read when its line is complete."""

    def __init__(self, now: Callable[[], Moment]):
        self.now, self.partial = now, b""
        self.seen: dict[tuple[str, str], tuple[Moment, int | None]] = {}

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if (found := MARK.search(line)) is not None:
                mode, edge, status = found.groups()
                self.seen.setdefault((mode.decode(), edge.decode()),
                                     (self.now(), None if status is None else int(status)))

    def spans(self) -> dict[str, Span]:
        out = {}
        for mode in MODES:
            start, end = self.seen.get((mode, "start")), self.seen.get((mode, "end"))
            if start is not None and end is not None:
                out[mode] = Span(start[0], end[0], end[1])
        return out


@dataclass(frozen=True)
class Run:
    spans: dict[str, Span]
    detail: str  # how the boot ended


def workload_source(iterations: int) -> str:
    modes = ", ".join(f'{{"{mode}", "{command}"}}' for mode, command in MODES.items())
    return WORKLOAD_C % (iterations, modes)


def prepare_initrd(where: Path, iterations: int) -> bytes:
    from vlbr.errors import VlbrError
    from vlbr.guest.linux import compile_workload, default_initrd
    source = where / "workload.c"
    source.write_text(workload_source(iterations))
    try:
        return default_initrd(compile_workload(source), with_perf=True)
    except VlbrError as err:  # a package cannot be fetched, gcc cannot build
        raise Unavailable(str(err)) from None


def boot_vlbr(initrd: bytes, timeout: float) -> Run:
    """One boot on vlbr's PC machine, the marks read from its console as it comes."""
    from vlbr.backends.pc.loader import plan
    from vlbr.backends.pc.machine import PcMachine
    from vlbr.errors import VlbrError
    from vlbr.guest.debian import debian_kernel
    from vlbr.guest.linux import DEFAULT_CMDLINE, RAM
    try:
        kernel = debian_kernel().read_bytes()
    except VlbrError as err:
        raise Unavailable(str(err)) from None
    start = time.monotonic()
    machine = None
    marks = Marks(lambda: Moment(time.monotonic() - start, machine.clock.now,
                                 machine.recorder.branches))
    machine = PcMachine(plan(kernel, initrd, DEFAULT_CMDLINE, RAM), RAM, on_console=marks.feed)
    result = machine.run(timeout)
    return Run(marks.spans(), f"{result.stop_reason}: {result.stop_detail}")


# -- the figures ----------------------------------------------------------------------------
def emit(figure: str, value, unit: str, **extra) -> None:
    emit_line("perf_record", figure, value, unit, **extra)


def report(run: Run, iterations: int) -> bool:
    """The figures; False when a mode is missing or its command failed."""
    spans, common = run.spans, {"iterations": iterations}
    for mode in MODES:
        span = spans.get(mode)
        if span is None or span.status != 0:
            why = "no end mark" if span is None else f"the command exited {span.status}"
            emit("perf_record_workload_seconds", None, "s", mode=mode,
                 skipped=f"{why} ({run.detail})", **common)
            continue
        emit("perf_record_workload_seconds", span.seconds, "s", mode=mode,
             instructions=span.instructions, branches_recorded=span.branches,
             instructions_per_second=round(span.instructions / span.seconds), **common)
    ok = all(mode in spans and spans[mode].status == 0 for mode in MODES)
    if not ok:
        return False
    b, added = spans["perf-b"], spans["perf-b"].seconds - spans["perf"].seconds
    emit("perf_record_recorded_branches_per_second", round(b.branches / b.seconds), "branches/s",
         mode="perf-b", branches_recorded=b.branches,
         over_the_time_b_adds=round(b.branches / added) if added > 0 else None, **common)
    for figure, vs in (("perf_record_slowdown", "plain"),
                       ("perf_record_branch_stack_slowdown", "perf")):
        emit(figure, b.seconds / spans[vs].seconds, "ratio", mode="perf-b", vs=vs,
             instructions_ratio=b.instructions / spans[vs].instructions, **common)
    return True


def run(args, prepare=None, boot=None) -> int:
    """prepare(where, iterations) -> initrd and boot(initrd, timeout) -> Run: the tests' fakes."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            initrd = (prepare or prepare_initrd)(Path(tmp), args.iterations)
            result = (boot or boot_vlbr)(initrd, args.timeout)
        except Unavailable as reason:
            emit("perf_record_workload_seconds", None, "s", skipped=str(reason))
            return 0
    return 0 if report(result, args.iterations) else 1


def parse(argv: list[str] | None = None):
    return options(__doc__, argv,
                   iterations=(2_000_000, "the loop's iterations in each mode"),
                   timeout=(900.0, "wall-clock limit of the boot"))


if __name__ == "__main__":
    sys.exit(run(parse()))
