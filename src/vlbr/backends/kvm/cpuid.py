"""Guest CPUID answered by vlbr, because the KVM here rewrites leaves 1, 7 and 0xD.

Measured on this machine (kvm_pvm): after KVM_SET_CPUID2, KVM_GET_CPUID2 returns the host's
values for leaves 1, 7.0, 7.1, 0xD.0, 0xD.1 and 0xD.15 instead of the ones set, so a guest
CPUID never shows CPUID.7.0:EDX[19] (Arch LBR), PDCM, XSAVES or XSS bit 15. KVM offers no
user-space CPUID exit, so before loading the image vlbr replaces each CPUID instruction
(0F A2) with HLT; NOP (F4 90): with no in-kernel irqchip a HLT exits to user space
(KVM_EXIT_HLT), where the runner answers from the machine's table and skips both bytes.
Found by the sweep of patching.py over the executable sections; a guest's own HLT elsewhere still stops
its vCPU.
"""

from __future__ import annotations

from iced_x86 import Code

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.xsave import XsaveLayout, XsaveLayoutError
from vlbr.backends.kvm.patching import patch_instructions

HLT_NOP = b"\xf4\x90"
CPUID = b"\x0f\xa2"
CR4_OSXSAVE = 1 << 18
LEAF1_ECX_OSXSAVE = 1 << 27


def rewritten_leaves(table_set: CpuidTable, table_got: CpuidTable) -> list[tuple[int, int]]:
    """(leaf, subleaf) rows KVM did not keep as set (KVM_SET_CPUID2 vs KVM_GET_CPUID2)."""
    return [key for key in sorted(set(table_set) | set(table_got))
            if table_set.query(*key) != table_got.query(*key)]


# CPUID (0F A2) -> HLT; NOP
CPUID_PATCH = {Code.CPUID: (CPUID[0], HLT_NOP)}


def patch_cpuid(data: bytes, base: int) -> tuple[bytes, frozenset[int]]:
    """The image with every CPUID instruction replaced by HLT; NOP, and the patched addresses."""
    out, sites = patch_instructions(data, base, [(base, base + len(data))], CPUID_PATCH)
    return out, frozenset(sites)


def answer(table: CpuidTable, leaf: int, subleaf: int, *, apic_id: int, cr4: int, xcr0: int,
           xss: int) -> Registers:
    """What CPUID returns to the guest: the table, with the fields KVM keeps current
    (kvm_update_cpuid_runtime): APIC ID, OSXSAVE and the XSAVE sizes of XCR0 / XCR0|XSS."""
    regs = table.query(leaf, subleaf)
    if regs is None:
        if leaf <= table.max_basic_leaf or leaf >= 0x8000_0000:
            return Registers()
        regs = table.regs(table.max_basic_leaf, subleaf)  # Intel: above the max, the max
    if leaf == 1:
        ecx = (regs.ecx & ~LEAF1_ECX_OSXSAVE) | (LEAF1_ECX_OSXSAVE if cr4 & CR4_OSXSAVE else 0)
        ebx = (regs.ebx & 0x00FF_FFFF) | (apic_id & 0xFF) << 24
        return Registers(regs.eax, ebx, ecx, regs.edx)
    if leaf in (0xB, 0x1F):  # x2APIC ID of this logical processor
        return Registers(regs.eax, regs.ebx, regs.ecx, apic_id)
    if leaf == 0xD and subleaf in (0, 1):
        try:
            if subleaf == 0:
                size = XsaveLayout.for_mask(table, xcr0, compacted=False).size
            else:
                size = XsaveLayout.for_mask(table, xcr0 | xss, compacted=True).size
        except XsaveLayoutError:
            return regs
        return Registers(regs.eax, size, regs.ecx, regs.edx)
    return regs
