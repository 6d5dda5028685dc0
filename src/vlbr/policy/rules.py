"""KVM's Arch LBR rules, one small function per decision, each next to its reason.

Read top to bottom like KVM's arch/x86/kvm/cpuid.c: the capability, leaf 0x1C, the supported
XSS mask, component 15, the MSRs to save. Variants differ only in which rule they pick
(see variants.py). Facts: docs arch-lbr-reference.md sections 1-4."""

from __future__ import annotations

from vlbr.arch.bits import fls
from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import ARCH_LBR_LEAF, arch_lbr_leaf
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_LBR_DEPTH, IA32_XSS, arch_lbr_msrs
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, arch_lbr_state_size

from .host import ARCH_LBR_BIT, HostDescription

XFEATURE_MASK_CET_USER = 1 << 11
XFEATURE_MASK_CET_KERNEL = 1 << 12
XFEATURE_MASK_LBR = 1 << ARCH_LBR_COMPONENT
# The supervisor states mainline KVM virtualizes (Linux 6.18: CET). The Firecracker guest view
# of a 6.18 Granite Rapids host shows exactly these in CPUID.(0xD,1):ECX.
KVM_SUPPORTED_XSS_MAINLINE = XFEATURE_MASK_CET_USER | XFEATURE_MASK_CET_KERNEL
# The Arch LBR series adds component 15 to what KVM can virtualize.
KVM_SUPPORTED_XSS_ARCH_LBR = KVM_SUPPORTED_XSS_MAINLINE | XFEATURE_MASK_LBR

DEPTH_BITS = 0xFF  # CPUID.0x1C:EAX[7:0]
LEAF_1C_ECX_DEFINED = 0x7  # MISPRED, timed LBR, BR_TYPE; 19:16 is event logging


# --- the ARCH_LBR capability (kvm_cpu_cap X86_FEATURE_ARCH_LBR) ---------------------------------

def vmx_has_arch_lbr(host: HostDescription) -> bool:
    """cpu_has_vmx_arch_lbr(): KVM needs both controls. Without "load guest IA32_LBR_CTL" the
    guest's LBR_CTL is not in force after VM entry; without "clear IA32_LBR_CTL" host branches
    after VM exit land in the guest's records."""
    return host.load_lbr_ctl and host.clear_lbr_ctl


def arch_lbr_capability(host: HostDescription) -> bool:
    """The series offers ARCH_LBR when the host has it (kvm_cpu_cap_mask ANDs with the host's
    CPUID), the VMX controls exist, and the host enumerates at least one depth (an empty
    bitmap leaves KVM nothing to pin the guest to)."""
    return host.arch_lbr and vmx_has_arch_lbr(host) and arch_lbr_leaf(host.table).depth_mask != 0


def mainline_arch_lbr_capability(host: HostDescription) -> bool:
    """Mainline KVM never merged the series: ARCH_LBR is hidden on every host."""
    return False


def leaf_7_0(table: CpuidTable, capability: bool) -> Registers:
    """CPUID.7.0:EDX[19] says exactly what the capability says."""
    r = table.regs(0x7, 0)
    edx = r.edx | ARCH_LBR_BIT if capability else r.edx & ~ARCH_LBR_BIT
    return Registers(r.eax, r.ebx, r.ecx, edx)


# --- leaf 0x1C: one depth ------------------------------------------------------------------------

def depth_bit_email_v2(mask: int) -> int:
    """The Feb 2021 email: `1 << fls(mask)`. fls is 1-based, so this names the depth above the
    host's maximum (0x0b -> 0x10, depth 40), and when bit 7 is the top bit it lands in bit 8,
    outside EAX[7:0]: the `& 0xff` that writes it back leaves the guest no depth at all."""
    return (1 << fls(mask)) & DEPTH_BITS if mask else 0


def depth_bit_v3(mask: int) -> int:
    """v3: `1 << (fls(mask) - 1)`, the host's maximum depth. KVM offers only that one, never a
    smaller one, because the host perf driver runs the hardware at its maximum and XRSTORS
    clears the records when the saved depth differs from IA32_LBR_DEPTH."""
    return 1 << (fls(mask) - 1) if mask else 0


def leaf_1c_zero() -> Registers:
    """Without the capability KVM zeroes leaf 0x1C: a guest must see no depth and no bits."""
    return Registers()


def leaf_1c_passthrough(table: CpuidTable, depth_bit: int) -> Registers:
    """email-v2 and v3: only the depth bitmap changes; EAX[31:8], EBX, ECX and EDX are the
    host's, since the hardware does the recording (LIP, filters and INFO fields are its own)."""
    r = table.regs(ARCH_LBR_LEAF, 0)
    return Registers((r.eax & ~DEPTH_BITS) | depth_bit, r.ebx, r.ecx, r.edx)


