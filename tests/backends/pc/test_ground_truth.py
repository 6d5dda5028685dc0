"""vlbr's ground truth (backends/pc/ground_truth.py) against the LBR model (vcpu/lbr.py):
two separate readings of SDM Vol. 3B 18.1.2 (Arch LBR records, depth, OS/USR and branch-type
filtering, call-stack mode) must give the same records for any stream of branches, filters
and depth writes. Fed as the PC machine feeds them: while the model records, with its LBR_CTL."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vlbr.arch.msrs import IA32_LBR_CTL, IA32_LBR_DEPTH, LBR_CTL_VALID, BranchType, LbrCtl
from vlbr.backends.pc.cpu_model import guest_cpuid
from vlbr.backends.pc.ground_truth import GroundTruth, PmiSnapshot
from vlbr.vcpu import ArchLbrVcpu, Branch, LbrConfig

CONFIG = LbrConfig.from_cpuid(guest_cpuid("vlbr", 32))
KINDS = [*BranchType, 9, 15]  # 8..15 are all "other" (far transfers, events)

branches = st.builds(
    lambda frm, to, kind, cpl, ret: Branch(frm, to, kind, cpl, is_return=ret),
    st.integers(1, 1 << 47), st.integers(1, 1 << 47), st.sampled_from(KINDS),
    st.sampled_from([0, 3]), st.booleans())
controls = st.integers(0, LBR_CTL_VALID).map(lambda v: (v & LBR_CTL_VALID) | LbrCtl.LBREN)
operations = st.lists(st.one_of(
    st.tuples(st.just("branch"), branches),
    st.tuples(st.just("ctl"), controls),
    st.tuples(st.just("depth"), st.sampled_from(CONFIG.depths))), max_size=120)


def pairs(records) -> tuple:
    out = []
    for frm, to, _ in records:
        if frm == 0:
            break
        out.append((frm, to))
    return tuple(out)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_ground_truth_is_the_models_records_for_any_filter(ops):
    lbr, truth = ArchLbrVcpu(CONFIG), GroundTruth(CONFIG)
    lbr.wrmsr(IA32_LBR_CTL, LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR | 0x7F0000)
    for what, value in ops:
        if what == "branch":
            if lbr.recording:
                truth.branch(value, lbr.lbr_ctl)
            lbr.retire_branch(value)
        elif what == "ctl":
            lbr.wrmsr(IA32_LBR_CTL, value)
        else:
            lbr.wrmsr(IA32_LBR_DEPTH, value)  # clears the records
            truth.written(lbr.records())
        expected, complete = truth.expected(lbr.depth)
        assert complete
        assert expected == pairs(lbr.records())


def test_a_pmi_snapshot_keeps_both_readings_and_says_when_they_differ():
    lbr, truth = ArchLbrVcpu(CONFIG), GroundTruth(CONFIG)
    lbr.wrmsr(IA32_LBR_CTL, LbrCtl.LBREN | LbrCtl.USR | LbrCtl.COND)
    for n in range(40):
        b = Branch(0x401000 + n, 0x400000, BranchType.JCC, 3)
        truth.branch(b, lbr.lbr_ctl)
        lbr.retire_branch(b)
    kernel = Branch(0xFFFFFFFF81000000, 0xFFFFFFFF81000010, BranchType.JCC, 0)
    truth.branch(kernel, lbr.lbr_ctl)  # OS clear: neither keeps it
    lbr.retire_branch(kernel)
    truth.pmi(lbr.depth, 0x401234, 1000, lbr.records())
    snap: PmiSnapshot = truth.snapshots[0]
    assert snap.agrees and snap.complete and snap.ip == 0x401234
    assert snap.expected[0] == (0x401000 + 39, 0x400000) and len(snap.expected) == 32
    truth.pmi(lbr.depth, 0x401234, 2000, lbr.records()[1:])  # a model that lost one
    assert not truth.snapshots[1].agrees


def test_a_history_too_short_for_the_call_stack_is_reported_incomplete():
    truth = GroundTruth(CONFIG, history=4)
    ctl = LbrCtl.LBREN | LbrCtl.USR | LbrCtl.CALL_STACK | LbrCtl.NEAR_REL_CALL | LbrCtl.NEAR_RET
    for n in range(6):
        truth.branch(Branch(0x1000 + n, 0x2000, BranchType.NEAR_REL_CALL, 3, is_call=True), ctl)
    truth.branch(Branch(0x3000, 0x1001, BranchType.NEAR_RET, 3, is_return=True), ctl)
    # the kept history holds the calls at 0x1003..0x1005 and the return: the older calls
    # under them are unknown
    assert truth.expected(32) == (((0x1004, 0x2000), (0x1003, 0x2000)), False)
