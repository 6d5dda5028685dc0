"""One test per #GP rule of vlbr.vcpu (rule ids G1..G10 are in vlbr/vcpu/lbr.py's docstring).

"ref N" is a section of ../shared/docs/arch-lbr-reference.md."""

from __future__ import annotations

import pytest

from vlbr.arch.msrs import (GLOBAL_STATUS_LBR_FRZ, IA32_DEBUGCTL, IA32_LBR_CTL, IA32_LBR_DEPTH,
                            IA32_LER_FROM_IP, IA32_LER_INFO, IA32_LER_TO_IP,
                            IA32_PERF_CAPABILITIES, IA32_PERF_GLOBAL_STATUS,
                            IA32_PERF_GLOBAL_STATUS_RESET, IA32_XSS, BranchType, LbrCtl,
                            RecordKind, record_msr)
from vlbr.arch.cpuid import Registers
from vlbr.vcpu import ArchLbrVcpu, Branch, GeneralProtection, LbrConfig, VcpuStateError

from vcpu_tables import ALDER_LAKE_ROWS, alder_lake, no_arch_lbr

FROM0 = record_msr(RecordKind.FROM, 0)
ALL_ON = 0x7F000F  # ref 2: the valid LBR_CTL mask


def make(**leaf_1c) -> ArchLbrVcpu:
    return ArchLbrVcpu(LbrConfig.from_cpuid(alder_lake(**leaf_1c)))


def test_config_decodes_alder_lake(config):
    # INDEX.md: Arch LBR parts enumerate depth bitmap 0x0B = depths 8, 16, 32; EBX = ECX = 7
    assert config.depths == (8, 16, 32) and config.max_depth == 32
    assert config.cpl_filtering and config.branch_filtering and config.call_stack
    assert config.mispredict and config.timed_lbr and config.branch_type
    assert not config.lip  # P-core: EAX bit 31 clear (INDEX.md)
    assert config.pmu_version == 5  # 0xA EAX = 0x08300805
    assert config.supported_xss & (1 << 15) and config.xsaves  # 0xD.1 ECX 0x19900, EAX bit 3
    assert config.component_depth == 32  # 0x328 = 808 = 40 + 24 * 32 (ref 1)


def test_reset_values(vcpu):
    # ref 2: DEPTH resets to the maximum depth; LBR_FMT reads 0x3F; DEBUGCTL bit 0 reads 0
    assert vcpu.rdmsr(IA32_LBR_DEPTH) == 32
    assert vcpu.rdmsr(IA32_LBR_CTL) == 0
    assert vcpu.rdmsr(IA32_PERF_CAPABILITIES) & 0x3F == 0x3F
    assert not vcpu.recording


# -- G1: LBR_CTL -------------------------------------------------------------------------

@pytest.mark.parametrize("bit", [b for b in range(64) if not ALL_ON >> b & 1])
def test_g1_lbr_ctl_reserved_bits(vcpu, bit):
    # ref 2: "Valid mask 0x7F000F; any other bit set -> #GP"
    with pytest.raises(GeneralProtection, match="reserved"):
        vcpu.wrmsr(IA32_LBR_CTL, 1 << bit)
    with pytest.raises(GeneralProtection):
        vcpu.wrmsr(IA32_LBR_CTL, 1 << bit, host_initiated=True)
    assert vcpu.rdmsr(IA32_LBR_CTL) == 0


def test_g1_lbr_ctl_valid_bits_accepted(vcpu):
    vcpu.wrmsr(IA32_LBR_CTL, ALL_ON)
    assert vcpu.rdmsr(IA32_LBR_CTL) == ALL_ON


def test_g1_os_usr_need_cpl_filtering():
    # ref 2: "OS/USR set without CPUID EBX[0]" -> #GP
    v = make(ebx=0b110)
    for bit in (LbrCtl.OS, LbrCtl.USR):
        with pytest.raises(GeneralProtection, match="OS/USR"):
            v.wrmsr(IA32_LBR_CTL, LbrCtl.LBREN | bit)
    v.wrmsr(IA32_LBR_CTL, LbrCtl.LBREN | LbrCtl.COND)


def test_g1_call_stack_needs_ebx2():
    v = make(ebx=0b011)
    with pytest.raises(GeneralProtection, match="CALL_STACK"):
        v.wrmsr(IA32_LBR_CTL, LbrCtl.LBREN | LbrCtl.CALL_STACK)