def leaf_1c_emulated(table: CpuidTable, depth_bit: int, ebx_mask: int, ecx_mask: int) -> Registers:
    """vlbr: any legal depth its emulation honours, and of the host's capability bits only those
    the emulation implements too (reserved EAX bits and EDX cleared, as QEMU does)."""
    r = table.regs(ARCH_LBR_LEAF, 0)
    return Registers((r.eax & 0xC000_0000) | depth_bit, r.ebx & ebx_mask, r.ecx & ecx_mask, 0)


def passthrough_notes(table: CpuidTable) -> list[str]:
    """What passing EBX/ECX through leaks: the event-logging bitmap needs branch counters KVM
    does not virtualize."""
    leaf = arch_lbr_leaf(table)
    if leaf.event_logging:
        return [f"leaf 0x1C ECX[19:16]={leaf.event_logging:#x} (event logging) is passed through,"
                " though KVM does not virtualize the branch counters it logs"]
    return []


# --- supported XSS ------------------------------------------------------------------------------

def supported_xss_email_v2(host_xss: int, capability: bool) -> int:
    """The email ORs XSS bit 15 in whenever ARCH_LBR is offered, even when the host's IA32_XSS
    lacks it: the host never enabled component 15, so the guest's XSAVES of it cannot work."""
    xss = host_xss & KVM_SUPPORTED_XSS_MAINLINE
    return xss | XFEATURE_MASK_LBR if capability else xss


def supported_xss_v3(host_xss: int, capability: bool) -> int:
    """v3: `supported_xss = host_xss & KVM_SUPPORTED_XSS`, and bit 15 only with ARCH_LBR."""
    mask = KVM_SUPPORTED_XSS_ARCH_LBR if capability else KVM_SUPPORTED_XSS_MAINLINE
    return host_xss & mask


def supported_xss_mainline(host_xss: int, capability: bool) -> int:
    """Mainline: only the supervisor states it already virtualizes; never bit 15."""
    return host_xss & KVM_SUPPORTED_XSS_MAINLINE


# --- XSAVE component 15 -------------------------------------------------------------------------

def comp15_passthrough(table: CpuidTable) -> Registers:
    """email-v2: KVM reports CPUID.(0xD,0xF) with do_host_cpuid(), i.e. the size of the host's
    maximum depth, whatever depth bit leaf 0x1C shows. An incomplete dump lacking the row gets
    the architectural size of the host's maximum depth."""
    row = table.query(0xD, ARCH_LBR_COMPONENT)
    if row is not None:
        return row
    return comp15_for_depth(table, arch_lbr_leaf(table).max_depth)


def comp15_for_depth(table: CpuidTable, depth: int) -> Registers:
    """Component 15 is 40 + 24 * depth bytes; it is a supervisor state (ECX[0]) with no
    standard-format offset (EBX 0). ECX keeps the host's alignment bit when it has a row."""
    host = table.query(0xD, ARCH_LBR_COMPONENT)
    ecx = (host.ecx if host is not None else 0) | 1
    return Registers(arch_lbr_state_size(depth), 0, ecx, 0)


def comp15_size_notes(table: CpuidTable, row: Registers, depth: int) -> list[str]:
    """Linux's perf uses XSAVES for LBRs only when this size matches its depth."""
    want = arch_lbr_state_size(depth)
    notes = []
    if row.eax != want:
        notes.append(f"CPUID.(0xD,0xF) size {row.eax} does not match the exposed depth {depth}"
                     f" (40 + 24 * {depth} = {want}): XSAVES of the LBRs cannot be used")
    host = table.query(0xD, ARCH_LBR_COMPONENT)
    if host is not None and host.eax != row.eax:
        notes.append(f"the host enumerates component 15 as {host.eax} bytes, the guest {row.eax}")
    return notes


# --- MSRs to save (KVM_GET_MSR_INDEX_LIST) -------------------------------------------------------

def msrs_to_save_xss(supported_xss: int) -> list[int]:
    """IA32_XSS must migrate whenever any XSS feature is supported (the third XSS change)."""
    return [IA32_XSS] if supported_xss else []


def msrs_to_save_lbr_v12(depth: int) -> list[int]:
    """v12: LBR_CTL and LBR_DEPTH; the records are left out on purpose (v12 16/16,
    message id 20220517154100.29983-17-weijiang.yang@intel.com)."""
    return [IA32_LBR_CTL, IA32_LBR_DEPTH] if depth else []


def msrs_to_save_lbr(depth: int) -> list[int]:
    """LBR_CTL, LBR_DEPTH, LER and FROM/TO/INFO for every record of the exposed depth, as the
    reviewers asked: without them a migrated guest loses its LBR state."""
    return arch_lbr_msrs(depth) if depth else []
