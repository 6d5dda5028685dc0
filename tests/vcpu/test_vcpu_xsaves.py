"""XSAVES/XRSTORS of component 15 as real bytes, put/load, save/restore.

Expected offsets are computed here from the SDM compaction rule (component i follows the
previous included one, 64-aligned only when CPUID.(0xD,i):ECX[1]); sizes from the corpus
(Alder Lake 0xD.2 = 256 bytes; 0xD.F = 0x328 per INDEX.md); layout of component 15 from
ref section 1 (LBR_CTL, LBR_DEPTH, LER_FROM, LER_TO, LER_INFO, then FROM/TO/INFO per record)."""

from __future__ import annotations

import json
import struct

import pytest

from vcpu_tables import ALDER_LAKE_ROWS, alder_lake
from vlbr.arch.cpuid import Registers
from vlbr.arch.msrs import (IA32_DEBUGCTL, IA32_LBR_CTL, IA32_LBR_DEPTH, IA32_LER_INFO,
                            IA32_PERF_GLOBAL_STATUS, IA32_XSS, BranchType, RecordKind, record_msr)
from vlbr.vcpu import ArchLbrVcpu, Branch, GeneralProtection, InvalidOpcode, LbrConfig

XCR0 = 0x3  # Guest ABI: x87 | SSE
XSS = 1 << 15
ALL = (1 << 64) - 1
CTL = 0x7F0007


def busy(config, n=40, depth=32) -> ArchLbrVcpu:
    v = ArchLbrVcpu(config)
    v.wrmsr(IA32_LBR_DEPTH, depth)
    v.wrmsr(IA32_LBR_CTL, CTL)
    for i in range(n):
        v.retire_branch(Branch(0x400000 + 16 * i, 0x500000 + i, BranchType(i % 6), 0, cycles=i))
    v.exception(0x401000, 0x402000, 0)
    return v


def component(area: bytes, offset: int, depth: int):
    head = struct.unpack_from("<5Q", area, offset)
    recs = [struct.unpack_from("<3Q", area, offset + 40 + 24 * i) for i in range(depth)]
    return head, recs


def test_xsaves_writes_header_and_component(config):
    v = busy(config)
    area = bytearray(4096)
    v.xsaves(area, 0, ALL, XCR0, XSS)
    xstate_bv, xcomp_bv = struct.unpack_from("<QQ", area, 512)
    assert xstate_bv == XSS and xcomp_bv == (1 << 63) | XCR0 | XSS
    head, recs = component(area, 576, 32)  # x87|SSE live in the legacy area: 15 at 576
    assert head == (CTL, 32, *v.ler)
    assert recs == v.records()
    assert 576 + 40 + 24 * 32 == 1384  # 808 bytes (ref 1) and nothing beyond
    assert not any(area[1384:])


def test_xsaves_offset_follows_avx(config):
    v = busy(config)
    area = bytearray(4096)
    v.xsaves(area, 64, ALL, XCR0 | 0x4, XSS)
    assert struct.unpack_from("<Q", area, 64 + 520)[0] == (1 << 63) | 0x8007
    head, recs = component(area, 64 + 576 + 256, 32)  # after AVX's 256 bytes (0xD.2 EAX)
    assert head[0] == CTL and recs == v.records()


def test_init_optimisation(config):
    v = ArchLbrVcpu(config)
    area = bytearray(b"\xAA" * 2048)
    area[512:576] = bytes(64)
    v.xsaves(area, 0, ALL, XCR0, XSS)
    assert struct.unpack_from("<Q", area, 512)[0] & XSS == 0
    assert area[576:1384] == b"\xAA" * 808  # component not written


@pytest.mark.parametrize("rfbm,xss", [(0x3, XSS), (ALL, 0)])
def test_component_not_requested_is_not_saved(config, rfbm, xss):
    area = bytearray(2048)
    busy(config).xsaves(area, 0, rfbm, XCR0, xss)
    assert struct.unpack_from("<QQ", area, 512) == (0, (1 << 63) | 0x3)
    assert not any(area[576:])


def test_roundtrip_into_another_vcpu(config):
    a, b = busy(config), ArchLbrVcpu(config)
    area = bytearray(2048)
    a.xsaves(area, 0, ALL, XCR0, XSS)
    b.xrstors(area, 0, ALL, XCR0, XSS)
    assert b.records() == a.records() and b.ler == a.ler
    assert b.rdmsr(IA32_LBR_CTL) == CTL and b.recording


def test_xrstors_depth_mismatch_clears_records(config):
    # ref 2: "XRSTORS of component 15 clears the records if the saved DEPTH differs"
    a = busy(config)
    b = busy(config, n=5, depth=16)
    area = bytearray(2048)
    a.xsaves(area, 0, ALL, XCR0, XSS)
    b.xrstors(area, 0, ALL, XCR0, XSS)
    assert b.rdmsr(IA32_LBR_DEPTH) == 16
    assert b.records() == [(0, 0, 0)] * 16
    assert b.rdmsr(IA32_LBR_CTL) == CTL and b.ler == a.ler


def test_xrstors_init_state(config):
    area = bytearray(2048)
    ArchLbrVcpu(config).xsaves(area, 0, ALL, XCR0, XSS)  # init-optimised image
    b = busy(config, depth=16)
    b.xrstors(area, 0, ALL, XCR0, XSS)
    assert b.rdmsr(IA32_LBR_CTL) == 0 and b.ler == (0, 0, 0)
    assert b.records() == [(0, 0, 0)] * 16 and b.rdmsr(IA32_LBR_DEPTH) == 16


def saved_area(config) -> bytearray:
    area = bytearray(2048)
    busy(config).xsaves(area, 0, ALL, XCR0, XSS)
    return area


