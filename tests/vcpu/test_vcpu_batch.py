"""The batch path gives exactly the state of per-branch retire_branch (hypothesis property)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcpu_tables import alder_lake
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_LBR_DEPTH, BranchType
from vlbr.vcpu import ArchLbrVcpu, Branch, LbrConfig
from vlbr.vcpu.batch import BranchTraceError

KINDS = [int(k) for k in BranchType]
CONFIGS = {
    "alder-lake": LbrConfig.from_cpuid(alder_lake()),
    "lip-no-timed": LbrConfig.from_cpuid(alder_lake(eax=0xC000000B, ecx=0b101)),
    "no-filters": LbrConfig.from_cpuid(alder_lake(ebx=0b000)),
}

branch = st.tuples(st.integers(0, (1 << 47) - 1), st.integers(0, (1 << 47) - 1),
                   st.sampled_from(KINDS), st.integers(0, 3), st.booleans(),
                   st.one_of(st.integers(0, 100), st.integers(0, 70000)), st.booleans())


@st.composite
def scenario(draw):
    name = draw(st.sampled_from(sorted(CONFIGS)))
    cfg = CONFIGS[name]
    ctl = 1 | draw(st.integers(0, 0x7F000F)) & 0x7F000E & cfg.lbr_ctl_writable
    depth = draw(st.sampled_from(cfg.depths))
    warmup = draw(st.lists(branch, max_size=20))
    trace = draw(st.lists(branch, max_size=draw(st.sampled_from([5, 40, 120]))))
    cs_base = draw(st.sampled_from([0, 0x1000]))
    return cfg, ctl, depth, warmup, trace, cs_base


def prepared(cfg, ctl, depth, warmup, cs_base) -> ArchLbrVcpu:
    v = ArchLbrVcpu(cfg)
    v.cs_base = cs_base
    v.wrmsr(IA32_LBR_DEPTH, depth)
    v.wrmsr(IA32_LBR_CTL, ctl)
    for b in warmup:
        v.retire_branch(Branch(*b[:6], is_return=b[6]))
    return v


@settings(max_examples=200, deadline=None)
@given(scenario())
def test_batch_equals_per_branch(case):
    cfg, ctl, depth, warmup, trace, cs_base = case
    one = prepared(cfg, ctl, depth, warmup, cs_base)
    many = prepared(cfg, ctl, depth, warmup, cs_base)
    for b in trace:
        one.retire_branch(Branch(*b[:6], is_return=b[6]))
    cols = list(zip(*trace)) if trace else [[]] * 7
    many.record_batch(np.array(cols[0], dtype=np.uint64), np.array(cols[1], dtype=np.uint64),
                      np.array(cols[2], dtype=np.int64), np.array(cols[3], dtype=np.int64),
                      mispred=np.array(cols[4], dtype=bool), cycles=np.array(cols[5], dtype=np.int64),
                      is_return=np.array(cols[6], dtype=bool))
    assert many.save() == one.save()
    assert many.records() == one.records()


def test_batch_call_stack_example():
    v = ArchLbrVcpu(CONFIGS["alder-lake"])
    v.wrmsr(IA32_LBR_DEPTH, 8)
    v.wrmsr(IA32_LBR_CTL, 0x7F000F)
    kinds = [BranchType.NEAR_REL_CALL, BranchType.NEAR_REL_CALL, BranchType.NEAR_RET, BranchType.JCC]
    v.record_batch(np.array([1, 2, 3, 4]), np.array([11, 12, 13, 14]), np.array(kinds),
                   np.zeros(4, int))
    assert [r[0] for r in v.records()[:3]] == [4, 1, 0]  # call 2 popped by the return


@pytest.mark.parametrize("bad", [
    dict(kinds=np.array([16])), dict(cpls=np.array([4])), dict(to_ips=np.array([1, 2])),
    dict(kinds=np.array([-1])),
])
def test_batch_rejects_malformed_traces(bad):
    v = ArchLbrVcpu(CONFIGS["alder-lake"])
    args = dict(from_ips=np.array([1]), to_ips=np.array([2]), kinds=np.array([0]), cpls=np.array([0]))
    args.update(bad)
    with pytest.raises(BranchTraceError):
        v.record_batch(**args)


@settings(max_examples=150, deadline=None)
@given(ctl=st.integers(0, 0x7F000F).map(lambda c: c & 0x7F000F), frozen=st.booleans(), b=branch)
def test_not_recording_means_a_branch_changes_nothing(ctl, frozen, b):
    # `recording` is the backends' cue to single-step: when False, no branch may matter
    v = ArchLbrVcpu(CONFIGS["alder-lake"])
    v.wrmsr(IA32_LBR_CTL, ctl)
    v.wrmsr(0x1D9, 1 << 11)  # DEBUGCTL.FREEZE_LBRS_ON_PMI
    if frozen:
        v.pmi()
    before = v.save()
    v.retire_branch(Branch(*b[:6], is_return=b[6]))
    if not v.recording:
        assert v.save() == before
    else:
        assert ctl & 1 and not frozen
