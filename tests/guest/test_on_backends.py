"""The guests on the real backends: the suite passes, hello's known loop lands exactly in the
records, and the same guest gives the same records on KVM and on the software CPU."""

from __future__ import annotations

import shutil

import pytest

from vlbr.arch.msrs import LbrInfo
from vlbr.guest.build import build_guest
from vlbr.backends.registry import BackendNotLoadable, make_backend
from vlbr.guest.conformance import machine_for, run_conformance, suite

from known_loop import known_loop_branches

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
BACKENDS = ("kvm", "software")


def backend_or_skip(name: str):
    try:
        backend = make_backend(name)
    except BackendNotLoadable as err:
        pytest.skip(f"backend {name} not importable: {err}")
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(f"backend {name} unavailable: {reason}")
    return backend


def live(records):
    return [r for r in records if any(r)]


@pytest.fixture(scope="module")
def hello():
    return build_guest("hello")


def run_hello(name, image):
    backend = backend_or_skip(name)
    result = backend.run(image, machine_for(name))
    assert result.exit_status == [0], result.console
    return result


@pytest.mark.parametrize("name", BACKENDS)
def test_suite_passes(name):
    backend = backend_or_skip(name)
    report = run_conformance(backend)
    expected = sum(len(p.checks) for p in suite())
    assert len(report.results) >= expected
    problems = [f"{r.name}: {r.detail}" for r in report.results if r.status == "fail"]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", BACKENDS)
def test_hello_records_exactly_the_known_loop(name, hello):
    result = run_hello(name, hello)
    assert "CPUID.(0x1C,0)" in result.console[0]
    want = [(frm, to) for frm, to, _ in reversed(known_loop_branches(hello))]
    got = live(result.vcpus[0].records())
    assert [(frm, to) for frm, to, _ in got] == want
    # BR_TYPE per the reference doc section 2 encodings, as the guest CPUID enumerates ECX[2].
    want_types = [kind.value for _, _, kind in reversed(known_loop_branches(hello))]
    assert [LbrInfo.decode(info).br_type for _, _, info in got] == want_types


def test_same_guest_same_records_on_both_backends(hello):
    by_backend = {name: live(run_hello(name, hello).vcpus[0].records()) for name in BACKENDS}
    assert by_backend["kvm"], "no records on kvm"
    assert by_backend["kvm"] == by_backend["software"]


def test_same_guest_same_records_with_a_filter(hello):
    calls_and_jcc = hello.with_u64("vlbr_lbr_ctl", 0x1 | 0x2 | 1 << 16 | 1 << 19)
    by_backend = {name: live(run_hello(name, calls_and_jcc).vcpus[0].records()) for name in BACKENDS}
    assert len(by_backend["kvm"]) == 5  # 3 calls and 2 taken Jcc of known_loop
    assert by_backend["kvm"] == by_backend["software"]


def _ignore_cpl(monkeypatch):
    from vlbr.vcpu import lbr
    original = lbr.ArchLbrVcpu.retire_branch
    monkeypatch.setattr(lbr.ArchLbrVcpu, "retire_branch",
                        lambda self, b: original(self, b._replace(cpl=0)))


def _depth_write_keeps_records(monkeypatch):
    from vlbr.vcpu import state
    monkeypatch.setattr(state.LbrState, "clear_records", lambda self: None)


@pytest.mark.parametrize("breakage, check", [
    (_ignore_cpl, "cpl_usr_only"),
    (_depth_write_keeps_records, "lbr_depth_write_clears"),
])
def test_suite_catches_a_broken_model(breakage, check, monkeypatch):
    # The checks can fail: break one rule of the vCPU model (reference doc section 2) under
    # the software backend and the matching check must report it.
    backend = backend_or_skip("software")
    breakage(monkeypatch)
    report = run_conformance(backend)
    status = {r.name: r.status for r in report.results}
    assert status[check] == "fail"


DATA_LOOKS_LIKE_CODE = r'''
#include "runtime.h"
/* CPUID (0F A2), INT 0x80 (CD 80) and SYSCALL (0F 05) as data: what the KVM backend patches in
   code must stay as the guest wrote it here. */
volatile const unsigned char magic[8] = {0x0f, 0xa2, 0xcd, 0x80, 0x0f, 0x05, 0x90, 0x90};
int guest_main(int cpu, int n)
{
    static const unsigned char want[8] = {0x0f, 0xa2, 0xcd, 0x80, 0x0f, 0x05, 0x90, 0x90};
    for (int i = 0; i < 8; i++)
        if (magic[i] != want[i])
            return 10 + i;
    return cpuid(0x1C, 0).eax ? 0 : 1;  /* and a real CPUID in code still answers */
}
'''


@pytest.mark.parametrize("name", BACKENDS)
def test_data_that_decodes_as_patched_instructions_is_left_alone(name, tmp_path):
    src = tmp_path / "data_like_code.c"
    src.write_text(DATA_LOOKS_LIKE_CODE)
    image = build_guest(src, use_cache=False)
    magic = image.address("magic")
    assert not any(lo <= magic < hi for lo, hi in image.code_ranges())
    backend = backend_or_skip(name)
    result = backend.run(image, machine_for(name))
    assert result.exit_status == [0], result.console
