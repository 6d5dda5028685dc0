"""Recording semantics and events ("ref N" = section of ../shared/docs/arch-lbr-reference.md;
rules not in the reference are vlbr's documented choices in vlbr/vcpu/lbr.py's docstring)."""

from __future__ import annotations

import pytest

from vcpu_tables import alder_lake
from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.msrs import (GLOBAL_STATUS_LBR_FRZ, IA32_DEBUGCTL, IA32_LBR_CTL, IA32_LBR_DEPTH,
                            IA32_LER_FROM_IP, IA32_LER_INFO, IA32_LER_TO_IP,
                            IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_STATUS_RESET, BranchType,
                            LbrCtl, LbrInfo)
from vlbr.vcpu import ArchLbrVcpu, Branch, LbrConfig

ANY_TYPE = 0x7F0000
OS, USR, EN, CS = LbrCtl.OS, LbrCtl.USR, LbrCtl.LBREN, LbrCtl.CALL_STACK


def enabled(vcpu: ArchLbrVcpu, ctl: int = EN | OS | USR | ANY_TYPE) -> ArchLbrVcpu:
    vcpu.wrmsr(IA32_LBR_CTL, ctl)
    return vcpu


def jcc(i: int, cpl: int = 0, **kw) -> Branch:
    return Branch(0x1000 + i, 0x2000 + i, BranchType.JCC, cpl, **kw)


def test_lbren_off_records_nothing(vcpu):
    vcpu.wrmsr(IA32_LBR_CTL, OS | USR | ANY_TYPE)
    assert not vcpu.recording
    vcpu.retire_branch(jcc(1))
    assert vcpu.records() == [(0, 0, 0)] * 32


def test_record_zero_is_newest_and_oldest_drops(vcpu):
    enabled(vcpu).wrmsr(IA32_LBR_DEPTH, 8)
    for i in range(11):
        vcpu.retire_branch(jcc(i))
    froms = [r[0] for r in vcpu.records()]
    assert froms == [0x1000 + i for i in range(10, 2, -1)]  # 10 newest .. 3 oldest of 8


@pytest.mark.parametrize("ctl,cpl,recorded", [
    (EN | OS | ANY_TYPE, 0, True), (EN | OS | ANY_TYPE, 3, False),
    (EN | USR | ANY_TYPE, 0, False), (EN | USR | ANY_TYPE, 1, True), (EN | USR | ANY_TYPE, 3, True),
])
def test_cpl_filter(vcpu, ctl, cpl, recorded):
    # ref 2: OS records at CPL0, USR at CPL>0 (on the branch's target CPL: vlbr's rule)
    enabled(vcpu, ctl).retire_branch(jcc(0, cpl))
    assert (vcpu.records()[0] != (0, 0, 0)) == recorded


def test_no_cpl_bits_means_not_recording(vcpu):
    enabled(vcpu, EN | ANY_TYPE)
    assert not vcpu.recording


def test_without_cpl_filtering_every_cpl_is_recorded():
    v = enabled(ArchLbrVcpu(LbrConfig.from_cpuid(alder_lake(ebx=0b110))), EN | ANY_TYPE)
    v.retire_branch(jcc(0, 3))
    v.retire_branch(jcc(1, 0))
    assert [r[0] for r in v.records()[:2]] == [0x1001, 0x1000]


@pytest.mark.parametrize("kind", list(BranchType))
def test_branch_type_filter_bit_per_kind(vcpu, kind):
    # ref 2: bit 16 COND .. 22 OTHER_BRANCH; only the kind's own bit lets it in
    for other in BranchType:
        v = enabled(ArchLbrVcpu(vcpu.config), EN | OS | other.filter_bit)
        v.retire_branch(Branch(0x10, 0x20, kind, 0))
        assert (v.records()[0] != (0, 0, 0)) == (other is kind)


def test_info_encoding(vcpu):
    # ref 2: BR_TYPE 59:56 (near indirect CALL = 3), MISPRED 63, CYC_CNT 15:0, CYC_CNT_VALID 60
    enabled(vcpu).retire_branch(Branch(0x10, 0x20, BranchType.NEAR_IND_CALL, 0, mispredicted=True,
                                       cycles=77))
    info = LbrInfo.decode(vcpu.records()[0][2])
    assert (info.br_type, info.mispred, info.cyc_cnt, info.cyc_cnt_valid) == (3, True, 77, True)
    assert vcpu.records()[0][2] == 3 << 56 | 1 << 63 | 1 << 60 | 77


