"""What the policy knows about a host: its CPUID, its VMX LBR controls and its IA32_XSS.

A hybrid host is described by the CPUID every core type agrees on (see common_table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import ARCH_LBR_LEAF, arch_lbr_leaf, structured_features, xsave_extended
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, arch_lbr_state_size
from vlbr.host.cpus import CoreType

ARCH_LBR_BIT = 1 << 19  # CPUID.7.0:EDX


@dataclass(frozen=True)
class HostDescription:
    """The inputs of KVM's Arch LBR decisions for one host (or one KVM).

    None means "not stated by the source": the defaults follow the architecture, because every
    Arch LBR part has both VMX LBR controls, and Linux sets IA32_XSS to the supervisor states
    CPUID.(0xD,1):ECX/EDX enumerates that it manages (Arch LBR among them)."""

    table: CpuidTable
    vmx_load_lbr_ctl: bool | None = None  # VM-entry control bit 21
    vmx_clear_lbr_ctl: bool | None = None  # VM-exit control bit 26
    host_xss: int | None = None
    notes: tuple[str, ...] = field(default=())  # e.g. what the hybrid merge gave up

    @property
    def arch_lbr(self) -> bool:
        return structured_features(self.table).arch_lbr

    @property
    def load_lbr_ctl(self) -> bool:
        return self.arch_lbr if self.vmx_load_lbr_ctl is None else self.vmx_load_lbr_ctl

    @property
    def clear_lbr_ctl(self) -> bool:
        return self.arch_lbr if self.vmx_clear_lbr_ctl is None else self.vmx_clear_lbr_ctl

    @property
    def xss(self) -> int:
        if self.host_xss is not None:
            return self.host_xss
        return xsave_extended(self.table).xss_supported

    @classmethod
    def from_core_types(cls, types: Sequence[CoreType], **facts) -> "HostDescription":
        """A host whose logical CPUs fall into these core types (one type: no merging)."""
        table, notes = common_table([(t.name, t.table) for t in types])
        return cls(table, notes=tuple(notes), **facts)


# --- hybrid hosts: expose only what every core type supports -------------------------------------

def common_table(types: Sequence[tuple[str, CpuidTable]]) -> tuple[CpuidTable, list[str]]:
    """The first core type's table with the Arch LBR rows every core type can honour.

    A vCPU thread may run on any core, so a guest may only see a capability that all core
    types have: feature bits are ANDed, the depth bitmap too (the hardware depth must be
    legal everywhere). Each difference becomes a note."""
    if not types:
        raise ValueError("no core types to describe a host")
    base = types[0][1]
    if len(types) == 1:
        return base, []
    notes: list[str] = []
    rows = {
        (0x7, 0): _merge_leaf7(types, notes),
        (ARCH_LBR_LEAF, 0): _merge_leaf_1c(types, notes),
    }
    if base.query(0xD, 1) is not None:
        rows[(0xD, 1)] = _merge_xss(types, notes)
    merged = base.replace(rows)
    merged = _merge_comp15(types, merged, notes)
    return merged, notes


def _differs(types, getter) -> bool:
    return len({getter(t) for _, t in types}) > 1


def _each(types, getter, fmt=str) -> str:
    return ", ".join(f"{name} {fmt(getter(t))}" for name, t in types)


def _merge_leaf7(types, notes) -> Registers:
    base = types[0][1].regs(0x7, 0)
    every = all(structured_features(t).arch_lbr for _, t in types)
    if _differs(types, lambda t: structured_features(t).arch_lbr):
        notes.append(f"core types differ in ARCH_LBR ({_each(types, lambda t: structured_features(t).arch_lbr)}):"
                     " not exposed")
    edx = base.edx | ARCH_LBR_BIT if every else base.edx & ~ARCH_LBR_BIT
    return Registers(base.eax, base.ebx, base.ecx, edx)


def _merge_leaf_1c(types, notes) -> Registers:
    leaves = [(name, arch_lbr_leaf(t)) for name, t in types]
    eax = ebx = ecx = 0xFFFF_FFFF
    for _, t in types:
        r = t.regs(ARCH_LBR_LEAF, 0)
        eax, ebx, ecx = eax & r.eax, ebx & r.ebx, ecx & r.ecx
    # Bit 30 warns that deep C-states may clear the LBRs: a warning, so any core's counts.
    if any(leaf.deep_cstate_reset for _, leaf in leaves):
        eax |= 1 << 30
    for what, get, fmt in (("depth bitmap EAX[7:0]", lambda l: l.depth_mask, hex),
                           ("LIP (EAX[31])", lambda l: l.lip, int),
                           ("EBX", lambda l: l.encode().ebx, hex),
                           ("ECX", lambda l: l.encode().ecx, hex)):
        if len({get(leaf) for _, leaf in leaves}) > 1:
            listed = ", ".join(f"{name} {fmt(get(leaf))}" for name, leaf in leaves)
            notes.append(f"core types differ in leaf 0x1C {what} ({listed}): exposing only what"
                         " every core type supports" + _LIP_NOTE * (what.startswith("LIP")))
    return Registers(eax, ebx, ecx, 0)


_LIP_NOTE = ("; LIP=0 (effective IPs) is what every core agrees on only while CS.base is 0,"
             " as in 64-bit mode, so a guest with a non-zero CS base sees records that depend"
             " on the core it ran on")


def _merge_xss(types, notes) -> Registers:
    base = types[0][1].regs(0xD, 1)
    xss = 0xFFFF_FFFF_FFFF_FFFF
    for _, t in types:
        xss &= xsave_extended(t).xss_supported
    if _differs(types, lambda t: xsave_extended(t).xss_supported):
        notes.append(f"core types differ in supervisor XSAVE states CPUID.(0xD,1):ECX/EDX "
                     f"({_each(types, lambda t: xsave_extended(t).xss_supported, hex)}): "
                     f"exposing {xss:#x}")
    return Registers(base.eax, base.ebx, xss & 0xFFFF_FFFF, xss >> 32)


def _merge_comp15(types, merged: CpuidTable, notes) -> CpuidTable:
    sizes = {t.regs(0xD, ARCH_LBR_COMPONENT).eax for _, t in types
             if t.query(0xD, ARCH_LBR_COMPONENT) is not None}
    if len(sizes) <= 1:
        return merged
    size = arch_lbr_state_size(arch_lbr_leaf(merged).max_depth)
    notes.append(f"core types differ in CPUID.(0xD,0xF) size ({sorted(sizes)}): "
                 f"using {size}, the size of the common maximum depth")
    row = merged.regs(0xD, ARCH_LBR_COMPONENT)
    return merged.replace({(0xD, ARCH_LBR_COMPONENT): Registers(size, row.ebx, row.ecx, row.edx)})
