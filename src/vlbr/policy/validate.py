"""KVM_SET_CPUID2 validation of a guest's Arch LBR rows: each rule returns its -EINVAL reason.

email-v2 validated nothing and mainline ignores these rows, so only v3 and vlbr reject; the
rules are the ones later versions of the series and its reviewers asked for."""

from __future__ import annotations

from typing import Callable

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import (ARCH_LBR_LEAF, ArchLbrLeaf, arch_lbr_leaf, structured_features,
                              xsave_component, xsave_extended)
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, arch_lbr_state_size

from . import rules
from .caps import VLBR_EMULATION_CAPS, LbrEmulationCaps
from .host import HostDescription
from .supported import SupportedCpuid, supported_cpuid
from .variants import Variant, variant_named

Rule = Callable[[SupportedCpuid, CpuidTable, Variant, LbrEmulationCaps], "str | None"]


def _arch_lbr(guest: CpuidTable) -> bool:
    return structured_features(guest).arch_lbr


def _guest_leaf(guest: CpuidTable) -> ArchLbrLeaf:
    """Leaf 0x1C as the guest reads it: zeros when CPUID.0:EAX does not reach it."""
    if guest.max_basic_leaf < ARCH_LBR_LEAF:
        return ArchLbrLeaf.decode(Registers())
    return arch_lbr_leaf(guest)


def _enumerates_comp15(guest: CpuidTable) -> bool:
    return bool(xsave_extended(guest).xss_supported & rules.XFEATURE_MASK_LBR)


def arch_lbr_not_offered(sup, guest, v, caps):
    """ARCH_LBR is only accepted where KVM offers it: the VMX controls and a depth exist."""
    if _arch_lbr(guest) and not sup.arch_lbr:
        return "CPUID.7.0:EDX[19] ARCH_LBR is set but KVM does not offer Arch LBR on this host"


def arch_lbr_without_leaf(sup, guest, v, caps):
    """ARCH_LBR without leaf 0x1C gives the guest no depth to program IA32_LBR_DEPTH with."""
    if _arch_lbr(guest) and _guest_leaf(guest).depth_mask == 0:
        return "ARCH_LBR is set but leaf 0x1C enumerates no depth (or CPUID.0:EAX < 0x1C)"


def empty_leaf_1c(sup, guest, v, caps):
    """v12 (20221125040604.5051-N-weijiang.yang@intel.com restart, kvm_check_cpuid): a present
    leaf 0x1C of zeros is -EINVAL where the host has a depth; v3 let an empty leaf through."""
    row = guest.query(ARCH_LBR_LEAF, 0)
    if v.rejects_empty_leaf_1c and sup.arch_lbr and row == Registers() \
            and guest.max_basic_leaf >= ARCH_LBR_LEAF:
        return "leaf 0x1C is present but all zero while the host enumerates a depth"


def depth_not_allowed(sup, guest, v, caps):
    """v3: the depth bit must be the host's (KVM pins the guest to the hardware depth); an empty
    leaf is allowed. vlbr: any depths its emulation implements."""
    mask = _guest_leaf(guest).depth_mask
    if not mask or not sup.arch_lbr:
        return None
    if v.emulates:
        bad = mask & ~caps.depth_mask
        if bad:
            return f"leaf 0x1C depth bits {bad:#x} are depths vlbr's emulation does not implement"
        return None
    allowed = arch_lbr_leaf(sup.table).depth_mask
    if mask != allowed:
        return (f"leaf 0x1C depth bitmap {mask:#x} differs from the only allowed one {allowed:#x}"
                f" (the host's depth {sup.depth})")


def capability_bits_not_offered(sup, guest, v, caps):
    """EBX filters/call-stack and ECX INFO fields: the guest may only claim what KVM offers."""
    mask = _guest_leaf(guest).depth_mask
    if not mask or not sup.arch_lbr:
        return None
    g, s = guest.regs(ARCH_LBR_LEAF, 0), sup.table.regs(ARCH_LBR_LEAF, 0)
    bad_ebx, bad_ecx = g.ebx & ~s.ebx, g.ecx & ~s.ecx
    if bad_ebx or bad_ecx:
        return (f"leaf 0x1C claims EBX bits {bad_ebx:#x} / ECX bits {bad_ecx:#x} that KVM does"
                " not offer")


