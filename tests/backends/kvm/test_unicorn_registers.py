"""Both unicorn CPUs of the KVM backend carry every general register both ways through the one
adapter (software/uc_registers.py): the hybrid's stretch (HybridCpu.load/store, on a real
vCPU) and the ring-3 excursion in both modes (UserMode.enter/user_regs). Each runs `not r15`
and must give back all the other registers as they went in."""

from __future__ import annotations

import pytest
from kvm_machine import machine_config

from vlbr.arch.x86 import RFLAGS_FIXED, RFLAGS_IF, RFLAGS_TF
from vlbr.backends.base import IMAGE_BASE, PORT_EXIT
from vlbr.backends.image import GuestImage
from vlbr.backends.kvm import hybrid, usermode
from vlbr.backends.kvm.machine import create_machine
from vlbr.backends.kvm.runner import VcpuRunner
from vlbr.host.kvm import Kvm, kvm_regs
from vlbr.vcpu import ArchLbrVcpu

NOT_R15, OUT_DX_EAX, HLT = bytes.fromhex("49f7d7"), b"\xef", b"\xf4"
MASK = (1 << 64) - 1
USER_CS, USER_SS = 0x23, 0x1B  # the Guest ABI's ring-3 selectors


def distinct_regs(rip: int) -> kvm_regs:
    regs = kvm_regs(**{name: 0x0A0B_0C0D_0000_0000 | i << 12
                       for i, (name, _) in enumerate(kvm_regs._fields_)})
    regs.rdx, regs.rip, regs.rflags = PORT_EXIT, rip, RFLAGS_FIXED | RFLAGS_IF
    return regs


def assert_carried(before: kvm_regs, after: kvm_regs, rsp: int) -> None:
    for name, _ in kvm_regs._fields_:
        if name in ("rip", "rflags", "rsp", "r15"):
            continue
        assert getattr(after, name) == getattr(before, name), name
    assert after.r15 == ~before.r15 & MASK
    assert after.rsp == rsp
    assert after.rflags & ~RFLAGS_TF == after.rflags  # unicorn never ran with TF


def test_hybrid_stretch_carries_every_register():
    config = machine_config()
    code = IMAGE_BASE
    img = GuestImage(NOT_R15 + HLT, code, code)
    with Kvm() as kvm:
        vm, memory, _, (vcpu,) = create_machine(kvm, img, config.cpuid, 1)
        try:
            cpu = hybrid.HybridCpu(memory, ArchLbrVcpu(config.lbr))
            before = distinct_regs(code)
            cpu.load(vcpu, before, vcpu.get_sregs())
            stop = cpu.run(100, lambda: False)
            assert (stop.kind, stop.rip) == ("before", code + len(NOT_R15))  # HLT is KVM's
            after = kvm_regs()
            cpu.store(vcpu, after)
            assert_carried(before, after, before.rsp)
            assert after.rip == stop.rip
            assert vcpu.get_regs().r15 == after.r15  # store() also set the vCPU's
        finally:
            vm.close()


@pytest.mark.parametrize("fast", [False, True], ids=["step", "hybrid"])
def test_ring3_excursion_carries_every_register(fast):
    # A real vCPU: the excursion takes KVM's system state (paging, GDT, TR and its I/O
    # bitmap, which opens PORT_EXIT to ring 3) and x87/SSE from it.
    config = machine_config()
    img = GuestImage(NOT_R15 + OUT_DX_EAX, IMAGE_BASE, IMAGE_BASE)
    with Kvm() as kvm:
        vm, memory, sites, (vcpu,) = create_machine(kvm, img, config.cpuid, 1)
        try:
            runner = VcpuRunner(vcpu, ArchLbrVcpu(config.lbr), memory, False, config.cpuid,
                                sites)
            user = usermode.UserMode(runner, fast=fast)
            before = distinct_regs(0)  # the IRETQ's own state: its frame gives RIP, RSP, RFLAGS
            frame = (IMAGE_BASE, USER_CS, RFLAGS_IF | RFLAGS_TF, 0x6F_0000, USER_SS)
            leave = user.enter(0xDEAD, before, frame)
            assert (leave.kind, leave.return_ip) == ("exit", before.rax & 0xFFFF_FFFF)
            after = kvm_regs()
            user.user_regs(after)
            assert_carried(before, after, frame[3])
        finally:
            vm.close()