@pytest.mark.parametrize("bit", range(16, 23))
def test_g1_branch_type_bits_need_ebx1(bit):
    v = make(ebx=0b101)
    with pytest.raises(GeneralProtection, match="branch-type"):
        v.wrmsr(IA32_LBR_CTL, 1 << bit)


# -- G2: LBR_DEPTH -----------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 1, 7, 12, 24, 40, 48, 56, 64, 72, 1 << 32])
def test_g2_depth_not_enumerated(vcpu, depth):
    # ref 2: 0, not a multiple of 8, > 64, or a clear bit (0x0B has no 24, 40..64) -> #GP
    with pytest.raises(GeneralProtection, match="IA32_LBR_DEPTH"):
        vcpu.wrmsr(IA32_LBR_DEPTH, depth)
    with pytest.raises(GeneralProtection):
        vcpu.wrmsr(IA32_LBR_DEPTH, depth, host_initiated=True)
    assert vcpu.rdmsr(IA32_LBR_DEPTH) == 32


@pytest.mark.parametrize("host", [False, True])
def test_g2_legal_depth_write_clears_records_keeps_ler(vcpu, host):
    vcpu.wrmsr(IA32_LBR_CTL, ALL_ON)
    for i in range(5):
        vcpu.retire_branch(Branch(0x100 + i, 0x200 + i, BranchType.JCC, 0))
    vcpu.exception(0x500, 0x600, 0)
    ler = vcpu.ler
    assert ler != (0, 0, 0) and vcpu.records()[0] != (0, 0, 0)
    vcpu.wrmsr(IA32_LBR_DEPTH, 16, host_initiated=host)
    assert vcpu.rdmsr(IA32_LBR_DEPTH) == 16
    assert vcpu.records() == [(0, 0, 0)] * 16
    assert all(vcpu.rdmsr(record_msr(k, i), host_initiated=True) == 0
               for k in RecordKind for i in range(32))
    assert vcpu.ler == ler


# -- G3: record index vs DEPTH -----------------------------------------------------------

@pytest.mark.parametrize("kind", list(RecordKind))
def test_g3_guest_record_index_at_or_above_depth(vcpu, kind):
    # ref 2: "Record MSRs with index >= DEPTH -> #GP" (Xen patch)
    vcpu.wrmsr(IA32_LBR_DEPTH, 8)
    vcpu.rdmsr(record_msr(kind, 7))
    for index in (8, 31, 63):
        with pytest.raises(GeneralProtection, match="IA32_LBR_DEPTH"):
            vcpu.rdmsr(record_msr(kind, index))
        with pytest.raises(GeneralProtection):
            vcpu.wrmsr(record_msr(kind, index), 0)


def test_g3_host_reaches_every_slot_but_not_beyond_max(vcpu):
    vcpu.wrmsr(IA32_LBR_DEPTH, 8)
    vcpu.wrmsr(record_msr(RecordKind.FROM, 31), 0x1234, host_initiated=True)
    assert vcpu.rdmsr(record_msr(RecordKind.FROM, 31), host_initiated=True) == 0x1234
    with pytest.raises(GeneralProtection, match="max depth"):
        vcpu.rdmsr(record_msr(RecordKind.FROM, 32), host_initiated=True)


# -- G4: record / LER values -------------------------------------------------------------

@pytest.mark.parametrize("msr", [FROM0, record_msr(RecordKind.TO, 3), IA32_LER_FROM_IP, IA32_LER_TO_IP])
@pytest.mark.parametrize("host", [False, True])
def test_g4_non_canonical_ip(vcpu, msr, host):
    # Alder Lake 0x7.0 ECX bit 16 (LA57) is clear: 48-bit canonical addresses
    for bad in (1 << 47, 0x8000_0000_0000_0000, 0x0000_8000_0000_1000):
        with pytest.raises(GeneralProtection, match="canonical"):
            vcpu.wrmsr(msr, bad, host_initiated=host)
    for good in (0x7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000, 0xFFFF_FFFF_FFFF_FFF0):
        vcpu.wrmsr(msr, good, host_initiated=host)
        assert vcpu.rdmsr(msr, host_initiated=host) == good


