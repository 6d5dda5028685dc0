"""XSAVE layout against real dumps, and the header / component 15 codecs."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import xsave_component, xsave_extended, xsave_main
from vlbr.arch.xsave import ArchLbrXstate, XsaveHeader, XsaveLayout, XsaveLayoutError, \
    arch_lbr_depth_for_size, arch_lbr_state_size
from vlbr.host import core_types, read_cpuid_file

from corpus import CPUID_RAW_DUMP, INSTLATX64, LIBVIRT, aida_dumps, has_corpus

U64 = st.integers(0, (1 << 64) - 1)


def representative_tables():
    """One table per core type of every dump with complete XSAVES enumeration."""
    out = []
    if not has_corpus():
        return out
    for path in aida_dumps() + [CPUID_RAW_DUMP, LIBVIRT / "x86_64-cpuid-Xeon-6788P.xml"]:
        for ct in core_types(read_cpuid_file(path)):
            t = ct.table
            if t.max_basic_leaf < 0xD or t.query(0xD, 1) is None or not xsave_extended(t).xsaves:
                continue
            mask = xsave_main(t).xcr0_supported | xsave_extended(t).xss_supported
            # Some dumps enumerate a supported component as all zeros (e.g. CascadeLakeXeon's
            # PKRU 0xD.9, CoffeeLake_CPUID4's PT 0xD.8): incomplete, like INDEX.md's '-'.
            comps = [xsave_component(t, i) for i in range(2, 64) if mask >> i & 1]
            if all(c is not None and c.size for c in comps):
                out.append((f"{path.name}:{ct.cpus[0]}", t))
    return out


TABLES = representative_tables()


def test_enough_real_tables(corpus_dir):
    assert len(TABLES) >= 60  # the checks below must run on many real parts


def subsets(bits: list[int]):
    for n in range(len(bits) + 1):
        for combo in combinations(bits, n):
            yield sum(1 << b for b in combo)


@pytest.mark.parametrize("name, table", TABLES, ids=[n for n, _ in TABLES])
def test_standard_size_of_all_user_components_is_cpuid_0xd_0_ecx(name, table):
    # CPUID.(0xD,0):ECX = size of the standard area for every supported XCR0 component.
    main = xsave_main(table)
    assert XsaveLayout.for_mask(table, main.xcr0_supported, compacted=False).size == main.size_max


@pytest.mark.parametrize("name, table", TABLES, ids=[n for n, _ in TABLES])
def test_compacted_size_explains_cpuid_0xd_1_ebx(name, table):
    # CPUID.(0xD,1):EBX is the compacted size for the XCR0 | IA32_XSS the OS had enabled when
    # the dump was taken. Some XCR0 (matching the standard size in 0xD.0 EBX) and some XSS
    # subset must give exactly it; 64-byte alignment (0xD.i ECX[1], AMX) changes the answer.
    main, ext = xsave_main(table), xsave_extended(table)
    user = [i for i in range(2, 64) if main.xcr0_supported >> i & 1]
    sup = [i for i in range(64) if ext.xss_supported >> i & 1]
    xcr0s = [0b11 | m for m in subsets(user)
             if XsaveLayout.for_mask(table, 0b11 | m, compacted=False).size == main.size_enabled]
    assert xcr0s, "no XCR0 matches CPUID.(0xD,0):EBX"
    sizes = {XsaveLayout.for_mask(table, x | s, compacted=True).size for x in xcr0s for s in subsets(sup)}
    assert ext.size_in_use in sizes


def test_amx_alignment_is_needed_for_sapphire_rapids(corpus_dir):
    # GenuineIntel00806F8_SapphireRapids_05: 0xD.1 EBX = 10880 = x87..AVX-512, PT, PKRU, CET_U,
    # then TILECFG and TILEDATA each 64-byte aligned (CPUID.(0xD,17/18):ECX[1] = 1).
    t = read_cpuid_file(INSTLATX64 / "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt")[0].table
    assert xsave_component(t, 17).align64 and xsave_component(t, 18).align64
    mask = 0x60000 | 0x2E7 | (1 << 8) | (1 << 11)
    layout = XsaveLayout.for_mask(t, mask, compacted=True)
    assert layout.size == xsave_extended(t).size_in_use == 10880
    assert layout.offset_of(17) % 64 == 0 and layout.offset_of(18) == 2688


def test_arch_lbr_offset_in_alder_lake_compacted_area(corpus_dir):
    # AlderLake_01: every supported XCR0|XSS; comp 15 follows CET_S (0xD.0xC: 24 bytes) unaligned.
    t = read_cpuid_file(INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt")[0].table
    mask = xsave_main(t).xcr0_supported | xsave_extended(t).xss_supported
    layout = XsaveLayout.for_mask(t, mask)
    assert layout.offset_of(15) == layout.offset_of(12) + xsave_component(t, 12).size
    assert layout.sizes[15] == 808 and layout.offset_of(16) == layout.offset_of(15) + 808


def test_missing_component_and_unknown_offset():
    t = CpuidTable({(0xD, 2): Registers(256, 576, 0, 0)})
    with pytest.raises(XsaveLayoutError, match="0xf"):
        XsaveLayout.for_mask(t, 0b111 | 1 << 15)
    with pytest.raises(XsaveLayoutError):
        XsaveLayout.for_mask(t, 0b111).offset_of(15)


@pytest.mark.parametrize("depth, size", [(8, 232), (16, 424), (32, 808), (64, 1576)])
def test_arch_lbr_state_size(depth, size):
    # Reference section 1: 40 + 24 * depth; 808 bytes at depth 32 (INDEX.md comp15 size).
    assert arch_lbr_state_size(depth) == size and arch_lbr_depth_for_size(size) == depth


@pytest.mark.parametrize("size", [0, 40, 41, 800])
def test_no_depth_for_odd_sizes(size):
    assert arch_lbr_depth_for_size(size) is None


@settings(max_examples=150, deadline=None)
@given(U64, U64, st.binary(min_size=48, max_size=48), st.binary(max_size=64))
def test_xsave_header_round_trip(xstate_bv, xcomp_bv, reserved, tail):
    header = XsaveHeader(xstate_bv, xcomp_bv, reserved)
    area = bytes(512) + header.pack() + tail
    assert XsaveHeader.unpack(area) == header
    assert header.compacted == bool(xcomp_bv >> 63)


def test_xsave_header_short_area():
    with pytest.raises(ValueError):
        XsaveHeader.unpack(bytes(575))


RECORD = st.tuples(U64, U64, U64)


@settings(max_examples=100, deadline=None)
@given(U64, U64, U64, U64, U64, st.sampled_from([8, 16, 32, 64]).flatmap(
    lambda d: st.lists(RECORD, min_size=d, max_size=d)))
def test_arch_lbr_xstate_round_trip(ctl, depth, ler_from, ler_to, ler_info, records):
    state = ArchLbrXstate(ctl, depth, ler_from, ler_to, ler_info, tuple(records))
    data = state.pack()
    assert len(data) == state.size == arch_lbr_state_size(len(records))
    assert ArchLbrXstate.unpack(data, len(records)) == state


def test_arch_lbr_xstate_byte_layout():
    # Reference section 1: all u64, LBR_CTL first, then DEPTH, LER_FROM/TO/INFO, records.
    state = ArchLbrXstate(1, 8, 2, 3, 4, tuple((10 + i, 20 + i, 30 + i) for i in range(8)))
    data = state.pack()
    assert int.from_bytes(data[8:16], "little") == 8
    assert int.from_bytes(data[40:48], "little") == 10 and int.from_bytes(data[56:64], "little") == 30
    with pytest.raises(ValueError):
        ArchLbrXstate.unpack(data[:-1], 8)
