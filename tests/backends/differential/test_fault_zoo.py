"""The same faults on both backends: vector, error code, faulting RIP and CR2 (fault_zoo.c).

Each line is checked against the architecture, not only across backends (both could be
wrong alike): SDM vol. 3A 4.7 (#PF error code: P=1, W/R=2, U/S=4, I/D=16), 6.13 (#GP error
code of a selector: its index, TI, EXT; of a gate: vector * 8 | IDT), vol. 2 INT n in IA-32e
mode (the gate's type is checked first, #GP for a zero gate; then DPL < CPL of a software
interrupt, #GP; then P, #NP; as QEMU's target/i386 do_interrupt64), 17.3.1.2 (ICEBP is a trap-like #DB), 13.12 (XRSTORS with XCOMP_BV[63]
clear: #GP(0)), 13.8.1 and vol. 2 XRSTOR/XSAVE (the standard form's header and alignment
#GP(0))."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guest_runs import run_guest
from vlbr.backends.base import StopReason
from vlbr.guest.build import build_guest
from vlbr.backends.registry import make_backend
from vlbr.guest.conformance import machine_for

ZOO = Path(__file__).with_name("fault_zoo.c")
BACKENDS = ("software", "kvm")
# name -> (vector, error code, CR2); None: not checked on that field
EXPECTED = {
    "pf_not_present_read": (0xE, 0x0, 0x300010),
    "pf_not_present_write": (0xE, 0x2, 0x300010),
    "pf_protection_write": (0xE, 0x3, 0x300010),
    "pf_user_read_supervisor": (0xE, 0x5, 0x300010),
    "pf_user_write_read_only": (0xE, 0x7, 0x300010),
    "int_dpl3_gate_from_ring3": (0x80, 0x0, None),
    "int_dpl0_gate_from_ring3": (0xD, 0x81 * 8 + 2, None),
    "gp_selector_beyond_gdt": (0xD, 0x1000, None),
    "db_icebp": (0x1, 0x0, None),
    "gp_int_without_gate": (0xD, 0x90 * 8 + 2, None),
    "np_int_not_present_gate": (0xB, 0x91 * 8 + 2, None),
    "int_not_present_dpl0_gate_from_ring3": (0xD, 0x91 * 8 + 2, None),
    "int_not_present_dpl3_gate_from_ring3": (0xB, 0x92 * 8 + 2, None),
    "db_trap_flag": (0x1, 0x0, None),
    "xrstors_standard_header_gp": (0xD, 0x0, None),
    "xrstor_xstate_bv_outside_xcr0_gp": (0xD, 0x0, None),
    "xrstor_xcomp_bv_gp": (0xD, 0x0, None),
    "xrstor_reserved_header_gp": (0xD, 0x0, None),
    "xsave_misaligned_gp": (0xD, 0x0, None),
}
_LINE = re.compile(r"^(\w+) vector (0x\w+) error (0x\w+)(?: rip (0x\w+))? cr2 (0x\w+)$")
# SYSCALL (SDM vol. 2B): RCX = the next RIP, R11 = RFLAGS (0x2 at the ring-3 entry), CS/SS from
# STAR[47:32] (0x08, 0x10); SYSRET back to ring 3, which leaves through INT 0x80.
SYSCALL_LINE = "syscall_sysret vector 0x80 rcx_is_next 1 r11 0x2 cs 0x8 ss 0x10"
XSAVE_LINES = ["xsave_standard fcw 0x37f mxcsr 0x1f80 xmm0_saved 1 sse_in_use 1 restored 1",
               "xrstor_sse_init xmm0_zero 1 mxcsr 0x1fa0"]


@pytest.fixture(scope="module")
def consoles() -> dict[str, list[str]]:
    image = build_guest(ZOO)
    out = {}
    for name in BACKENDS:
        backend = make_backend(name)
        if backend.unavailable_reason() is not None:
            continue
        result = backend.run(image, machine_for(name))
        assert result.stops[0].reason == StopReason.EXIT and result.ok, (name, result.stops)
        out[name] = result.console[0].splitlines()
    if not out:
        pytest.skip("no backend can run here")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_fault_is_the_architectural_one(backend, consoles):
    if backend not in consoles:
        pytest.skip(f"backend {backend} unavailable: {make_backend(backend).unavailable_reason()}")
    seen = {}
    lines = consoles[backend]
    assert lines[-1] == SYSCALL_LINE
    for line in lines[:-1]:
        m = _LINE.match(line)
        assert m, line
        seen[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16), int(m.group(5), 16))
    assert seen.keys() == EXPECTED.keys()
    for name, (vector, error, cr2) in EXPECTED.items():
        got = seen[name]
        assert got[:2] == (vector, error), (name, got)
        if cr2 is not None:
            assert got[2] == cr2, (name, hex(got[2]))


def test_both_backends_give_identical_lines(consoles):
    if len(consoles) < 2:
        pytest.skip("needs both backends")
    assert consoles["software"] == consoles["kvm"]


def test_cr2_survives_the_software_backends_own_stops(tmp_path):
    # unicorn reads CR2 as -2 after any stop (an emulated RDMSR here): the backend keeps the
    # guest's value (found with fault_zoo.c, where CR2 read -2 after every fault).
    src = tmp_path / "cr2.c"
    src.write_text('#include "runtime.h"\nint guest_main(int c, int n) { u64 v;\n'
                   '  __asm__ volatile("mov cr2, %0" :: "r"(0x1234ull));\n'
                   '  rdmsr_safe(0x14ce, &v); rdmsr_safe(0x10, &v);\n'
                   '  __asm__ volatile("mov %0, cr2" : "=r"(v)); return v == 0x1234 ? 0 : 1; }\n')
    result = make_backend("software").run(build_guest(src), machine_for("software"))
    assert result.ok, (result.exit_status, result.stops)


@pytest.mark.parametrize("backend", BACKENDS)
def test_xsave_and_xrstor_standard_form(backend):
    # The software CPU runs XSAVE/XRSTOR itself (MXCSR from the Guest ABI's 0x1F80 entry
    # value: unicorn started it at 0); a KVM that cannot run them in a guest (kvm_pvm:
    # KVM_EXIT_INTERNAL_ERROR) has them completed by vlbr.x86.xstate, and must agree.
    result, _ = run_guest(backend, ZOO.with_name("xsave_standard.c"))
    assert result.lines() == XSAVE_LINES
