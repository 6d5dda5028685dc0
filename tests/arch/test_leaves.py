"""Leaf codecs: decode(encode(x)) == x and encode(decode(regs)) == regs, plus corpus facts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import Registers
from vlbr.arch.leaves import ArchLbrLeaf, PerfMon, StructuredFeatures, XsaveComponent, \
    XsaveExtended, XsaveMain, depth_bit

U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, (1 << 64) - 1)
REGS = st.builds(Registers, U32, U32, U32, U32)


def bits(n: int):
    return st.integers(0, (1 << n) - 1)


VIEWS = {
    "StructuredFeatures": st.builds(StructuredFeatures, U32, U32, U32, U32),
    "PerfMon": st.builds(PerfMon, bits(8), bits(8), bits(8), bits(8), U32, U32, bits(5), bits(8), bits(19)),
    "XsaveMain": st.builds(XsaveMain, U64, U32, U32),
    "XsaveExtended": st.builds(XsaveExtended, U32, U32, U64),
    "ArchLbrLeaf": st.builds(ArchLbrLeaf, bits(8), bits(22), st.booleans(), st.booleans(),
                             st.booleans(), st.booleans(), st.booleans(), bits(29), st.booleans(),
                             st.booleans(), st.booleans(), bits(13), bits(4), bits(12), U32),
}
DECODERS = {"StructuredFeatures": StructuredFeatures.decode, "PerfMon": PerfMon.decode,
            "XsaveMain": XsaveMain.decode, "XsaveExtended": XsaveExtended.decode,
            "ArchLbrLeaf": ArchLbrLeaf.decode}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_decode_encode_identity(name):
    @settings(max_examples=150, deadline=None)
    @given(VIEWS[name])
    def check(view):
        assert DECODERS[name](view.encode()) == view

    check()


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_registers_survive_decode_encode(name):
    # Exactness the other way: no register bit is lost, reserved bits included.
    @settings(max_examples=150, deadline=None)
    @given(REGS)
    def check(regs):
        assert DECODERS[name](regs).encode() == regs

    check()


COMPONENTS = st.builds(XsaveComponent, st.integers(2, 63), U32, U32, st.booleans(), st.booleans(),
                       st.booleans(), bits(29), U32)


@settings(max_examples=150, deadline=None)
@given(COMPONENTS)
def test_xsave_component_round_trip(comp):
    assert XsaveComponent.decode(comp.index, comp.encode()) == comp


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 63), REGS)
def test_xsave_component_registers_exact(index, regs):
    assert XsaveComponent.decode(index, regs).encode() == regs


def test_alder_lake_leaf_0x1c_fields():
    # Reference section 1: EAX[7:0] = 0x0b -> depths 8, 16, 32; max = 8 * fls = 32.
    # INDEX.md: E-cores 0xC000000B (LIP), EBX 7, ECX 0x000F0007 on newer parts.
    leaf = ArchLbrLeaf.decode(Registers(0xC000000B, 7, 0x000F0007, 0))
    assert leaf.depths == [8, 16, 32] and leaf.max_depth == 32
    assert leaf.lip and leaf.deep_cstate_reset
    assert leaf.cpl_filtering and leaf.branch_filtering and leaf.call_stack
    assert leaf.mispredict and leaf.timed_lbr and leaf.branch_type
    assert leaf.event_logging == 0xF and not leaf.supports_depth(24)


@pytest.mark.parametrize("depth, bit", [(8, 1), (16, 2), (32, 8), (64, 0x80)])
def test_depth_bit(depth, bit):
    assert depth_bit(depth) == bit
    assert ArchLbrLeaf.decode(Registers(bit)).depths == [depth]


@pytest.mark.parametrize("depth", [0, 4, 12, 72, -8])
def test_illegal_depth(depth):
    with pytest.raises(ValueError):
        depth_bit(depth)


def test_encode_rejects_out_of_range_fields():
    leaf = ArchLbrLeaf.decode(Registers(0x4000000B, 7, 7, 0))
    from dataclasses import replace
    with pytest.raises(ValueError):
        replace(leaf, depth_mask=0x100).encode()
    with pytest.raises(ValueError):
        replace(leaf, event_logging=16).encode()
