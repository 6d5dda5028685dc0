"""The Linux guest's CPU: what arch/x86/events/intel/core.c and lbr.c need to take the
virtual Arch LBR (reference doc section 8), under the vlbr and mainline variants, and only
features unicorn's TCG executes."""

import pytest

from vlbr.arch.leaves import arch_lbr_leaf, perfmon, structured_features, xsave_extended
from vlbr.arch.xsave import arch_lbr_state_size
from vlbr.arch.x86 import CPUID1_ECX_HYPERVISOR, CPUID1_ECX_PDCM
from vlbr.backends.pc.cpu_model import base_cpuid, guest_cpuid
from vlbr.backends.software.cpu_features import unicorn_cpuid

XSAVES = 1 << 3
XSS_ARCH_LBR = 1 << 15


@pytest.mark.parametrize("depth", [8, 16, 32, 64])
def test_vlbr_offers_arch_lbr_at_the_chosen_depth_with_xsaves_of_component_15(depth):
    t = guest_cpuid("vlbr", depth)
    assert structured_features(t).arch_lbr  # CPUID.7.0:EDX[19]
    assert arch_lbr_leaf(t).max_depth == depth  # lbr.c: depth = 8 * fls(EAX[7:0])
    ext = xsave_extended(t)
    assert t.regs(0xD, 1).eax & XSAVES and ext.xss_supported & XSS_ARCH_LBR
    # lbr.c picks the XSAVES path only when CPUID.(0xD,0xF) is 40 + 24 * depth.
    assert t.regs(0xD, 15).eax == arch_lbr_state_size(depth) == 40 + 24 * depth


def test_the_pmu_is_one_linux_accepts():
    pm = perfmon(guest_cpuid())
    # intel_pmu_init(): mask_length >= ARCH_PERFMON_EVENTS_COUNT (7), else -ENODEV; v4 for
    # GLOBAL_STATUS_RESET and the LBR freeze acknowledgement.
    assert pm.version >= 4 and pm.ebx_length >= 7 and pm.gp_counters and pm.fixed_counters
    ecx = guest_cpuid().regs(1).ecx
    assert ecx & CPUID1_ECX_PDCM and ecx & CPUID1_ECX_HYPERVISOR  # check_msr() runs in a guest


def test_mainline_offers_no_arch_lbr():
    t = guest_cpuid("mainline")
    assert not structured_features(t).arch_lbr
    assert arch_lbr_leaf(t).max_depth == 0
    assert not xsave_extended(t).xss_supported & XSS_ARCH_LBR


def test_the_model_is_intel_and_not_one_linux_has_tables_for():
    t = base_cpuid()
    assert t.vendor == "GenuineIntel"
    sig = t.signature
    assert (sig.family, sig.model) == (6, 0xFF)


def test_no_source_of_irreproducibility_is_offered():
    t = base_cpuid()
    assert not t.regs(1).ecx & (1 << 30)  # RDRAND
    assert not t.regs(7).ebx & (1 << 18)  # RDSEED
    assert t.query(0x15) is None and t.query(0x16) is None  # TSC/crystal frequency
    assert t.regs(1).edx & (1 << 9) and not t.regs(1).ecx & (1 << 21 | 1 << 24)  # xAPIC only


@pytest.mark.parametrize("leaf,reg", [(1, 2), (1, 3), (7, 1), (0x8000_0001, 2),
                                      (0x8000_0001, 3)])
def test_every_offered_feature_is_one_unicorns_tcg_runs(leaf, reg):
    offered = base_cpuid().regs(leaf).as_tuple()[reg]
    if (leaf, reg) == (1, 2):
        offered &= ~CPUID1_ECX_PDCM  # a capability bit (PERF_CAPABILITIES is vlbr's MSR)
    assert offered & ~unicorn_cpuid(leaf, model=None).as_tuple()[reg] == 0
