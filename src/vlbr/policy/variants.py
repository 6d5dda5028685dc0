"""The four designs side by side: which rule of rules.py each one picks."""

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
    saves_lbr_msrs: bool  # LBR MSRs in KVM_GET_MSR_INDEX_LIST
    validates_set_cpuid: bool  # KVM_SET_CPUID2 rejects bad Arch LBR tables
    emulates: bool  # vlbr: any legal depth, capability bits filtered by the emulation


EMAIL_V2 = Variant(
    "email-v2", "the Feb 2021 patch: 1 << fls(mask), bit 15 ORed into supported XSS",
    rules.arch_lbr_capability, rules.depth_bit_email_v2, rules.supported_xss_email_v2,
    comp15_from_depth=False, saves_lbr_msrs=False, validates_set_cpuid=False, emulates=False)
V3 = Variant(
    "v3", "the reviewed rules: 1 << (fls(mask) - 1), host_xss & KVM_SUPPORTED_XSS, VMX controls",
    rules.arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_v3,
    comp15_from_depth=True, saves_lbr_msrs=True, validates_set_cpuid=True, emulates=False)
MAINLINE = Variant(
    "mainline", "mainline KVM today: ARCH_LBR hidden, leaf 0x1C zeroed, no XSS bit 15",
    rules.mainline_arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_mainline,
    comp15_from_depth=True, saves_lbr_msrs=False, validates_set_cpuid=False, emulates=False)
VLBR = Variant(
    "vlbr", "v3 plus vlbr's emulation: any legal depth, capability bits it implements",
    rules.arch_lbr_capability, rules.depth_bit_v3, rules.supported_xss_v3,
    comp15_from_depth=True, saves_lbr_msrs=True, validates_set_cpuid=True, emulates=True)

VARIANTS = {v.name: v for v in (EMAIL_V2, V3, MAINLINE, VLBR)}
VARIANT_NAMES = tuple(VARIANTS)


def variant_named(name: str | Variant) -> Variant:
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariant(name, VARIANT_NAMES) from None
