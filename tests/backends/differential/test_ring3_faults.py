"""Ring-3 faults (ring3_faults.c) on both backends: KVM with LBR off (KVM alone) and recording
in both modes (ring 3 then runs on unicorn where this KVM cannot single-step it, with the
vCPU's paging and descriptor tables, so QEMU raises each fault with its error code and CR2),
and the software CPU.
SDM vol. 3A 4.7: P=1 (a protection violation, else not present), W/R=2, U/S=4; I/D=16 only
with CR4.SMEP or EFER.NXE, both clear in the Guest ABI. 6.13: #GP(selector) of a segment
load beyond the GDT limit; a second one is a #GP again (6.15: #DF only within a delivery)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from guest_runs import run_guest

from vlbr.arch.msrs import LBR_CTL_BRANCH_BITS, LbrCtl
from vlbr.arch.x86 import VECTOR_GP, VECTOR_PF
from vlbr.backends.base import StopReason
from vlbr.backends.kvm import KvmBackend
from vlbr.backends.kvm.quirks import probe_quirks
from vlbr.backends.registry import machine_for
from vlbr.guest.build import build_guest

GUEST = Path(__file__).with_name("ring3_faults.c")
NOT_PRESENT, SUPERVISOR, READ_ONLY = 0x900010, 0xB00010, 0xD00010
PF, GP = VECTOR_PF, VECTOR_GP
EXPECTED = [  # name, vector, error code, CR2
    ("np_read", PF, 0x4, NOT_PRESENT), ("np_write", PF, 0x6, NOT_PRESENT),
    ("np_fetch", PF, 0x4, NOT_PRESENT),  # no I/D: EFER.NXE and CR4.SMEP clear
    ("sup_read", PF, 0x5, SUPERVISOR), ("sup_write", PF, 0x7, SUPERVISOR),
    ("sup_fetch", PF, 0x5, SUPERVISOR), ("ro_write", PF, 0x7, READ_ONLY),
    ("gp_selector", GP, 0x1000, 0), ("gp_selector_again", GP, 0x1000, 0)]
RECORD_ALL = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR) | LBR_CTL_BRANCH_BITS
RUNS = {"kvm-lbr-off": ("kvm", 0, "step"), "kvm-step": ("kvm", RECORD_ALL, "step"),
        "kvm-hybrid": ("kvm", RECORD_ALL, "hybrid"), "software-lbr-off": ("software", 0, "step"),
        "software": ("software", RECORD_ALL, "step")}


@pytest.mark.parametrize("backend, ctl, recording", RUNS.values(), ids=RUNS.keys())
def test_ring3_faults_are_architectural(backend, ctl, recording):
    result, _ = run_guest(backend, GUEST, lbr_ctl=ctl, kvm_recording=recording)
    assert result.stops[0].reason == StopReason.EXIT
    want = [f"{n} vector {v:#x} error {e:#x} cr2 {cr2:#x}" for n, v, e, cr2 in EXPECTED]
    assert result.console[0].splitlines() == want
    if backend == "kvm" and ctl and probe_quirks().user_single_step_fails:  # ring 3 on unicorn
        assert result.stats["ring3_excursions"] == len(EXPECTED)


ALIAS_READ = r'''#include "runtime.h"
static void user_read(void) { (void)*(volatile u64 *)0x900010ull; __asm__ volatile("int 0x80"); }
int guest_main(int cpu, int ncpus) {
    ((volatile u64 *)0x3000)[4] = 0x200000ull | 0x87;  /* PD[4]: present, user, writable */
    __asm__ volatile("mov rax, cr3\n\tmov cr3, rax" ::: "rax", "memory");
    wrmsr(MSR_LBR_CTL, vlbr_lbr_ctl);
    return rt_enter_user(user_read, rt_user_stack_top()) == 0x80 ? 0 : 1;
}
'''


@pytest.mark.parametrize("recording", ["step", "hybrid"])
def test_a_page_mapped_elsewhere_reads_in_the_excursion_as_in_kvm(tmp_path, recording):
    # linear 0x900010 maps to physical 0x200010: the excursion walks the guest's page tables
    # (it ran with linear = physical, and stopped here, before it had the vCPU's paging)
    backend = KvmBackend()
    if backend.unavailable_reason() is not None:
        pytest.skip(f"KVM backend unavailable: {backend.unavailable_reason()}")
    if not probe_quirks().user_single_step_fails:
        pytest.skip("this KVM single-steps ring 3: no excursion")
    src = tmp_path / "alias.c"
    src.write_text(ALIAS_READ)
    image = build_guest(src).with_u64("vlbr_lbr_ctl", RECORD_ALL)
    plain = backend.run(image.with_u64("vlbr_lbr_ctl", 0), machine_for("kvm"))
    assert plain.ok, plain.stops  # KVM alone reads it
    result = backend.run(image, dataclasses.replace(machine_for("kvm"), kvm_recording=recording))
    assert result.ok, result.stops
    assert result.stats["ring3_excursions"] == 1
