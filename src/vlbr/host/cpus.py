"""Logical CPUs read from a CPUID source, and their grouping into distinct core types."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.cpuid import CpuidTable, Registers

CORE_TYPE_LEAF = 0x1A
# CPUID.1A:EAX[31:24] core type encodings (Intel SDM, hybrid parts).
CORE_TYPE_NAMES = {0x20: "Atom (E-core)", 0x40: "Core (P-core)"}
# The leaves whose answers make two logical CPUs different core types for Arch LBR.
CORE_TYPE_LEAVES = (0x7, 0xA, 0xD, 0x1C, CORE_TYPE_LEAF)


@dataclass(frozen=True, slots=True)
class LogicalCpu:
    """One logical CPU's CPUID table; index follows the source's numbering."""

    index: int
    table: CpuidTable


@dataclass(frozen=True, slots=True)
class CoreType:
    """Logical CPUs that answer the Arch LBR-relevant leaves identically."""

    name: str
    cpus: tuple[int, ...]
    table: CpuidTable  # the first CPU's table, representative of the type

    @property
    def core_type_id(self) -> int:
        return self.table.regs(CORE_TYPE_LEAF).eax >> 24


def core_type_name(table: CpuidTable) -> str:
    """The hybrid core type from CPUID.1A:EAX[31:24], 'core' when the leaf is absent/zero."""
    if table.max_basic_leaf < CORE_TYPE_LEAF:
        return "core"
    code = table.regs(CORE_TYPE_LEAF).eax >> 24
    if code == 0:
        return "core"
    return CORE_TYPE_NAMES.get(code, f"core type {code:#x}")


def core_type_key(table: CpuidTable) -> tuple[tuple[tuple[int, int], Registers], ...]:
    """Rows of the leaves that matter, all subleaves; APIC IDs (leaves 1, 0xB, 0x1F) ignored."""
    return tuple((key, regs) for key, regs in table.items() if key[0] in CORE_TYPE_LEAVES)


def core_types(cpus: list[LogicalCpu]) -> list[CoreType]:
    """Distinct core types in order of first appearance; hybrid parts keep every type."""
    groups: dict[tuple, list[LogicalCpu]] = {}
    for cpu in cpus:
        groups.setdefault(core_type_key(cpu.table), []).append(cpu)
    return [CoreType(core_type_name(members[0].table), tuple(c.index for c in members),
                     members[0].table) for members in groups.values()]