def test_g4_la57_widens_canonical():
    rows = dict(ALDER_LAKE_ROWS)
    r = rows[(0x7, 0)]
    table = alder_lake().replace({(0x7, 0): Registers(r.eax, r.ebx, r.ecx | 1 << 16, r.edx)})
    v = ArchLbrVcpu(LbrConfig.from_cpuid(table))
    v.wrmsr(FROM0, 1 << 50)
    with pytest.raises(GeneralProtection):
        v.wrmsr(FROM0, 1 << 57)


@pytest.mark.parametrize("msr", [record_msr(RecordKind.INFO, 0), IA32_LER_INFO])
def test_g4_info_reserved_bits(vcpu, msr):
    # ref 2 INFO bits: 15:0, 59:56, 60..63 defined; 55:16 reserved
    for bit in (16, 30, 55):
        with pytest.raises(GeneralProtection, match="reserved"):
            vcpu.wrmsr(msr, 1 << bit)
    value = 0xFFFF | 0xF << 56 | 0xF << 60
    vcpu.wrmsr(msr, value)
    assert vcpu.rdmsr(msr) == value


# -- G5: no Arch LBR ---------------------------------------------------------------------

@pytest.mark.parametrize("msr", [IA32_LBR_CTL, IA32_LBR_DEPTH, FROM0, IA32_LER_INFO])
def test_g5_no_arch_lbr_every_msr_gp(msr):
    v = ArchLbrVcpu(LbrConfig.from_cpuid(no_arch_lbr()))
    assert v.owns(msr)
    with pytest.raises(GeneralProtection, match="EDX\\[19\\]"):
        v.rdmsr(msr)
    with pytest.raises(GeneralProtection):
        v.wrmsr(msr, 0, host_initiated=True)
    assert v.rdmsr(IA32_PERF_CAPABILITIES) & 0x3F == 0  # no LBR format without LBRs


# -- G6: DEBUGCTL ------------------------------------------------------------------------

def test_g6_debugctl(vcpu):
    vcpu.wrmsr(IA32_DEBUGCTL, 0b11 | 1 << 11)
    assert vcpu.rdmsr(IA32_DEBUGCTL) == 1 << 11  # ref 2: bit 0 reads 0 with Arch LBR
    for bit in (2, 6, 14, 15, 32):
        with pytest.raises(GeneralProtection, match="DEBUGCTL"):
            vcpu.wrmsr(IA32_DEBUGCTL, 1 << bit)
    v = ArchLbrVcpu(LbrConfig.from_cpuid(no_arch_lbr()))
    with pytest.raises(GeneralProtection):
        v.wrmsr(IA32_DEBUGCTL, 1 << 11)


# -- G7: PERF_CAPABILITIES ---------------------------------------------------------------

def test_g7_perf_capabilities(vcpu):
    with pytest.raises(GeneralProtection, match="read-only"):
        vcpu.wrmsr(IA32_PERF_CAPABILITIES, 0x3F)
    vcpu.wrmsr(IA32_PERF_CAPABILITIES, 0x3F, host_initiated=True)
    with pytest.raises(GeneralProtection, match="differs"):
        vcpu.wrmsr(IA32_PERF_CAPABILITIES, 0x3E, host_initiated=True)
    r = ALDER_LAKE_ROWS[(0x1, 0)]
    no_pdcm = alder_lake().replace({(0x1, 0): Registers(r.eax, r.ebx, r.ecx & ~(1 << 15), r.edx)})
    v = ArchLbrVcpu(LbrConfig.from_cpuid(no_pdcm))
    with pytest.raises(GeneralProtection, match="PDCM"):
        v.rdmsr(IA32_PERF_CAPABILITIES)


# -- G8: IA32_XSS ------------------------------------------------------------------------

def test_g8_xss(vcpu):
    vcpu.wrmsr(IA32_XSS, 1 << 15)
    assert vcpu.rdmsr(IA32_XSS) == 1 << 15
    for bit in (0, 1, 9, 14, 17):  # not in 0xD.1 ECX 0x19900
        with pytest.raises(GeneralProtection, match="IA32_XSS"):
            vcpu.wrmsr(IA32_XSS, 1 << bit)
    r = ALDER_LAKE_ROWS[(0xD, 1)]
    table = alder_lake().replace({(0xD, 1): Registers(r.eax & ~8, r.ebx, r.ecx, r.edx)})
    v = ArchLbrVcpu(LbrConfig.from_cpuid(table))
    with pytest.raises(GeneralProtection, match="XSAVES"):
        v.rdmsr(IA32_XSS)
    assert v.rdmsr(IA32_XSS, host_initiated=True) == 0 == v.xss