def test_other_is_br_type_8(vcpu):
    enabled(vcpu).retire_branch(Branch(0x10, 0x20, BranchType.OTHER, 0))
    assert LbrInfo.decode(vcpu.records()[0][2]).br_type == 8  # ref 2: 8-15 other


def test_cyc_cnt_counts_since_last_record_and_saturates(vcpu):
    enabled(vcpu, EN | OS | LbrCtl.COND)
    vcpu.retire_branch(jcc(0, cycles=5))
    vcpu.retire_branch(Branch(1, 2, BranchType.NEAR_REL_JMP, 0, cycles=7))  # filtered out
    vcpu.retire_branch(jcc(1, cycles=3))
    assert vcpu.records()[0][2] & 0xFFFF == 10
    vcpu.retire_branch(jcc(2, cycles=0x12345))
    assert vcpu.records()[0][2] & 0xFFFF == 0xFFFF


@pytest.mark.parametrize("ecx,field", [(0b110, "mispred"), (0b101, "cyc_cnt_valid"), (0b011, "br_type")])
def test_info_fields_need_their_capability(ecx, field):
    v = enabled(ArchLbrVcpu(LbrConfig.from_cpuid(alder_lake(ecx=ecx))))
    v.retire_branch(Branch(1, 2, BranchType.NEAR_RET, 0, mispredicted=True, cycles=9))
    info = LbrInfo.decode(v.records()[0][2])
    assert not getattr(info, field)
    if field == "cyc_cnt_valid":
        assert info.cyc_cnt == 0


def test_lip_adds_cs_base_only_when_enumerated():
    # INDEX.md: E-cores report 0x1C EAX 0xC000000B (LIP, bit 31)
    lip = enabled(ArchLbrVcpu(LbrConfig.from_cpuid(alder_lake(eax=0xC000000B))))
    eip = enabled(ArchLbrVcpu(LbrConfig.from_cpuid(alder_lake())))
    for v in (lip, eip):
        v.cs_base = 0x10000
        v.retire_branch(jcc(0))
    assert lip.records()[0][:2] == (0x11000, 0x12000)
    assert eip.records()[0][:2] == (0x1000, 0x2000)


def test_call_stack_push_and_pop(vcpu):
    enabled(vcpu, EN | OS | USR | CS | ANY_TYPE).wrmsr(IA32_LBR_DEPTH, 8)
    call = lambda i: Branch(0x100 + i, 0x200 + i, BranchType.NEAR_REL_CALL, 0, is_call=True)
    ret = Branch(0x300, 0x400, BranchType.NEAR_RET, 0, is_return=True)
    for i in range(3):
        vcpu.retire_branch(call(i))
    vcpu.retire_branch(ret)
    assert [r[0] for r in vcpu.records()[:3]] == [0x101, 0x100, 0]
    for _ in range(5):
        vcpu.retire_branch(ret)  # popping an empty stack leaves zeros
    assert vcpu.records() == [(0, 0, 0)] * 8


def test_returns_recorded_without_call_stack(vcpu):
    enabled(vcpu).retire_branch(Branch(0x300, 0x400, BranchType.NEAR_RET, 0, is_return=True))
    assert vcpu.records()[0][:2] == (0x300, 0x400)


# -- events ------------------------------------------------------------------------------

def test_debug_exception_clears_lbren(vcpu):
    enabled(vcpu).retire_branch(jcc(0))
    vcpu.debug_exception()  # ref 2: #DB clears LBREn
    assert not vcpu.rdmsr(IA32_LBR_CTL) & EN and not vcpu.recording
    assert vcpu.rdmsr(IA32_LBR_CTL) == OS | USR | ANY_TYPE
    assert vcpu.records()[0][0] == 0x1000


def test_init_keeps_records_clears_lbren(vcpu):
    enabled(vcpu).retire_branch(jcc(0))
    before = vcpu.records()
    vcpu.init()  # ref 2: INIT keeps every LBR MSR but clears LBREn
    assert vcpu.records() == before and not vcpu.rdmsr(IA32_LBR_CTL) & EN