@pytest.mark.parametrize("damage,match", [
    (lambda a: struct.pack_into("<Q", a, 520, 0x8003), "XCOMP_BV\\[63\\]"),
    (lambda a: struct.pack_into("<Q", a, 520, (1 << 63) | 0x8007), "outside XCR0"),
    (lambda a: struct.pack_into("<Q", a, 512, 0x10000 | 0x8000), "subset"),
    (lambda a: a.__setitem__(530, 1), "63:16"),
    (lambda a: a.__setitem__(570, 1), "63:16"),
    (lambda a: struct.pack_into("<Q", a, 576, 1 << 5), "reserved"),  # LBR_CTL bit 5
    (lambda a: struct.pack_into("<Q", a, 576 + 40, 1 << 47), "canonical"),  # record 0 FROM
    (lambda a: struct.pack_into("<Q", a, 576 + 32, 1 << 20), "reserved"),  # LER_INFO
])
def test_xrstors_malformed_area(config, damage, match):
    area = saved_area(config)
    damage(area)
    v = busy(config, n=3)
    before = v.records()
    with pytest.raises(GeneralProtection, match=match):
        v.xrstors(area, 0, ALL, XCR0, XSS)
    assert v.records() == before  # a faulting XRSTORS changes nothing


def test_misaligned_and_short_areas(config):
    v = busy(config)
    with pytest.raises(GeneralProtection, match="aligned"):
        v.xsaves(bytearray(4096), 32, ALL, XCR0, XSS)
    with pytest.raises(GeneralProtection, match="aligned"):
        v.xrstors(bytearray(4096), 8, ALL, XCR0, XSS)
    with pytest.raises(GeneralProtection, match="short"):
        v.xsaves(bytearray(1000), 0, ALL, XCR0, XSS)
    area = saved_area(config)
    with pytest.raises(GeneralProtection, match="short"):
        v.xrstors(area[:1200], 0, ALL, XCR0, XSS)
    with pytest.raises(GeneralProtection, match="short"):
        v.xrstors(area[:500], 0, ALL, XCR0, XSS)


def test_no_xsaves_is_ud():
    r = ALDER_LAKE_ROWS[(0xD, 1)]
    cfg = LbrConfig.from_cpuid(alder_lake().replace({(0xD, 1): Registers(r.eax & ~8, r.ebx, r.ecx, r.edx)}))
    with pytest.raises(InvalidOpcode):
        ArchLbrVcpu(cfg).xsaves(bytearray(4096), 0, ALL, XCR0, XSS)


# -- put / load: the state's location ----------------------------------------------------

def test_put_moves_state_into_own_buffer(config):
    v = busy(config)
    records, ler = v.records(), v.ler
    v.put()
    assert not v.loaded and not v.recording
    buf = v.xsave_buffer
    assert struct.unpack_from("<QQ", buf, 512) == (XSS, (1 << 63) | 0x8003)
    head, recs = component(buf, 576, 32)
    assert head == (CTL, 32, *ler) and recs == records
    # host reads come from the buffer
    assert v.rdmsr(record_msr(RecordKind.TO, 0), host_initiated=True) == records[0][1]
    v.load()
    assert v.records() == records and v.recording


def test_host_write_while_put_lands_in_the_buffer(config):
    v = busy(config)
    v.put()
    v.wrmsr(record_msr(RecordKind.FROM, 2), 0x7777, host_initiated=True)
    v.wrmsr(IA32_LBR_CTL, 0x3, host_initiated=True)
    buf = v.xsave_buffer
    assert struct.unpack_from("<Q", buf, 576 + 40 + 24 * 2)[0] == 0x7777
    assert struct.unpack_from("<Q", buf, 576)[0] == 0x3
    v.load()
    assert v.rdmsr(record_msr(RecordKind.FROM, 2)) == 0x7777 and v.rdmsr(IA32_LBR_CTL) == 0x3


def test_host_depth_write_while_put_clears_buffer_records(config):
    v = busy(config)
    v.put()
    v.wrmsr(IA32_LBR_DEPTH, 8, host_initiated=True)
    v.load()
    assert v.records() == [(0, 0, 0)] * 8


# -- migration ---------------------------------------------------------------------------

def guest_visible(v: ArchLbrVcpu) -> dict[int, int]:
    """Every MSR the vCPU owns that a host read answers, by probing all of them."""
    out = {}
    for msr in [IA32_LBR_CTL, IA32_LBR_DEPTH, 0x1DD, 0x1DE, IA32_LER_INFO, IA32_DEBUGCTL, 0x345,
                IA32_XSS, IA32_PERF_GLOBAL_STATUS, 0x390] + [record_msr(k, i) for k in RecordKind
                                                               for i in range(64)]:
        try:
            out[msr] = v.rdmsr(msr, host_initiated=True)
        except GeneralProtection:
            pass
    return out


@pytest.mark.parametrize("put_first", [False, True])
def test_save_restore_into_fresh_vcpu(config, put_first):
    v = busy(config, depth=16)
    v.wrmsr(IA32_DEBUGCTL, 1 << 11)
    v.wrmsr(IA32_XSS, XSS)
    v.pmi()
    v.smi()
    if put_first:
        v.put()
    saved = json.loads(json.dumps(v.save()))
    fresh = ArchLbrVcpu(config)
    fresh.restore(saved)
    assert guest_visible(fresh) == guest_visible(v)
    assert len(guest_visible(v)) == 10 + 3 * 32
    assert fresh.frozen and fresh.in_smm
    fresh.rsm()
    assert fresh.rdmsr(IA32_LBR_CTL) == CTL
