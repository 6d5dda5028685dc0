"""Vm / Vcpu ioctl objects and the CPUID patcher, against KVM's own answers here."""

from __future__ import annotations

from kvm_machine import guest_cpuid
from guest_asm import Asm, R, image
from hypothesis import given, settings, strategies as st
from iced_x86 import Code, Decoder

from vlbr.backends.kvm.cpuid import HLT_NOP, patch_cpuid, rewritten_leaves
from vlbr.backends.kvm.ioctls import Vm
from vlbr.backends.kvm.ioctls import MsrRead
from vlbr.backends.kvm.machine import create_machine
from vlbr.host import kvm as k
from vlbr.host.kvm import Kvm, cpuid_table


def _run_until_not_io(vcpu):
    while True:
        exit_ = vcpu.run()
        if exit_.reason != k.KVM_EXIT_IO or exit_.port == 0xF4:
            return exit_


def test_msr_filter_exits_exactly_the_denied_msrs():
    # Documentation/virt/kvm/api.rst KVM_X86_SET_MSR_FILTER: a denied MSR exits to user space
    # with KVM_MSR_EXIT_REASON_FILTER (4); IA32_TSC (0x10) is allowed and KVM answers it.
    a = Asm().rdmsr(0x10).rdmsr(0x14CF).exit(R.EAX)
    with Kvm() as kvm:
        vm, memory, _, (vcpu,) = create_machine(kvm, image(a), guest_cpuid(), 1)
        vm.enable_cap(k.KVM_CAP_X86_USER_SPACE_MSR, k.KVM_MSR_EXIT_REASON_FILTER)
        vm.set_msr_filter({0x14CF})
        read = _run_until_not_io(vcpu)
        assert read.reason == k.KVM_EXIT_X86_RDMSR and isinstance(read, MsrRead)
        msr = vcpu.run_struct.msr
        assert (read.index, msr.reason) == (0x14CF, k.KVM_MSR_EXIT_REASON_FILTER)
        vcpu.complete_msr(0x20)
        out = _run_until_not_io(vcpu)
        assert out.reason == k.KVM_EXIT_IO
        assert int.from_bytes(out.data, "little") == 0x20  # msr.data reached EDX:EAX
        vcpu.close()
        vm.close()


def test_xcrs_and_sregs_round_trip():
    with Kvm() as kvm:
        vm, _, _, (vcpu,) = create_machine(kvm, image(Asm().exit(status=0)), guest_cpuid(), 1)
        assert vcpu.get_xcrs()[0] == 0x3  # Guest ABI: XCR0 = x87 | SSE
        sregs = vcpu.get_sregs()
        assert (sregs.cs.selector, sregs.cs.l, sregs.tr.selector, sregs.efer & 0x500) == (
            0x08, 1, 0x28, 0x500)
        assert vcpu.get_msrs([0xC0000080])[0xC0000080] & 0x500 == 0x500  # EFER LME|LMA
        vcpu.close()
        vm.close()


def test_kvm_here_rewrites_some_cpuid_leaves():
    # The measurement behind backends/kvm/cpuid.py: what KVM_GET_CPUID2 gives back differs from
    # what KVM_SET_CPUID2 was given in leaf 7.0 (Arch LBR bit) on this KVM; leaf 0x1C is kept.
    table = guest_cpuid()
    with Kvm() as kvm, Vm(kvm) as vm:
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid2(table)
        got = k.kvm_cpuid2(256)
        k.ioctl(vcpu.fd, k.KVM_GET_CPUID2, got)
        back = cpuid_table(got.entries[:got.nent])
        vcpu.close()
    changed = rewritten_leaves(table, back)
    assert (0x1C, 0) not in changed
    assert back.regs(0x1C) == table.regs(0x1C)
    if (7, 0) not in changed:  # a KVM that keeps it: the patch is harmless either way
        assert back.regs(7).edx >> 19 & 1


@settings(max_examples=100)
@given(st.binary(min_size=0, max_size=64))
def test_cpuid_patch_only_touches_decoded_cpuid(data):
    patched, sites = patch_cpuid(data, 0x100000)
    assert len(patched) == len(data)
    cpuid_at = {i.ip for i in Decoder(64, data, ip=0x100000) if i.code == Code.CPUID}
    assert sites == cpuid_at
    for i in range(len(data)):
        inside = any(0 <= i - (s - 0x100000) < 2 for s in sites)
        if not inside:
            assert patched[i] == data[i]
    for s in sites:
        assert patched[s - 0x100000:s - 0x100000 + 2] == HLT_NOP


@settings(max_examples=100)
@given(st.binary(min_size=0, max_size=64))
def test_trap_patch_only_touches_decoded_int_and_syscall(data):
    from vlbr.backends.kvm.traps import OUT_TRAP, patch_traps
    patched, sites = patch_traps(data, 0x100000)
    assert len(patched) == len(data)
    want = {i.ip for i in Decoder(64, data, ip=0x100000)
            if i.code in (Code.INT_IMM8, Code.SYSCALL) and i.len == 2}
    assert set(sites) == want
    for at, insn in sites.items():
        assert patched[at - 0x100000:at - 0x100000 + 2] == OUT_TRAP
        assert data[at - 0x100000] in (0xCD, 0x0F)  # INT imm8 / SYSCALL as the guest wrote it
    untouched = [i for i in range(len(data)) if not any(0 <= i - (a - 0x100000) < 2 for a in sites)]
    assert all(patched[i] == data[i] for i in untouched)


def test_get_cpuid2_returns_what_kvm_kept():
    # KVM_GET_CPUID2 after KVM_SET_CPUID2: leaf 0 is never rewritten; on a KVM with quirk
    # cpuid_rewritten some rows differ (backends/kvm/quirks.py), and the probe says which.
    from vlbr.backends.kvm.cpuid import rewritten_leaves
    from vlbr.backends.kvm.ioctls import Vm
    from vlbr.backends.kvm.quirks import probe_quirks
    table = guest_cpuid()
    with Kvm() as kvm, Vm(kvm) as vm:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(table)
            kept = vcpu.get_cpuid2()
        finally:
            vcpu.close()
    assert kept.regs(0) == table.regs(0)
    assert bool(rewritten_leaves(table, kept)) == probe_quirks().cpuid_rewritten
