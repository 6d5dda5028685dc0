"""KVM_GET_SUPPORTED_CPUID as a variant of the Arch LBR series would answer it on a host."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.cpuid import CpuidEntry, CpuidTable, Registers
from vlbr.arch.leaves import (ARCH_LBR_LEAF, ArchLbrLeaf, arch_lbr_leaf, depth_bit, xsave_extended,
                              xsave_main)
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, XsaveLayout, XsaveLayoutError

from . import rules
from .caps import VLBR_EMULATION_CAPS, LbrEmulationCaps
from .errors import UnsupportedDepth
from .host import HostDescription
from .variants import Variant, variant_named

XSAVEC = 1 << 1  # CPUID.(0xD,1):EAX
XSAVES = 1 << 3


@dataclass(frozen=True)
class SupportedCpuid:
    """What KVM offers: the full supported-CPUID view, the XSS mask and the MSRs to save."""

    table: CpuidTable  # the whole KVM_GET_SUPPORTED_CPUID view: the host's with the changes
    supported_xss: int
    msrs_to_save: tuple[int, ...]
    notes: tuple[str, ...]
    variant: str = "vlbr"
    arch_lbr: bool = False  # the ARCH_LBR capability (CPUID.7.0:EDX[19])
    depth: int = 0  # the maximum depth leaf 0x1C enumerates; 0 for none
    touched: frozenset[tuple[int, int]] = frozenset()  # rows the design may change

    def entries(self) -> list[CpuidEntry]:
        """The kvm_cpuid_entry2 rows the design changes (0x7.0, 0xD.0, 0xD.1, each supported
        XSS component, 0x1C), in order; leaf 0x1C reads as zeros when the table lacks it."""
        keys = {k for k in self.touched if k in self.table} | {(ARCH_LBR_LEAF, 0)}
        return [CpuidEntry(leaf, sub, self.table.regs(leaf, sub)) for leaf, sub in sorted(keys)]

    def to_json(self) -> dict:
        return {
            "variant": self.variant,
            "entries": [{"function": e.function, "index": e.index, "eax": e.regs.eax,
                         "ebx": e.regs.ebx, "ecx": e.regs.ecx, "edx": e.regs.edx}
                        for e in self.entries()],
            "supported_xss": self.supported_xss,
            "msrs_to_save": list(self.msrs_to_save),
            "notes": list(self.notes),
        }


def supported_cpuid(host: HostDescription, variant: str | Variant = "vlbr",
                    depth: int | None = None,
                    caps: LbrEmulationCaps = VLBR_EMULATION_CAPS) -> SupportedCpuid:
    """The KVM_GET_SUPPORTED_CPUID view, supported XSS and MSRs to save under a variant.

    depth: the Arch LBR depth to offer; None means the variant's own choice (the host's
    maximum). UnsupportedDepth when the variant cannot offer it on this host."""
    v = variant_named(variant)
    base = host.table
    notes = list(host.notes)
    capability = v.capability(host)
    notes += _capability_notes(host, v, capability)
    _check_depth_request(host, v, capability, depth, caps)

    leaf_1c = _leaf_1c(base, v, capability, depth, caps, notes)
    exposed = ArchLbrLeaf.decode(leaf_1c).max_depth
    has_xsaves = base.query(0xD, 1) is not None
    xss = v.supported_xss(host.xss, capability) if has_xsaves else 0
    notes += _xss_notes(host, v, capability, xss)

    rows: dict[tuple[int, int], Registers | None] = {(0x7, 0): rules.leaf_7_0(base, capability)}
    if base.max_basic_leaf >= ARCH_LBR_LEAF or capability:
        rows[(ARCH_LBR_LEAF, 0)] = leaf_1c
    rows.update(_xss_components(base, v, xss, exposed, notes))
    table = base.replace(rows)
    if has_xsaves:
        table = table.replace({(0xD, 1): _xsave_extended_row(table, xss, notes)})

    msrs = rules.msrs_to_save_xss(xss)
    if capability and v.lbr_msrs_to_save is not None:
        msrs += v.lbr_msrs_to_save(exposed)
    elif capability:
        notes.append(f"{v.name} does not list the LBR MSRs for save/restore (reviewers asked"
                     " for them): migration loses the guest's LBR state")
    if capability:
        notes += v.differences
    touched = frozenset(rows) | {(0xD, 0), (0xD, 1)}
    return SupportedCpuid(table, xss, tuple(msrs), tuple(notes), v.name, capability,
                          exposed, touched)


def _capability_notes(host: HostDescription, v: Variant, capability: bool) -> list[str]:
    if capability or not host.arch_lbr:
        return []
    if v.name == "mainline":
        return ["mainline KVM hides ARCH_LBR: leaf 0x1C zeroed, no XSS bit 15"]
    if not rules.vmx_has_arch_lbr(host):
        return ["the host lacks the VMX 'load guest IA32_LBR_CTL' / 'clear IA32_LBR_CTL'"
                " controls: ARCH_LBR cleared"]
    return ["the host's leaf 0x1C enumerates no depth: ARCH_LBR cleared"]


def _check_depth_request(host, v: Variant, capability: bool, depth: int | None,
                         caps: LbrEmulationCaps) -> None:
    """A depth the user asks for must be one this variant can offer on this host."""
    if depth is None:
        return
    if not capability:
        why = ("mainline KVM exposes no Arch LBR" if v.name == "mainline"
               else "the host offers no Arch LBR (CPUID.7.0:EDX[19], VMX LBR controls, leaf 0x1C)")
        raise UnsupportedDepth(f"depth {depth} cannot be offered under {v.name}: {why}")
    host_leaf = arch_lbr_leaf(host.table)
    legal = ", ".join(map(str, host_leaf.depths))
    if v.emulates:
        try:
            depth_bit(depth)
        except ValueError as err:
            raise UnsupportedDepth(str(err)) from None
        if depth not in caps.depths:
            raise UnsupportedDepth(f"depth {depth} is not one vlbr's emulation implements "
                                   f"({', '.join(map(str, caps.depths))})")
        return
    if depth != host_leaf.max_depth:
        raise UnsupportedDepth(
            f"{v.name} offers only the host's maximum depth {host_leaf.max_depth} (the host"
            f" supports {legal}; KVM runs the hardware at the host perf driver's depth);"
            f" depth {depth} needs --variant vlbr")


def _leaf_1c(base: CpuidTable, v: Variant, capability: bool, depth: int | None,
             caps: LbrEmulationCaps, notes: list[str]) -> Registers:
    if not capability:
        return rules.leaf_1c_zero()
    mask = arch_lbr_leaf(base).depth_mask
    if v.emulates:
        bit = depth_bit(depth) if depth is not None else rules.depth_bit_v3(mask)
        if bit != rules.depth_bit_v3(mask):
            notes.append(f"vlbr emulates depth {ArchLbrLeaf.decode(Registers(bit)).max_depth}"
                         f" while the hardware runs at {8 * mask.bit_length()}: the host depth is"
                         " reloaded on every exit and XSAVES/XRSTORS of component 15 emulated")
        return rules.leaf_1c_emulated(base, bit, caps.ebx_mask, caps.ecx_mask)
    bit = v.depth_bit(mask)
    notes += rules.passthrough_notes(base)
    host_max = 8 * mask.bit_length()
    if bit == 0:
        notes.append(f"leaf 0x1C depth bitmap {mask:#x} has bit 7 on top: 1 << fls(mask) falls"
                     " outside EAX[7:0] and the guest sees no depth at all")
    elif not mask & bit:
        shown = ArchLbrLeaf.decode(Registers(bit)).max_depth
        notes.append(f"leaf 0x1C offers depth {shown} (bit {bit:#x}), which the host (bitmap"
                     f" {mask:#x}, maximum {host_max}) does not support")
    return rules.leaf_1c_passthrough(base, bit)


def _xss_notes(host: HostDescription, v: Variant, capability: bool, xss: int) -> list[str]:
    lbr = rules.XFEATURE_MASK_LBR
    if xss & lbr and not host.xss & lbr:
        return [f"XSS bit 15 offered though the host's IA32_XSS ({host.xss:#x}) lacks it:"
                " the host never enabled component 15"]
    if capability and not xss & lbr:
        return ["ARCH_LBR without XSS bit 15: the guest saves its LBRs by MSR, not XSAVES"]
    return []


def _xss_components(base: CpuidTable, v: Variant, xss: int, depth: int,
                    notes: list[str]) -> dict[tuple[int, int], Registers | None]:
    """CPUID.(0xD,i) for the supervisor states: each supported one reported, the others (which
    the host's own table enumerates) dropped, as KVM reports only permitted components."""
    host_xss = xsave_extended(base).xss_supported
    rows: dict[tuple[int, int], Registers | None] = {}
    for i in range(2, 64):
        bit = 1 << i
        if not (xss | host_xss) & bit:
            continue
        if not xss & bit:
            rows[(0xD, i)] = None
        elif i == ARCH_LBR_COMPONENT:
            rows[(0xD, i)] = _comp15(base, v, depth, notes)
        elif base.query(0xD, i) is not None:
            rows[(0xD, i)] = base.regs(0xD, i)
    return rows


def _comp15(base: CpuidTable, v: Variant, depth: int, notes: list[str]) -> Registers:
    row = rules.comp15_for_depth(base, depth) if v.comp15_from_depth else rules.comp15_passthrough(base)
    notes += rules.comp15_size_notes(base, row, depth)
    return row


def _xsave_extended_row(table: CpuidTable, xss: int, notes: list[str]) -> Registers:
    """CPUID.(0xD,1): ECX/EDX = supported XSS; EBX = the compacted size of every supported
    XCR0|XSS state when XSAVES/XSAVEC is offered, else 0 (KVM's __do_cpuid_func)."""
    r = table.regs(0xD, 1)
    ebx = 0
    if r.eax & (XSAVES | XSAVEC):
        try:
            ebx = XsaveLayout.for_mask(table, xsave_main(table).xcr0_supported | xss).size
        except XsaveLayoutError as err:
            notes.append(f"CPUID.(0xD,1):EBX kept from the source: {err}")
            ebx = r.ebx
    return Registers(r.eax, ebx, xss & 0xFFFF_FFFF, xss >> 32)

