"""CpuidTable semantics and the vendor/signature/brand views, checked against corpus dumps."""

from __future__ import annotations

import pytest

from vlbr.arch.cpuid import CpuidTable, Registers, Signature
from vlbr.host import read_cpuid_file

from corpus import INSTLATX64


def test_missing_is_absent_not_zero_and_unindexed_leaves_ignore_subleaf():
    t = CpuidTable({(1, 0): Registers(1, 2, 3, 4), (0xD, 0): Registers(7)})
    assert t.query(0x1C) is None and t.regs(0x1C) == Registers()
    assert t.query(1, 5) == Registers(1, 2, 3, 4)  # leaf 1 ignores ECX
    assert t.query(0xD, 5) is None  # leaf 0xD is indexed


def test_replace_returns_new_table():
    t = CpuidTable({(1, 0): Registers(1)})
    u = t.replace({(1, 0): None, (7, 0): Registers(0, 0, 0, 1 << 19)})
    assert (1, 0) in t and (1, 0) not in u and u[(7, 0)].edx == 1 << 19
    assert hash(t) != hash(u) and t != u and t == CpuidTable({(1, 0): Registers(1)})


def test_bad_values_rejected():
    with pytest.raises(ValueError):
        Registers(1 << 32)
    with pytest.raises(ValueError):
        CpuidTable({(1 << 32, 0): Registers()})


@pytest.mark.parametrize("eax, family, model, stepping", [
    (0x00090672, 6, 0x97, 2),     # Alder Lake-S, corpus GenuineIntel0090672_*
    (0x00B00F21, 0x1A, 0x2, 1),   # this machine's EPYC (corpus cpuid -r dump)
    (0x00000F65, 0xF, 0x6, 5),    # Cedar Mill, family F without extension
])
def test_signature(eax, family, model, stepping):
    assert Signature.decode(eax) == Signature(family, model, stepping)


def test_vendor_brand_from_dump(corpus_dir):
    # The file's header: "CPUID CPU Name : 12th Gen Intel(R) Core(TM) i9-12900K".
    cpu = read_cpuid_file(INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt")[0]
    assert cpu.table.vendor == "GenuineIntel"
    assert cpu.table.brand == "12th Gen Intel(R) Core(TM) i9-12900K"
    assert cpu.table.signature == Signature(6, 0x97, 2)
