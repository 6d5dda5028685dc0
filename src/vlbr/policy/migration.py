"""Can a guest move between two Arch LBR configurations? Each difference with its consequence."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.leaves import (ArchLbrLeaf, arch_lbr_leaf, structured_features, xsave_component,
                              xsave_extended)
from vlbr.arch.xsave import ARCH_LBR_COMPONENT

from .caps import VLBR_EMULATION_CAPS, LbrEmulationCaps
from .host import HostDescription
from .supported import supported_cpuid
from .variants import Variant


@dataclass(frozen=True)
class MigrationIssue:
    what: str
    source: str
    destination: str
    consequence: str

    def __str__(self) -> str:
        return f"{self.what}: source {self.source}, destination {self.destination}: {self.consequence}"


def migration_check(source: CpuidTable, destination: CpuidTable) -> list[MigrationIssue]:
    """Differences that break a guest moved from `source` to `destination` guest CPUID."""
    src_on, dst_on = structured_features(source).arch_lbr, structured_features(destination).arch_lbr
    issues: list[MigrationIssue] = []
    if src_on and not dst_on:
        issues.append(MigrationIssue(
            "ARCH_LBR", "on", "off",
            "KVM_SET_MSRS of IA32_LBR_CTL/DEPTH and the records fails on the destination and"
            " the guest, which already found Arch LBR in CPUID, loses it"))
    if src_on and dst_on:
        issues += _leaf_1c_issues(arch_lbr_leaf(source), arch_lbr_leaf(destination))
    issues += _xss_issues(source, destination)
    issues += _component_size_issues(source, destination)
    return issues


def host_migration_check(source: HostDescription, destination: HostDescription,
                         variant: str | Variant = "vlbr", depth: int | None = None,
                         caps: LbrEmulationCaps = VLBR_EMULATION_CAPS) -> list[MigrationIssue]:
    """The same check on what each host's KVM would offer a guest under a variant."""
    a = supported_cpuid(source, variant, depth, caps).table
    b = supported_cpuid(destination, variant, depth, caps).table
    return migration_check(a, b)


def _leaf_1c_issues(a: ArchLbrLeaf, b: ArchLbrLeaf) -> list[MigrationIssue]:
    issues = []
    if a.max_depth != b.max_depth:
        issues.append(MigrationIssue(
            "LBR depth", str(a.max_depth), str(b.max_depth),
            "XRSTORS of component 15 saved at the source depth clears every record when the"
            " destination's IA32_LBR_DEPTH differs, and records beyond the destination depth"
            " have no MSRs to restore into"))
    elif a.depth_mask != b.depth_mask:
        issues.append(MigrationIssue(
            "LBR depth bitmap", hex(a.depth_mask), hex(b.depth_mask),
            "a depth the guest read from CPUID at boot may #GP when written to IA32_LBR_DEPTH"
            " on the destination"))
    if a.lip != b.lip:
        issues.append(MigrationIssue(
            "LIP (leaf 0x1C EAX[31])", str(int(a.lip)), str(int(b.lip)),
            "records change from linear to effective IPs (or back) under the guest: they differ"
            " by CS.base, which is non-zero outside 64-bit mode"))
    ea, eb = a.encode(), b.encode()
    if ea.ebx & ~eb.ebx:
        issues.append(MigrationIssue(
            "leaf 0x1C EBX (CPL/branch filtering, call-stack)", hex(ea.ebx), hex(eb.ebx),
            "an IA32_LBR_CTL using the missing bits #GPs on restore (KVM_SET_MSRS fails)"))
    if ea.ecx & ~eb.ecx:
        issues.append(MigrationIssue(
            "leaf 0x1C ECX (MISPRED, timed LBR, BR_TYPE, event logging)", hex(ea.ecx), hex(eb.ecx),
            "LBR_INFO fields the guest relies on stop being written after the move"))
    return issues


def _xss_issues(a: CpuidTable, b: CpuidTable) -> list[MigrationIssue]:
    xa, xb = xsave_extended(a).xss_supported, xsave_extended(b).xss_supported
    lost = xa & ~xb
    if not lost:
        return []
    return [MigrationIssue(
        "supported XSS (CPUID.(0xD,1):ECX/EDX)", hex(xa), hex(xb),
        f"restoring IA32_XSS with bits {lost:#x} #GPs on the destination and XSAVES state of"
        " those components cannot be restored")]


def _component_size_issues(a: CpuidTable, b: CpuidTable) -> list[MigrationIssue]:
    both = xsave_extended(a).xss_supported & xsave_extended(b).xss_supported
    issues = []
    for i in range(2, 64):
        if not both >> i & 1:
            continue
        ca, cb = xsave_component(a, i), xsave_component(b, i)
        if ca is None or cb is None or ca.size == cb.size:
            continue
        lbr = " (Arch LBR: a different record count)" if i == ARCH_LBR_COMPONENT else ""
        issues.append(MigrationIssue(
            f"XSAVE component {i} size{lbr}", str(ca.size), str(cb.size),
            "the saved XSAVE image does not fit the destination's layout (KVM_SET_XSAVE"
            " misplaces it) and the guest's XSAVES buffers, sized from CPUID.(0xD,1):EBX at"
            " boot, are now the wrong size"))
    return issues