def test_g8_xss_in_force_follows_writes_and_refused_writes_change_nothing(vcpu):
    # The value the backends give XSAVES and CPUID.(0xD,1) EBX (policy.runtime_cpuid).
    assert vcpu.xss == 0
    vcpu.wrmsr(IA32_XSS, 1 << 15)
    with pytest.raises(GeneralProtection):
        vcpu.wrmsr(IA32_XSS, 1 << 14)
    assert vcpu.xss == 1 << 15 == vcpu.rdmsr(IA32_XSS)


# -- G9: PERF_GLOBAL_STATUS and its reset MSR --------------------------------------------

def test_g9_global_status(vcpu):
    with pytest.raises(GeneralProtection, match="read-only"):
        vcpu.wrmsr(IA32_PERF_GLOBAL_STATUS, 0)
    with pytest.raises(GeneralProtection):
        vcpu.wrmsr(IA32_PERF_GLOBAL_STATUS, 1, host_initiated=True)
    vcpu.wrmsr(IA32_PERF_GLOBAL_STATUS, GLOBAL_STATUS_LBR_FRZ, host_initiated=True)
    assert vcpu.frozen
    assert vcpu.rdmsr(IA32_PERF_GLOBAL_STATUS_RESET) == 0
    for bad in (1 << 8, 1 << 36, 1 << 40, 1 << 57):  # 8 GP and 4 fixed counters on Alder Lake
        with pytest.raises(GeneralProtection, match="reserved"):
            vcpu.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, bad)
    vcpu.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, GLOBAL_STATUS_LBR_FRZ | 0xFF | 0xF << 32)
    assert not vcpu.frozen


def test_g9_no_pmu_no_global_msrs():
    table = alder_lake().replace({(0xA, 0): Registers()})
    v = ArchLbrVcpu(LbrConfig.from_cpuid(table))
    for msr in (IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_STATUS_RESET):
        with pytest.raises(GeneralProtection, match="PMU"):
            v.rdmsr(msr)


# -- G10 and access rules ----------------------------------------------------------------

def test_g10_value_wider_than_64_bits(vcpu):
    for bad in (1 << 64, -1):
        with pytest.raises(GeneralProtection, match="64-bit"):
            vcpu.wrmsr(FROM0, bad)


def test_unowned_msr_is_a_keyerror(vcpu):
    assert not vcpu.owns(0x10)
    with pytest.raises(KeyError):
        vcpu.rdmsr(0x10)


def test_unowned_msr_is_named(vcpu):
    # G10: an MSR outside the model is the backend's to handle: a named error, not a #GP.
    from vlbr.vcpu import NotOwnedMsr
    with pytest.raises(NotOwnedMsr, match="0x10 is not an MSR of the Arch LBR model|IA32_TSC"):
        vcpu.wrmsr(0x10, 0)


def test_filter_snapshot_follows_lbr_ctl(vcpu):
    # The batch recorder reads this public snapshot instead of the model's private state.
    assert not vcpu.filters.recording
    vcpu.wrmsr(IA32_LBR_CTL, 0x7F0007)
    f = vcpu.filters
    assert f.recording and f.cpl_ok == (True,) * 4 and not f.call_stack
    vcpu.wrmsr(IA32_LBR_CTL, 0x7F0003 | 0x8)  # OS only, call-stack
    f = vcpu.filters
    assert f.cpl_ok == (True, False, False, False) and f.call_stack
    vcpu.put()
    assert not vcpu.filters.recording


def test_guest_access_while_put_is_a_backend_bug(vcpu):
    vcpu.put()
    with pytest.raises(VcpuStateError):
        vcpu.rdmsr(IA32_LBR_CTL)
    with pytest.raises(VcpuStateError):
        vcpu.retire_branch(Branch(1, 2, BranchType.JCC, 0))
    assert vcpu.rdmsr(IA32_LBR_CTL, host_initiated=True) == 0
