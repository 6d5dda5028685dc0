"""The conformance runner's parsing and bookkeeping, with a stand-in backend (no guest runs)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable
from vlbr.backends.base import RunResult
from vlbr.guest import conformance as conf
from vlbr.guest.build import SOURCE_DIR
from vlbr.guest.conformance import (CheckResult, SuiteProgram, collect, parse_console,
                                    run_conformance)

PROGRAM = SuiteProgram("fake", 1, ("alpha", "beta", "gamma"))


class FakeBackend:
    name = "fake"

    def __init__(self, consoles, reason=None, statuses=None):
        self.consoles = consoles
        self.reason = reason
        self.statuses = statuses
        self.runs = []

    def unavailable_reason(self):
        return self.reason

    def run(self, image, machine):
        self.runs.append((image, machine))
        return RunResult(self.consoles, self.statuses or [0] * len(self.consoles), [], {})


def test_parse_console_reads_the_three_line_kinds_and_ignores_the_rest():
    text = "hello\nPASS alpha\nFAIL beta: record 0 is 0x1->0x2\nSKIP gamma: no XSAVES\n"
    assert parse_console(text) == [
        CheckResult("alpha", "pass", ""),
        CheckResult("beta", "fail", "record 0 is 0x1->0x2"),
        CheckResult("gamma", "skip", "no XSAVES"),
    ]


names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
details = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                  max_size=40).map(str.strip)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["PASS", "FAIL", "SKIP"]), names, details), max_size=8))
def test_parse_console_round_trips_the_protocol(lines):
    text = "".join(f"{tag} {name}" + (f": {detail}" if detail else "") + "\n"
                   for tag, name, detail in lines)
    got = parse_console(text)
    assert [(r.status, r.name, r.detail) for r in got] == \
        [(tag.lower(), name, detail) for tag, name, detail in lines]


def test_a_check_the_guest_never_reported_fails_with_how_the_run_ended():
    run = RunResult(["PASS alpha\nFAIL unexpected_exception: vector 13 at rip 0x100\n"],
                    [0x8D], [], {})
    results = collect(PROGRAM, run)
    by_name = {r.name: r for r in results}
    assert by_name["alpha"].status == "pass"
    assert by_name["beta"].status == "fail" and "exit status 141" in by_name["beta"].detail
    assert by_name["unexpected_exception"].status == "fail"  # extra lines are kept


def test_checks_are_gathered_from_every_vcpu_console():
    program = SuiteProgram("fake2", 2, ("a_0", "a_1"))
    results = collect(program, RunResult(["PASS a_0\n", "PASS a_1\n"], [0, 0], [], {}))
    assert [r.status for r in results] == ["pass", "pass"]


def test_unavailable_backend_skips_everything_with_its_reason():
    backend = FakeBackend([], reason="KVM_CREATE_VM: errno 19")
    report = run_conformance(backend, programs=[PROGRAM], build=lambda g: None)
    assert report.skipped == 3 and report.passed == report.failed == 0
    assert {r.detail for r in report.results} == {"KVM_CREATE_VM: errno 19"}
    assert backend.runs == []


def test_report_counts_and_json_shape(monkeypatch):
    monkeypatch.setattr(conf, "guest_cpuid", lambda name, depth: CpuidTable())
    backend = FakeBackend(["PASS alpha\nSKIP beta: why\nFAIL gamma: bad\n"])
    report = run_conformance(backend, programs=[PROGRAM], build=lambda g: g)
    doc = report.to_json()
    assert (doc["passed"], doc["failed"], doc["skipped"]) == (1, 1, 1)
    assert doc["backend"] == "fake"
    assert doc["results"][2] == {"name": "gamma", "status": "fail", "detail": "bad"}
    image, machine = backend.runs[0]
    assert image == "fake" and machine.vcpus == 1


def test_a_backend_exception_fails_the_programs_checks(monkeypatch):
    monkeypatch.setattr(conf, "guest_cpuid", lambda name, depth: CpuidTable())

    class Broken(FakeBackend):
        def run(self, image, machine):
            raise RuntimeError("emulator stopped")

    report = run_conformance(Broken([]), programs=[PROGRAM], build=lambda g: g)
    assert report.failed == 3
    assert "emulator stopped" in report.results[0].detail


def test_suite_has_at_least_30_checks_and_unique_names():
    # Issue 5: "an Arch LBR conformance suite ... with at least 30 checks".
    names = [n for p in conf.suite() for n in p.checks]
    assert len(names) >= 30
    assert len(set(names)) == len(names)


def test_every_listed_check_is_reported_by_its_guest_source():
    for program in conf.suite():
        source = (SOURCE_DIR / f"{program.guest}.c").read_text()
        for name in program.checks:
            templated = re.sub(r"_\d+$", "_%d", name)
            assert f'"{name}"' in source or f" {name}" in source or templated in source, name


def test_unknown_backend_name_is_a_clear_error():
    from vlbr.backends import registry
    with pytest.raises(registry.UnknownBackend, match="quantum"):
        registry.make_backend("quantum")


def test_skip_rest_skips_only_the_checks_not_yet_reported():
    run = RunResult(["FAIL alpha: no Arch LBR\nSKIP rest: no Arch LBR enumerated\n"], [1], [], {})
    results = collect(PROGRAM, run)
    assert [(r.name, r.status) for r in results] == [("alpha", "fail"), ("beta", "skip"),
                                                     ("gamma", "skip")]
    assert results[1].detail == "no Arch LBR enumerated"


def test_checks_are_named_by_the_guest_source(tmp_path):
    # The names live only in the guest (VLBR_CHECKS); a named check the guest never reports
    # fails, saying how the run ended.
    from vlbr.guest.build import build_guest
    src = tmp_path / "two_checks.c"
    src.write_text('#include "runtime.h"\nVLBR_CHECKS("alpha beta");\n'
                   'int guest_main(int c, int n) { check_pass("alpha"); return 0; }\n')
    image = build_guest(src)
    program = conf.program_of(image, 1)
    assert program == SuiteProgram("two_checks", 1, ("alpha", "beta"))
    report = run_conformance("software", programs=[program], build=lambda g: image)
    assert [(r.name, r.status) for r in report.results] == [("alpha", "pass"), ("beta", "fail")]
    assert "not reported" in report.results[1].detail
