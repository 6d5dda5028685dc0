"""emulated_guest_cpuid(): the guest CPUID over a base without Arch LBR.

Bases: this machine's KVM_GET_SUPPORTED_CPUID (docs/kvm-on-these-machines.md: leaf 0x1C all
zero, 0xD.1 ECX 0), the AMD EPYC KVM guest `cpuid -r` dump of the corpus, and an Intel dump
without Arch LBR. Expected values: reference doc section 1 (bits and sizes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.leaves import arch_lbr_leaf, perfmon, structured_features, xsave_extended
from vlbr.policy import (EMULATED_SUPPORTED_XSS, LbrEmulationCaps, UnsupportedDepth,
                         emulated_guest_cpuid)

from corpus import CPUID_RAW_DUMP
from policy_corpus import instlat, types_of

CHANGED = {(0, 0), (1, 0), (7, 0), (0xA, 0), (0xD, 0), (0xD, 1), (0xD, 0xF), (0x1C, 0)}


def kvm_table() -> CpuidTable:
    from vlbr.host.kvm import Kvm

    reason = Kvm.unavailable_reason()
    if reason:
        pytest.skip(f"/dev/kvm: {reason}")
    with Kvm() as kvm:
        return kvm.supported_cpuid()


@pytest.fixture(scope="module", params=["kvm", "amd-epyc-dump", "skylake-dump"])
def base(request, corpus_dir) -> CpuidTable:
    if request.param == "kvm":
        return kvm_table()
    if request.param == "amd-epyc-dump":
        return types_of(CPUID_RAW_DUMP)[0].table
    return types_of(instlat("GenuineIntel00506E3_SkyLake_01_CPUID.txt"))[0].table


def test_base_has_no_arch_lbr(base):
    assert not structured_features(base).arch_lbr and arch_lbr_leaf(base).depth_mask == 0


def test_every_row_the_brief_names(base):
    g = emulated_guest_cpuid(base)
    leaf = arch_lbr_leaf(g)
    assert structured_features(g).arch_lbr  # CPUID.7.0:EDX[19]
    assert g.max_basic_leaf >= 0x1C
    assert leaf.depths == [32]
    assert leaf.lip and not leaf.deep_cstate_reset and leaf.edx == 0 and leaf.event_logging == 0
    assert (leaf.cpl_filtering, leaf.branch_filtering, leaf.call_stack) == (True, True, True)
    assert (leaf.mispredict, leaf.timed_lbr, leaf.branch_type) == (True, True, True)
    assert g.regs(0x1C) .eax == 0x80000008 and g.regs(0x1C).ebx == 7 and g.regs(0x1C).ecx == 7
    ext = xsave_extended(g)
    assert ext.xsaves and ext.xss_supported == 1 << 15 == EMULATED_SUPPORTED_XSS
    assert ext.size_in_use == 576  # XCR0 x87|SSE and XSS 0: legacy area + header only
    assert g.regs(0xD, 0xF).as_tuple() == (808, 0, 1, 0)
    assert perfmon(g).version >= 4
    assert g.vendor == base.vendor and g.signature == base.signature
    assert g.regs(1).ecx & (1 << 26) and g.regs(1).ecx & (1 << 15)  # XSAVE, PDCM
    dropped = {(0xD, i) for i in range(64) if xsave_extended(base).xss_supported >> i & 1}
    for key, regs in base.items():  # everything else is the base's, but other XSS states
        if key in dropped:
            assert key not in g, key
        elif key not in CHANGED:
            assert g[key] == regs, key


@settings(max_examples=40, deadline=None)
@given(depth=st.sampled_from([None, *range(8, 65, 8)]))
def test_depths(base, depth):
    g = emulated_guest_cpuid(base, depth)
    leaf = arch_lbr_leaf(g)
    assert leaf.depths == (list(range(8, 65, 8)) if depth is None else [depth])
    assert g.regs(0xD, 0xF).eax == 40 + 24 * leaf.max_depth


@pytest.mark.parametrize("depth", [0, 4, 12, 72, -8])
def test_illegal_depths(base, depth):
    with pytest.raises(UnsupportedDepth):
        emulated_guest_cpuid(base, depth)


def test_caps_filter_the_leaf(base):
    caps = LbrEmulationCaps(depth_mask=0x0B, call_stack=False, timed_lbr=False, lip=False,
                            pmu_version=2)
    g = emulated_guest_cpuid(base, None, caps)
    assert arch_lbr_leaf(g).depths == [8, 16, 32]
    assert g.regs(0x1C).eax == 0x0B and g.regs(0x1C).ebx == 3 and g.regs(0x1C).ecx == 5
    assert perfmon(g).version == max(2, perfmon(base).version)
    with pytest.raises(UnsupportedDepth):
        emulated_guest_cpuid(base, 24, caps)


def test_vcpu_model_reads_the_table(base):
    from vlbr.vcpu.config import LbrConfig  # the consumer (vcpu layer), imported by the test only

    config = LbrConfig.from_cpuid(emulated_guest_cpuid(base, 16))
    assert config.arch_lbr and config.depths == (16,) and config.max_depth == 16
    assert config.xsaves and config.supported_xss & (1 << 15) and config.pdcm
