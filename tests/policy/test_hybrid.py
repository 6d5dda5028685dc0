"""Hybrid hosts: the policy exposes what every core type supports and says what differs.

INDEX.md: hybrid dumps have P-cores with leaf 0x1C EAX 4000000B and E-cores with C000000B
(LIP set); every other Arch LBR field agrees."""

from __future__ import annotations

import pytest

from vlbr.arch.cpuid import Registers
from vlbr.arch.leaves import arch_lbr_leaf
from vlbr.host import CoreType
from vlbr.policy import HostDescription, supported_cpuid

from corpus import index_rows
from policy_corpus import instlat, types_of


def hybrid_files() -> list[str]:
    seen: dict[str, set[int]] = {}
    for r in index_rows():
        if r.arch_lbr:
            seen.setdefault(r.file, set()).add(r.leaf_0x1c[0])
    return sorted(f for f, eaxes in seen.items() if len(eaxes) > 1)


@pytest.mark.parametrize("name", hybrid_files())
def test_lip_difference_is_noted_and_not_exposed(corpus_dir, name):
    host = HostDescription.from_core_types(types_of(instlat(name)))
    assert any("LIP" in n and "differ" in n for n in host.notes)
    for variant in ("email-v2", "v3", "vlbr"):
        sup = supported_cpuid(host, variant)
        leaf = arch_lbr_leaf(sup.table)
        assert not leaf.lip and leaf.deep_cstate_reset
        assert sup.depth == (40 if variant == "email-v2" else 32)
        assert any("LIP" in n for n in sup.notes)


def test_single_core_type_merges_nothing(corpus_dir):
    types = types_of(instlat("GenuineIntel00806F8_SapphireRapids_05_CPUID.txt"))
    assert len(types) == 1
    host = HostDescription.from_core_types(types)
    assert host.notes == () and host.table == types[0].table


def test_depth_bitmaps_and_bits_are_anded(corpus_dir):
    (p_core, e_core) = types_of(instlat("GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt"))
    # A synthetic E-core with depths 8 and 16 only, no call-stack, and a 424-byte component.
    small = CoreType("small", (99,), e_core.table.replace({
        (0x1C, 0): Registers(0xC0000003, 3, 7, 0), (0xD, 0xF): Registers(424, 0, 1, 0)}))
    host = HostDescription.from_core_types([p_core, small])
    leaf = arch_lbr_leaf(host.table)
    assert leaf.depth_mask == 0x03 and not leaf.call_stack and not leaf.lip
    assert host.table.regs(0xD, 0xF).eax == 40 + 24 * 16
    sup = supported_cpuid(host, "v3")
    assert sup.depth == 16 and sup.table.regs(0xD, 0xF).eax == 424
    assert any("depth bitmap" in n for n in host.notes)
    assert any("EBX" in n for n in host.notes)
    assert any("CPUID.(0xD,0xF) size" in n for n in host.notes)


def test_a_core_type_without_arch_lbr_hides_it(corpus_dir):
    (p_core, e_core) = types_of(instlat("GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt"))
    r7 = e_core.table.regs(7, 0)
    bare = CoreType("bare", (98,), e_core.table.replace({
        (0x7, 0): Registers(r7.eax, r7.ebx, r7.ecx, r7.edx & ~(1 << 19)),
        (0x1C, 0): Registers()}))
    host = HostDescription.from_core_types([p_core, bare])
    assert not host.arch_lbr
    assert supported_cpuid(host, "vlbr").table.regs(0x1C) == Registers()
    assert any("ARCH_LBR" in n for n in host.notes)
