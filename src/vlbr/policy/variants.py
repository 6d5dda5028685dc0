"""The designs side by side: which rule of rules.py each one picks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import rules
from .errors import UnknownVariant
from .host import HostDescription


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    capability: Callable[[HostDescription], bool]
    depth_bit: Callable[[int], int]  # host depth bitmap -> the bit offered
    supported_xss: Callable[[int, bool], int]  # (host IA32_XSS, capability) -> mask
    comp15_from_depth: bool  # False: the host's CPUID.(0xD,0xF) passed through
    lbr_msrs_to_save: Callable[[int], list[int]] | None  # depth -> MSRs KVM migrates
    validates_set_cpuid: bool  # KVM_SET_CPUID2 rejects bad Arch LBR tables
    emulates: bool  # vlbr: any legal depth, capability bits filtered by the emulation
    rejects_empty_leaf_1c: bool = False  # a present all-zero leaf 0x1C is -EINVAL
    differences: tuple[str, ...] = ()  # where it departs from vlbr's own choice, as notes


EMAIL_V2 = Variant(
    "email-v2", "the Feb 2021 patch: 1 << fls(mask), bit 15 ORed into supported XSS",
    rules.arch_lbr_capability, rules.depth_bit_email_v2, rules.supported_xss_email_v2,
    comp15_from_depth=False, lbr_msrs_to_save=None, validates_set_cpuid=False, emulates=False)
V3 = Variant(
    "v3", "the reviewed rules: 1 << (fls(mask) - 1), host_xss & KVM_SUPPORTED_XSS, VMX controls",
    rules.arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_v3,
    comp15_from_depth=True, lbr_msrs_to_save=rules.msrs_to_save_lbr, validates_set_cpuid=True,
    emulates=False)
V12 = Variant(
    "v12", "the last posted series (May 2022, v2 restart Nov 2022): v3's leaf and XSS rules, "
    "an empty leaf 0x1C rejected, only IA32_XSS, LBR_CTL and LBR_DEPTH migrated",
    rules.arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_v3,
    comp15_from_depth=True, lbr_msrs_to_save=rules.msrs_to_save_lbr_v12,
    validates_set_cpuid=True, emulates=False, rejects_empty_leaf_1c=True,
    differences=(
        "v12 migrates IA32_XSS, LBR_CTL and LBR_DEPTH only, leaving the 96 record MSRs out "
        "on purpose (v12 16/16): a migrated guest restarts with empty records; vlbr saves "
        "every record",
        "v12 clears LBREn on #DB and INIT only while the guest LBR event is in use, and RSM "
        "sets LBREn=1 (v12 14/16); vlbr follows the architecture (always on #DB/INIT, RSM "
        "restores the value saved at SMI)",
        "v12 offers only the host's maximum depth; vlbr emulates any depth it implements",
        "v12 rejects a present all-zero leaf 0x1C; vlbr accepts it, as v3 did (a guest "
        "without Arch LBR may carry the row)",
        "v12 accepts a host-initiated Arch LBR MSR write without the capability only if it "
        "is 0 (v2 restart); vlbr #GPs every Arch LBR MSR without CPUID.7.0:EDX[19]",
    ))
MAINLINE = Variant(
    "mainline", "mainline KVM today: ARCH_LBR hidden, leaf 0x1C zeroed, no XSS bit 15",
    rules.mainline_arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_mainline,
    comp15_from_depth=True, lbr_msrs_to_save=None, validates_set_cpuid=False, emulates=False)
VLBR = Variant(
    "vlbr", "v3 plus vlbr's emulation: any legal depth, capability bits it implements",
    rules.arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_v3,
    comp15_from_depth=True, lbr_msrs_to_save=rules.msrs_to_save_lbr, validates_set_cpuid=True,
    emulates=True)

VARIANTS = {v.name: v for v in (EMAIL_V2, V3, V12, MAINLINE, VLBR)}
VARIANT_NAMES = tuple(VARIANTS)


def variant_named(name: str | Variant) -> Variant:
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariant(name, VARIANT_NAMES) from None