def test_smi_rsm(vcpu):
    enabled(vcpu)
    vcpu.smi()  # ref 2: SMI saves and clears LBREn; RSM restores it
    assert not vcpu.rdmsr(IA32_LBR_CTL) & EN and not vcpu.recording
    vcpu.retire_branch(jcc(0))
    vcpu.rsm()
    assert vcpu.rdmsr(IA32_LBR_CTL) & EN and vcpu.recording
    assert vcpu.records()[0] == (0, 0, 0)


def test_rsm_restores_a_clear_lbren(vcpu):
    enabled(vcpu, OS | USR)
    vcpu.smi()
    vcpu.wrmsr(IA32_LBR_CTL, EN | OS)
    vcpu.rsm()
    assert vcpu.rdmsr(IA32_LBR_CTL) == OS


def test_pmi_freeze_and_acknowledge(vcpu):
    enabled(vcpu).wrmsr(IA32_DEBUGCTL, 1 << 11)
    vcpu.pmi()  # ref 2: freeze + GLOBAL_STATUS bit 58
    assert vcpu.rdmsr(IA32_PERF_GLOBAL_STATUS) & GLOBAL_STATUS_LBR_FRZ and not vcpu.recording
    vcpu.retire_branch(jcc(0))
    assert vcpu.records()[0] == (0, 0, 0)
    vcpu.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, GLOBAL_STATUS_LBR_FRZ)  # ack (PMU v4+)
    assert vcpu.rdmsr(IA32_PERF_GLOBAL_STATUS) == 0 and vcpu.recording
    vcpu.retire_branch(jcc(1))
    assert vcpu.records()[0][0] == 0x1001


def test_pmi_without_freeze_keeps_recording(vcpu):
    enabled(vcpu).pmi()
    assert vcpu.rdmsr(IA32_PERF_GLOBAL_STATUS) == 0 and vcpu.recording


def test_ler_is_the_last_branch_before_the_exception(vcpu):
    enabled(vcpu)
    vcpu.retire_branch(jcc(0))
    vcpu.retire_branch(Branch(0x5000, 0x6000, BranchType.NEAR_REL_CALL, 3, mispredicted=True))
    last = vcpu.records()[0]
    vcpu.exception(0x6010, 0xFFFF_8000_0000_0000, 0)
    assert (vcpu.rdmsr(IA32_LER_FROM_IP), vcpu.rdmsr(IA32_LER_TO_IP), vcpu.rdmsr(IA32_LER_INFO)) == last
    assert vcpu.records()[0][:2] == (0x6010, 0xFFFF_8000_0000_0000)  # the delivery is OTHER
    assert LbrInfo.decode(vcpu.records()[0][2]).br_type == 8


def test_ler_untouched_when_not_recording(vcpu):
    vcpu.exception(0x10, 0x20, 0)
    assert vcpu.ler == (0, 0, 0)


def test_config_from_policy_emulated_guest_cpuid():
    # the backends' guest CPUID (policy layer, below vcpu): every depth when depth=None
    from vlbr.policy.emulated import emulated_guest_cpuid
    table = emulated_guest_cpuid(CpuidTable(alder_lake()), depth=None)
    cfg = LbrConfig.from_cpuid(table)
    assert cfg.depths == (8, 16, 24, 32, 40, 48, 56, 64) and cfg.pmu_version >= 4
    v = ArchLbrVcpu(cfg)
    assert v.rdmsr(IA32_LBR_DEPTH) == 64
    v.put()
    v.load()
    assert v.rdmsr(IA32_LBR_DEPTH) == 64


@pytest.mark.parametrize("stop", ["lbren", "freeze"])
def test_ler_not_updated_while_lbren_clear_or_frozen(vcpu, stop):
    enabled(vcpu).retire_branch(jcc(0))
    if stop == "lbren":
        vcpu.wrmsr(IA32_LBR_CTL, OS | USR | ANY_TYPE)
    else:
        vcpu.wrmsr(IA32_DEBUGCTL, 1 << 11)
        vcpu.pmi()
    vcpu.exception(0x10, 0x20, 0)
    vcpu.debug_exception()
    assert vcpu.ler == (0, 0, 0)
    assert vcpu.records()[0][0] == 0x1000
