"""CPUID as a running vCPU reads it: the table its VMM set, with KVM's runtime rules.

One function for every backend (torvalds/linux arch/x86/kvm/cpuid.c: kvm_cpuid,
get_out_of_range_cpuid_entry, kvm_update_cpuid_runtime). The per-vCPU APIC ID is what a VMM
writes into each vCPU's own table (QEMU does); the backends here share one table, so it is
applied here.
"""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.x86 import (CPUID1_ECX_OSXSAVE, CPUID1_ECX_XSAVE, CPUID_D1_EAX_XSAVEC,
                           CPUID_D1_EAX_XSAVES, CR4_OSXSAVE)
from vlbr.arch.xsave import XsaveLayout, XsaveLayoutError

_AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")
_TOPOLOGY_LEAVES = (0xB, 0x1F)


def runtime_cpuid(table: CpuidTable, leaf: int, subleaf: int, *, apic_id: int, cr4: int,
                  xcr0: int, xss: int) -> Registers:
    """What CPUID returns to the guest for (leaf, subleaf) on a vCPU in this state."""
    regs = table.query(leaf, subleaf)
    if regs is None:
        leaf, regs = _absent(table, leaf, subleaf)
    if leaf == 1:
        ecx = regs.ecx
        if ecx & CPUID1_ECX_XSAVE:
            ecx = (ecx & ~CPUID1_ECX_OSXSAVE) | (CPUID1_ECX_OSXSAVE if cr4 & CR4_OSXSAVE else 0)
        ebx = (regs.ebx & 0x00FF_FFFF) | (apic_id & 0xFF) << 24
        return Registers(regs.eax, ebx, ecx, regs.edx)
    if leaf in _TOPOLOGY_LEAVES:  # EDX: the x2APIC ID of this logical processor
        return Registers(regs.eax, regs.ebx, regs.ecx, apic_id)
    if leaf == 0xD and subleaf in (0, 1):
        return _xsave_sizes(table, regs, subleaf, xcr0, xss)
    return regs


def _absent(table: CpuidTable, leaf: int, subleaf: int) -> tuple[int, Registers]:
    """A row the table lacks: Intel answers the max basic leaf above a class's maximum;
    inside the range, and always on AMD, zeros (0xB/0x1F keep ECX[7:0] = the subleaf)."""
    if table.vendor not in _AMD_VENDORS and table.query(0, 0) is not None:
        top = table.query(_class_of(leaf), 0)
        if top is None or leaf > top.eax:
            basic = table.max_basic_leaf
            found = table.query(basic, subleaf)
            if found is not None:
                return basic, found
            leaf = basic  # leaf-specific rules still apply to the redirected leaf
    if leaf in _TOPOLOGY_LEAVES and table.query(leaf, 1) is not None:
        return leaf, Registers(0, 0, subleaf & 0xFF, 0)
    return leaf, Registers()


def _class_of(leaf: int) -> int:
    if 0x4000_0000 <= leaf <= 0x4FFF_FFFF:
        return leaf & 0xFFFF_FF00
    if leaf >= 0xC000_0000:
        return 0xC000_0000
    return leaf & 0x8000_0000


def _xsave_sizes(table: CpuidTable, regs: Registers, subleaf: int, xcr0: int,
                 xss: int) -> Registers:
    """0xD.0 EBX: the standard area for XCR0; 0xD.1 EBX (with XSAVES or XSAVEC): the
    compacted area for XCR0 | IA32_XSS."""
    try:
        if subleaf == 0:
            size = XsaveLayout.for_mask(table, xcr0, compacted=False).size
        elif regs.eax & (CPUID_D1_EAX_XSAVES | CPUID_D1_EAX_XSAVEC):
            size = XsaveLayout.for_mask(table, xcr0 | xss, compacted=True).size
        else:
            return regs
    except XsaveLayoutError:
        return regs
    return Registers(regs.eax, size, regs.ecx, regs.edx)
