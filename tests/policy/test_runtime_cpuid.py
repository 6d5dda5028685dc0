"""policy.runtime_cpuid: CPUID as a running vCPU reads it, written once for both backends.

Rules from torvalds/linux arch/x86/kvm/cpuid.c (kvm_cpuid, get_out_of_range_cpuid_entry,
kvm_update_cpuid_runtime) and the SDM vol. 2A CPUID description."""

from __future__ import annotations

import pytest

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.x86 import CPUID1_ECX_OSXSAVE, CPUID1_ECX_XSAVE, CR4_OSXSAVE
from vlbr.policy.runtime_cpuid import runtime_cpuid

INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)  # "GenuineIntel" in EBX, ECX, EDX
AMD = (0x68747541, 0x444D4163, 0x69746E65)  # "AuthenticAMD"


def table(vendor=INTEL, max_basic=0x14, max_ext=0x8000_0008, **rows) -> CpuidTable:
    ebx, ecx, edx = vendor
    base = {(0, 0): Registers(max_basic, ebx, ecx, edx),
            (1, 0): Registers(0x906A3, 0x00100800, CPUID1_ECX_XSAVE | 1, 0),
            (0xB, 0): Registers(1, 1, 0x100, 0), (0xB, 1): Registers(4, 2, 0x201, 0),
            (max_basic, 0): Registers(0x11, 0x22, 0x33, 0x44),
            (0x8000_0000, 0): Registers(max_ext, 0, 0, 0)}
    base.update(rows)
    return CpuidTable(base)


def ask(t, leaf, subleaf=0, apic_id=0, cr4=0, xcr0=3, xss=0):
    return runtime_cpuid(t, leaf, subleaf, apic_id=apic_id, cr4=cr4, xcr0=xcr0, xss=xss)


def test_intel_above_the_basic_maximum_reads_the_max_basic_leaf():
    # get_out_of_range_cpuid_entry: "the effective CPUID entry is the max basic leaf".
    t = table()
    assert ask(t, 0x15) == ask(t, 0x14) == Registers(0x11, 0x22, 0x33, 0x44)
    assert ask(t, 0x8000_0009) == Registers(0x11, 0x22, 0x33, 0x44)  # above the max extended
    assert ask(t, 0x4000_0000) == Registers(0x11, 0x22, 0x33, 0x44)  # no hypervisor class


def test_absent_rows_inside_a_range_read_zero():
    # "if (class && function <= class->eax) return NULL": zeros, not the max basic leaf.
    t = table()
    assert ask(t, 5) == Registers() and ask(t, 0x8000_0005) == Registers()


def test_amd_never_redirects():
    # "if (is_guest_vendor_amd(vcpu) || is_guest_vendor_hygon(vcpu)) return NULL".
    assert ask(table(vendor=AMD), 0x15) == Registers()


def test_topology_leaves_keep_the_subleaf_and_carry_the_x2apic_id():
    # kvm_cpuid: for undefined subleaves of 0xB/0x1F, "CL is pass-through"; EDX is the x2APIC ID.
    t = table()
    assert ask(t, 0xB, 5, apic_id=3) == Registers(0, 0, 5, 3)
    assert ask(t, 0xB, 1, apic_id=3).edx == 3


def test_leaf1_apic_id_and_osxsave_follow_the_vcpu():
    # kvm_update_cpuid_runtime: OSXSAVE follows CR4.OSXSAVE; EBX[31:24] is the initial APIC ID.
    t = table()
    off, on = ask(t, 1, apic_id=2), ask(t, 1, apic_id=2, cr4=CR4_OSXSAVE)
    assert not off.ecx & CPUID1_ECX_OSXSAVE and on.ecx & CPUID1_ECX_OSXSAVE
    assert on.ebx >> 24 == 2 and on.ebx & 0xFFFFFF == 0x100800


def test_xsave_sizes_follow_xcr0_and_xss_with_xsavec_or_xsaves():
    # kvm_update_cpuid_runtime: 0xD.0 EBX = xstate_required_size(xcr0, false); 0xD.1 EBX =
    # xstate_required_size(xcr0 | xss, true) when XSAVES or XSAVEC is enumerated.
    avx = {(0xD, 0): Registers(7, 0, 832, 0), (0xD, 2): Registers(256, 576, 0, 0)}
    for eax1 in (1 << 1, 1 << 3):  # XSAVEC, XSAVES
        t = CpuidTable({**dict(table().items()), **avx, (0xD, 1): Registers(eax1 | 1, 0, 0, 0)})
        assert ask(t, 0xD, 0, xcr0=3).ebx == 576 and ask(t, 0xD, 0, xcr0=7).ebx == 832
        assert ask(t, 0xD, 1, xcr0=7).ebx == 832
    plain = CpuidTable({**dict(table().items()), **avx, (0xD, 1): Registers(1, 0, 0, 0)})
    assert ask(plain, 0xD, 1, xcr0=7).ebx == 0  # XSAVEOPT only: EBX as the table has it


@pytest.mark.parametrize("backend", ["software", "kvm"])
def test_both_backends_answer_cpuid_through_it(backend, tmp_path):
    # One rule for both (issue: one x86 core): a guest reading out-of-range leaves and its
    # APIC ID on two vCPUs sees exactly runtime_cpuid's answers on either backend.
    from vlbr.guest.build import build_guest
    from vlbr.backends.registry import make_backend
    from vlbr.guest.conformance import machine_for
    b = make_backend(backend)
    if b.unavailable_reason() is not None:
        pytest.skip(f"{backend}: {b.unavailable_reason()}")
    src = tmp_path / "cpuid_probe.c"
    src.write_text('#include "runtime.h"\nint guest_main(int cpu, int n) {\n'
                   '  u32 leaves[] = {1, 0x7fffffff, 0x80000099, 0x40000000};\n'
                   '  for (int i = 0; i < 4; i++) { struct cpuid_regs r = cpuid(leaves[i], 0);\n'
                   '    rt_printf("%x %x %x %x\\n", r.eax, r.ebx, r.ecx, r.edx); }\n'
                   '  return 0; }\n')
    machine = machine_for(backend, vcpus=2)
    result = b.run(build_guest(src), machine)
    assert result.ok, result.stops
    for n, console in enumerate(result.console):
        want = []
        for leaf in (1, 0x7FFF_FFFF, 0x8000_0099, 0x4000_0000):
            r = ask(machine.cpuid, leaf, apic_id=n, cr4=entry_cr4(), xcr0=3, xss=0)
            want.append(f"{r.eax:#x} {r.ebx:#x} {r.ecx:#x} {r.edx:#x}")
        assert console.splitlines() == want


def entry_cr4() -> int:
    from vlbr.backends.layout import entry_state
    return entry_state(0, 1, 0x100000).cr4