def lip_differs(sup, guest, v, caps):
    """The hardware (or the emulation) decides whether records hold linear or effective IPs; a
    guest told otherwise misreads them whenever CS.base is not 0."""
    g = _guest_leaf(guest)
    if g.depth_mask and sup.arch_lbr and g.lip != arch_lbr_leaf(sup.table).lip:
        return f"leaf 0x1C EAX[31] LIP={int(g.lip)} differs from the host's {int(not g.lip)}"


def comp15_size_mismatch(sup, guest, v, caps):
    """Component 15 must be 40 + 24 * the maximum enumerated depth: XSAVES writes that many
    records, and Linux uses XSAVES for LBRs only when the size matches."""
    depth = _guest_leaf(guest).max_depth
    comp = xsave_component(guest, ARCH_LBR_COMPONENT)
    if not depth or not _enumerates_comp15(guest):
        return None
    if comp is None:
        return "XSS bit 15 is enumerated but CPUID.(0xD,0xF) is missing"
    if comp.size != arch_lbr_state_size(depth):
        return (f"CPUID.(0xD,0xF) size {comp.size} does not match depth {depth}"
                f" (40 + 24 * {depth} = {arch_lbr_state_size(depth)})")


def comp15_not_supervisor(sup, guest, v, caps):
    """Arch LBR state is a supervisor component: ECX[0] must say so (XSAVES-only)."""
    comp = xsave_component(guest, ARCH_LBR_COMPONENT)
    if _enumerates_comp15(guest) and comp is not None and not comp.supervisor:
        return "CPUID.(0xD,0xF):ECX[0] is clear, but Arch LBR state is a supervisor (XSS) state"


def xss_lbr_not_supported(sup, guest, v, caps):
    """XSS bit 15 only where KVM supports it (host_xss & KVM_SUPPORTED_XSS)."""
    if _enumerates_comp15(guest) and not sup.supported_xss & rules.XFEATURE_MASK_LBR:
        return "CPUID.(0xD,1):ECX[15] enumerates Arch LBR state that KVM does not support"


def xss_lbr_without_arch_lbr(sup, guest, v, caps):
    """A component without its feature: nothing could ever fill it."""
    if _enumerates_comp15(guest) and not _arch_lbr(guest):
        return "CPUID.(0xD,1):ECX[15] enumerates Arch LBR state without ARCH_LBR"


def xss_lbr_without_xsaves(sup, guest, v, caps):
    """Supervisor states are only reachable through XSAVES."""
    if _enumerates_comp15(guest) and not xsave_extended(guest).xsaves:
        return "CPUID.(0xD,1):ECX[15] is set without XSAVES (CPUID.(0xD,1):EAX[3])"


RULES: tuple[Rule, ...] = (
    arch_lbr_not_offered, arch_lbr_without_leaf, empty_leaf_1c, depth_not_allowed,
    capability_bits_not_offered,
    lip_differs, comp15_size_mismatch, comp15_not_supervisor, xss_lbr_not_supported,
    xss_lbr_without_arch_lbr, xss_lbr_without_xsaves,
)


def check_guest_cpuid(host: HostDescription, guest_table: CpuidTable,
                      variant: str | Variant = "vlbr",
                      caps: LbrEmulationCaps = VLBR_EMULATION_CAPS) -> list[str]:
    """KVM_SET_CPUID2's -EINVAL reasons for this guest table; an empty list means accepted."""
    v = variant_named(variant)
    if not v.validates_set_cpuid:
        return []
    sup = supported_cpuid(host, v, caps=caps)
    return [reason for rule in RULES if (reason := rule(sup, guest_table, v, caps))]
