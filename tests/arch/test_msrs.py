"""LBR MSR codecs: IA32_LBR_x_INFO, record addresses (reference section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.msrs import INFO_VALID_MASK, LBR_CTL_VALID, BranchType, LbrCtl, LbrInfo, RecordKind, \
    arch_lbr_msrs, decode_record_msr, is_canonical, msr_name, record_msr

INFOS = st.builds(LbrInfo, st.integers(0, 0xFFFF), st.integers(0, 15), st.booleans(),
                  st.booleans(), st.booleans(), st.booleans())


@settings(max_examples=200, deadline=None)
@given(INFOS)
def test_lbr_info_round_trip(info):
    assert LbrInfo.decode(info.encode()) == info


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_lbr_info_keeps_every_defined_bit(value):
    # Bits 55:16 are reserved: decode/encode keeps exactly the defined fields.
    assert LbrInfo.decode(value).encode() == value & INFO_VALID_MASK


def test_lbr_info_bit_positions():
    # Reference: 15:0 CYC_CNT, 59:56 BR_TYPE, 60 CYC_CNT_VALID, 61 TSX_ABORT, 62 IN_TSX, 63 MISPRED.
    assert LbrInfo(cyc_cnt=0xFFFF).encode() == 0xFFFF
    assert LbrInfo(br_type=BranchType.NEAR_RET).encode() == 5 << 56
    assert LbrInfo(mispred=True).encode() == 1 << 63
    assert LbrInfo(cyc_cnt_valid=True, in_tsx=True).encode() == (1 << 60) | (1 << 62)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(RecordKind)), st.integers(0, 63))
def test_record_msr_round_trip(kind, index):
    assert decode_record_msr(record_msr(kind, index)) == (kind, index)


def test_record_addresses_and_names():
    assert record_msr(RecordKind.FROM, 0) == 0x1500 and record_msr(RecordKind.TO, 31) == 0x161F
    assert record_msr(RecordKind.INFO, 63) == 0x123F
    assert decode_record_msr(0x1540) is None and decode_record_msr(0x14CE) is None
    assert msr_name(0x1503) == "IA32_LBR_3_FROM_IP" and msr_name(0x1203) == "IA32_LBR_3_INFO"
    with pytest.raises(ValueError):
        record_msr(RecordKind.FROM, 64)
    assert len(arch_lbr_msrs(32)) == 5 + 3 * 32


def test_lbr_ctl_valid_mask():
    # Reference: valid mask 0x7F000F.
    assert LBR_CTL_VALID == sum(LbrCtl) == 0x7F000F
    assert all(bt.filter_bit & 0x7F0000 for bt in BranchType)


@pytest.mark.parametrize("address, canonical", [(0x7FFF_FFFF_FFFF, True), (0x8000_0000_0000, False),
                                                (0xFFFF_8000_0000_0000, True), (0, True)])
def test_canonical(address, canonical):
    assert is_canonical(address) == canonical
