"""Guest CPUID tables for the vCPU tests, transcribed from the corpus (sources named per row)."""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable, Registers

# ../shared/corpus/instlatx64/GenuineIntel0090675_AlderLake_00_CPUID.txt, logical CPU 0.
ALDER_LAKE_ROWS = {
    (0x0, 0): Registers(0x20, 0x756E6547, 0x6C65746E, 0x49656E69),  # "GenuineIntel", max leaf 0x20
    (0x1, 0): Registers(0x00090675, 0x00100800, 0x7FFAFBBF, 0xBFEBFBFF),
    (0x7, 0): Registers(0x00000001, 0x239CA7EB, 0x98C007AC, 0xFC184410),
    (0xA, 0): Registers(0x08300805, 0x00000000, 0x0000000F, 0x00008604),
    (0xD, 0): Registers(0x00000207, 0x00000340, 0x00000A88, 0x00000000),
    (0xD, 1): Registers(0x0000000F, 0x000003D0, 0x00019900, 0x00000000),
    (0xD, 2): Registers(0x00000100, 0x00000240, 0x00000000, 0x00000000),
    (0x1C, 0): Registers(0x4000000B, 0x00000007, 0x00000007, 0x00000000),
}
# CPUID.(0xD,0xF) is missing from that dump; INDEX.md: "CPUID.(0xD,0xF) is always EAX 0x328
# (808 bytes), EBX 0, ECX 1" on every Arch LBR part of the corpus.
COMPONENT_15 = Registers(0x328, 0, 1, 0)


def alder_lake(**leaf_1c) -> CpuidTable:
    """The Alder Lake P-core table, optionally with leaf 0x1C registers replaced."""
    rows = dict(ALDER_LAKE_ROWS)
    rows[(0xD, 0xF)] = COMPONENT_15
    if leaf_1c:
        old = rows[(0x1C, 0)]
        rows[(0x1C, 0)] = Registers(leaf_1c.get("eax", old.eax), leaf_1c.get("ebx", old.ebx),
                                    leaf_1c.get("ecx", old.ecx), leaf_1c.get("edx", old.edx))
    return CpuidTable(rows)


def no_arch_lbr() -> CpuidTable:
    """Alder Lake with CPUID.7.0:EDX[19] cleared (what mainline KVM shows a guest)."""
    r = ALDER_LAKE_ROWS[(0x7, 0)]
    return alder_lake().replace({(0x7, 0): Registers(r.eax, r.ebx, r.ecx, r.edx & ~(1 << 19)),
                                 (0x1C, 0): Registers()})
