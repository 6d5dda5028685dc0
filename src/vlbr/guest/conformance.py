"""The Arch LBR conformance runner: build the suite's guests, run them on a backend, and turn
their console lines (PASS/FAIL/SKIP, docs/design.md) into a report."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from vlbr.backends.base import DEFAULT_TIMEOUT, Backend, BackendUnavailable, RunResult
from vlbr.backends.registry import (DEFAULT_DEPTH, BackendNotLoadable, guest_cpuid,
                                    machine_for, make_backend)

from .build import build_guest
from vlbr.backends.image import GuestImage

STATUSES = ("pass", "fail", "skip")
REST = "rest"  # `SKIP rest: reason` skips every check the program has not reported yet
_LINE = re.compile(r"^(PASS|FAIL|SKIP) ([A-Za-z0-9_.\-]+)(?:: ?(.*))?$")


@dataclass(frozen=True)
class SuiteProgram:
    """One guest program of the suite, the vCPUs it needs and the checks it must report."""

    guest: str
    vcpus: int
    checks: tuple[str, ...]


# The suite as data: each guest program and the vCPUs it runs on. The checks each reports
# are named in its source (VLBR_CHECKS in guest/src/*.c) and read from the built image.
SUITE_GUESTS = {"conformance": 1, "smp": 2}
CHECKS_SYMBOL = "vlbr_checks"


def program_of(image: GuestImage, vcpus: int) -> SuiteProgram:
    """The suite program an image is: its name, vCPUs and the checks its source names."""
    return SuiteProgram(image.name, vcpus, tuple(image.read_cstring(CHECKS_SYMBOL).split()))


@functools.cache
def suite() -> tuple[SuiteProgram, ...]:
    """Every program of the suite, built (gcc; images are cached) to read its checks."""
    return tuple(program_of(build_guest(g), n) for g, n in SUITE_GUESTS.items())


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class ConformanceReport:
    backend: str
    results: list[CheckResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def passed(self) -> int:
        return self.count("pass")

    @property
    def failed(self) -> int:
        return self.count("fail")

    @property
    def skipped(self) -> int:
        return self.count("skip")

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict:
        return {"backend": self.backend, "results": [r.to_json() for r in self.results],
                "passed": self.passed, "failed": self.failed, "skipped": self.skipped}


def parse_console(text: str) -> list[CheckResult]:
    """Every PASS/FAIL/SKIP line of a console, in order; other lines are ignored."""
    results = []
    for line in text.splitlines():
        m = _LINE.match(line.rstrip("\r"))
        if m:
            results.append(CheckResult(m.group(2), m.group(1).lower(), (m.group(3) or "").strip()))
    return results


def collect(program: SuiteProgram, run: RunResult) -> list[CheckResult]:
    """The program's expected checks in order, each as its guest reported it; a check never
    reported (the guest crashed or stopped early) is a failure that says how the run ended,
    unless the guest skipped the rest (`SKIP rest: reason`).
    Lines for names the suite does not list (e.g. unexpected_exception) are kept as reported."""
    reported: dict[str, CheckResult] = {}
    extra: list[CheckResult] = []
    for console in run.console:
        for result in parse_console(console):
            if result.name == REST and result.status == "skip":
                for name in program.checks:
                    reported.setdefault(name, CheckResult(name, "skip", result.detail))
            elif result.name in program.checks and result.name not in reported:
                reported[result.name] = result
            elif result.name not in program.checks:
                extra.append(result)
    ending = _how_it_ended(run)
    results = [reported.get(name) or CheckResult(name, "fail", f"not reported by guest "
                                                 f"{program.guest}: {ending}")
               for name in program.checks]
    return results + extra


def _how_it_ended(run: RunResult) -> str:
    parts = []
    for n, status in enumerate(run.exit_status):
        lines = run.console[n].splitlines() if n < len(run.console) else []
        last = f", last line {lines[-1]!r}" if lines else ", no console output"
        state = "never exited" if status is None else f"exit status {status}"
        if n < len(run.stops) and run.stops[n] is not None and status is None:
            state = f"stopped: {run.stops[n]}"
        parts.append(f"vCPU {n} {state}{last}")
    return "; ".join(parts) or "no vCPU ran"




def all_skipped(backend_name: str, reason: str,
                programs: Iterable[SuiteProgram] | None = None) -> ConformanceReport:
    return ConformanceReport(backend_name, [CheckResult(name, "skip", reason)
                                            for p in programs or suite() for name in p.checks])


def run_conformance(backend: Backend | str, *, depth: int | None = DEFAULT_DEPTH,
                    programs: Iterable[SuiteProgram] | None = None,
                    build: Callable[[str], GuestImage] = build_guest,
                    on_result: Callable[[RunResult, SuiteProgram], None] | None = None,
                    timeout: float = DEFAULT_TIMEOUT) -> ConformanceReport:
    """Run every suite program on the backend; an unavailable backend gives all-skip with
    its reason."""
    programs = tuple(programs) if programs is not None else suite()
    if isinstance(backend, str):
        try:
            backend = make_backend(backend)
        except BackendNotLoadable as err:
            return all_skipped(backend, str(err), programs)
    reason = backend.unavailable_reason()
    if reason is not None:
        return all_skipped(backend.name, reason, programs)
    report = ConformanceReport(backend.name)
    table = guest_cpuid(backend.name, depth)
    for program in programs:
        image = build(program.guest)
        try:
            run = backend.run(image, machine_for(backend.name, program.vcpus, cpuid=table,
                                                 timeout=timeout))
        except BackendUnavailable as err:
            report.results += all_skipped(backend.name, str(err), (program,)).results
            continue
        except Exception as err:  # a backend failure fails its checks; the report goes on
            detail = f"backend {backend.name} failed running {program.guest}: {type(err).__name__}: {err}"
            report.results += [CheckResult(name, "fail", detail) for name in program.checks]
            continue
        if on_result is not None:
            on_result(run, program)
        report.results += collect(program, run)
    return report
