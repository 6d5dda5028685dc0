"""HostDescription: defaults from the architecture when a dump has no VMX or IA32_XSS facts."""

from __future__ import annotations

from vlbr.arch.cpuid import Registers
from vlbr.policy import HostDescription, supported_cpuid

from corpus import CPUID_RAW_DUMP
from policy_corpus import instlat, types_of


def test_arch_lbr_part_implies_the_vmx_controls_and_its_xss(corpus_dir):
    # INDEX.md: Sapphire Rapids has ARCH_LBR and CPUID.(0xD,1):ECX[15].
    (spr,) = types_of(instlat("GenuineIntel00806F8_SapphireRapids_05_CPUID.txt"))
    host = HostDescription(spr.table)
    assert host.arch_lbr and host.load_lbr_ctl and host.clear_lbr_ctl
    assert host.xss == spr.table.regs(0xD, 1).ecx | spr.table.regs(0xD, 1).edx << 32
    assert host.xss & (1 << 15)
    stated = HostDescription(spr.table, vmx_load_lbr_ctl=False, host_xss=0)
    assert not stated.load_lbr_ctl and stated.clear_lbr_ctl and stated.xss == 0


def test_amd_has_no_controls_and_forcing_them_offers_nothing(corpus_dir):
    (amd,) = types_of(CPUID_RAW_DUMP)
    host = HostDescription(amd.table)
    assert not host.arch_lbr and not host.load_lbr_ctl and not host.clear_lbr_ctl
    forced = HostDescription(amd.table, vmx_load_lbr_ctl=True, vmx_clear_lbr_ctl=True,
                             host_xss=1 << 15)
    for variant in ("email-v2", "v3", "vlbr"):
        sup = supported_cpuid(forced, variant)
        assert not sup.arch_lbr and sup.table.regs(0x1C) == Registers()
        assert not sup.supported_xss & (1 << 15)
