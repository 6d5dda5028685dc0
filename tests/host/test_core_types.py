"""core_types(): distinct core types from the leaves that matter, never APIC IDs."""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import arch_lbr_leaf
from vlbr.host import LogicalCpu, core_types, read_cpuid_file

from corpus import INSTLATX64


def test_alder_lake_keeps_p_and_e_cores(corpus_dir):
    # INDEX.md: AlderLake_01_LC_BC has 16 CPUs with 0x1C EAX 4000000B and 8 with C000000B (LIP).
    cpus = read_cpuid_file(INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt")
    types = core_types(cpus)
    assert [(t.name, len(t.cpus)) for t in types] == [("Core (P-core)", 16), ("Atom (E-core)", 8)]
    assert [arch_lbr_leaf(t.table).lip for t in types] == [False, True]
    assert sorted(i for t in types for i in t.cpus) == [c.index for c in cpus]
    # CPUID.1A:EAX[31:24]: 0x40 Core, 0x20 Atom (Intel SDM).
    assert [t.core_type_id for t in types] == [0x40, 0x20]


def test_apic_ids_do_not_split_a_core_type():
    base = {(0, 0): Registers(0x1C, 0, 0, 0), (0x1C, 0): Registers(0x4000000B, 7, 7, 0)}
    cpus = [LogicalCpu(i, CpuidTable({**base, (1, 0): Registers(0, i << 24, 0, 0),
                                      (0xB, 0): Registers(0, 0, 0, i)})) for i in range(4)]
    (only,) = core_types(cpus)
    assert only.cpus == (0, 1, 2, 3) and only.name == "core"


def test_leaf_0x1c_difference_splits_types():
    base = {(0, 0): Registers(0x1C, 0, 0, 0)}
    a = LogicalCpu(0, CpuidTable({**base, (0x1C, 0): Registers(0x4000000B, 7, 7, 0)}))
    b = LogicalCpu(1, CpuidTable({**base, (0x1C, 0): Registers(0xC000000B, 7, 7, 0)}))
    assert [t.cpus for t in core_types([a, b, a])] == [(0, 0), (1,)]
