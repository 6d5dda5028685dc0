"""backends/branches.py: BR_TYPE of each instruction class (reference doc section 2, the
IA32_LBR_x_INFO BR_TYPE list) and the taken test of conditional branches, checked against
unicorn's own execution of the same bytes."""

import iced_x86 as ix
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_REG_EFLAGS, UC_X86_REG_RCX, UC_X86_REG_RIP

from vlbr.arch.msrs import BranchType
from vlbr.backends.branches import classify_bytes, condition_holds, taken_after

# (bytes, expected BR_TYPE, is_call, is_return, is_far, interrupt); encodings from the SDM
# opcode tables (Vol. 2), types from the BR_TYPE encodings in the reference doc section 2.
CASES = [
    ("74fe", BranchType.JCC, False, False, False, False),            # je rel8
    ("0f8400000000", BranchType.JCC, False, False, False, False),    # je rel32
    ("e3fe", BranchType.JCC, False, False, False, False),            # jrcxz
    ("e2fe", BranchType.JCC, False, False, False, False),            # loop
    ("ebfe", BranchType.NEAR_REL_JMP, False, False, False, False),   # jmp rel8
    ("e900000000", BranchType.NEAR_REL_JMP, False, False, False, False),
    ("ffe0", BranchType.NEAR_IND_JMP, False, False, False, False),   # jmp rax
    ("ff20", BranchType.NEAR_IND_JMP, False, False, False, False),   # jmp [rax]
    ("e800000000", BranchType.NEAR_REL_CALL, True, False, False, False),
    ("ffd0", BranchType.NEAR_IND_CALL, True, False, False, False),   # call rax
    ("ff10", BranchType.NEAR_IND_CALL, True, False, False, False),   # call [rax]
    ("c3", BranchType.NEAR_RET, False, True, False, False),
    ("c20800", BranchType.NEAR_RET, False, True, False, False),      # ret 8
    ("48ff28", BranchType.OTHER, False, False, True, False),         # jmp far m16:64
    ("ff18", BranchType.OTHER, False, False, True, False),           # call far m16:32
    ("48cb", BranchType.OTHER, False, False, True, False),           # retfq
    ("48cf", BranchType.OTHER, False, False, True, False),           # iretq
    ("0f05", BranchType.OTHER, False, False, True, False),           # syscall
    ("480f07", BranchType.OTHER, False, False, True, False),         # sysretq
    ("0f34", BranchType.OTHER, False, False, True, False),           # sysenter
    ("cd80", BranchType.OTHER, False, False, True, True),            # int 0x80
    ("cc", BranchType.OTHER, False, False, True, True),              # int3
    ("f1", BranchType.OTHER, False, False, True, True),              # int1
]


@pytest.mark.parametrize("hexcode,kind,is_call,is_return,is_far,interrupt", CASES)
def test_branch_types(hexcode, kind, is_call, is_return, is_far, interrupt):
    _, cls = classify_bytes(bytes.fromhex(hexcode), 0x100000)
    assert cls is not None
    assert (cls.kind, cls.is_call, cls.is_return, cls.is_far, cls.interrupt) == (
        kind, is_call, is_return, is_far, interrupt)


@pytest.mark.parametrize("hexcode", [
    "90", "4889c8", "0f32", "0f30", "0fa2", "f4", "e6e9", "0f0b",  # nop mov rdmsr wrmsr cpuid hlt out ud2
    "f3a4", "c7f800000000",  # rep movsb, xbegin (not recorded unless it aborts)
])
def test_non_branches(hexcode):
    assert classify_bytes(bytes.fromhex(hexcode), 0x100000)[1] is None


def test_only_near_calls_and_returns_feed_the_call_stack():
    kinds = [classify_bytes(bytes.fromhex(h), 0)[1] for h, *_ in CASES]
    assert all(c.is_call == (c.kind in (BranchType.NEAR_REL_CALL, BranchType.NEAR_IND_CALL))
               for c in kinds)
    assert all(c.is_return == (c.kind == BranchType.NEAR_RET) for c in kinds)


CONDITIONS = [ix.ConditionCode.O, ix.ConditionCode.NO, ix.ConditionCode.B, ix.ConditionCode.AE,
              ix.ConditionCode.E, ix.ConditionCode.NE, ix.ConditionCode.BE, ix.ConditionCode.A,
              ix.ConditionCode.S, ix.ConditionCode.NS, ix.ConditionCode.P, ix.ConditionCode.NP,
              ix.ConditionCode.L, ix.ConditionCode.GE, ix.ConditionCode.LE, ix.ConditionCode.G]
FLAG_BITS = st.builds(lambda bits: sum(b << i for b, i in zip(bits, (0, 2, 6, 7, 11))) | 2,
                      st.lists(st.booleans(), min_size=5, max_size=5))


@settings(max_examples=100)
@given(st.sampled_from(range(16)), FLAG_BITS)
def test_condition_and_its_negation_disagree(n, rflags):
    # Jcc opcodes 0x70+n come in pairs n, n^1 with opposite conditions (SDM Vol. 2, Jcc)
    a = classify_bytes(bytes([0x70 + n, 0xFE]), 0)[0]
    b = classify_bytes(bytes([0x70 + (n ^ 1), 0xFE]), 0)[0]
    assert condition_holds(a.condition_code, rflags) != condition_holds(b.condition_code, rflags)


def _run_on_unicorn(code: bytes, rflags: int, rcx: int) -> tuple[int, int, int]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    uc.reg_write(UC_X86_REG_EFLAGS, rflags)
    uc.reg_write(UC_X86_REG_RCX, rcx)
    uc.emu_start(0x1000, 0, count=1)
    return uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_EFLAGS), uc.reg_read(UC_X86_REG_RCX)


# rel8 +0x10 so that taken and not-taken land at different addresses
CONDITIONALS = [bytes([0x70 + n, 0x10]) for n in range(16)] + [
    bytes.fromhex(h) for h in ("e310", "67e310", "e210", "e110", "e010", "67e210")]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CONDITIONALS), FLAG_BITS,
       st.sampled_from([0, 1, 2, 0x1_0000_0000, 0x1_0000_0001, 0xFFFF_FFFF_FFFF_FFFF]))
def test_taken_after_matches_unicorn(code, rflags, rcx):
    insn, cls = classify_bytes(code, 0x1000)
    assert cls is not None and cls.conditional
    rip, flags_after, rcx_after = _run_on_unicorn(code, rflags, rcx)
    assert taken_after(insn, flags_after, rcx_after) == (rip == insn.near_branch_target)
