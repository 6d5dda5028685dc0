"""compare_variants(): the variants side by side on the corpus (INDEX.md rows, reference doc
section 4) and on a synthetic host whose top depth bit is 7."""

from __future__ import annotations

import pytest

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.policy.compare import compare_variants

from corpus import index_rows
from policy_corpus import arch_lbr_files, host_of, instlat, non_arch_lbr_files, types_of


def views(host):
    return {v.variant: v for v in compare_variants(host)}


@pytest.mark.parametrize("name", arch_lbr_files())
def test_email_v2_offers_an_unsupported_depth_and_v3_the_host_maximum(name):
    rows = [r for r in index_rows() if r.file == name and r.arch_lbr]
    for core in types_of(instlat(name)):
        v = views(host_of(core))
        host_mask = rows[0].leaf_0x1c[0] & 0xFF  # INDEX.md: leaf 0x1C EAX
        assert v["email-v2"].host_depth_bits == host_mask
        assert not v["email-v2"].depth_supported
        assert any("not one the host supports" in p for p in v["email-v2"].problems)
        assert v["v3"].depth == 8 * host_mask.bit_length() and v["v3"].problems == []
        assert not v["mainline"].arch_lbr and not v["mainline"].xss_lbr
        if v["v3"].comp15_size is not None:  # the dump's CPUID.(0xD,0xF) row is present
            assert v["v3"].size_matches_depth and not v["email-v2"].size_matches_depth


@pytest.mark.parametrize("name", non_arch_lbr_files()[:20])
def test_hosts_without_arch_lbr_have_nothing_to_compare(name):
    for core in types_of(instlat(name)):
        for view in compare_variants(host_of(core)):
            assert not view.arch_lbr and view.depth == 0 and view.problems == []


def test_top_depth_bit_7_leaves_email_v2_without_a_depth():
    # Reference doc section 4: 1 << fls(0x8B) is bit 8, outside EAX[7:0].
    table = CpuidTable({
        (0x0, 0): Registers(0x1C, 0x756E6547, 0x6C65746E, 0x49656E69),
        (0x7, 0): Registers(0, 0, 0, 1 << 19),
        (0xD, 0): Registers(0x3, 576, 576, 0),
        (0xD, 1): Registers(0xF, 576, 1 << 15, 0),
        (0xD, 0xF): Registers(40 + 24 * 64, 0, 1, 0),
        (0x1C, 0): Registers(0x4000008B, 7, 7, 0),
    })
    from vlbr.policy import HostDescription
    v = views(HostDescription(table))
    assert v["email-v2"].depth == 0
    assert "ARCH_LBR with no depth" in v["email-v2"].problems
    assert v["v3"].depth == 64 and v["v3"].problems == []
