"""Classify an executed x86 instruction (decoded by iced-x86) as an Arch LBR branch type."""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86
from iced_x86 import Code, ConditionCode, FlowControl, Instruction, Mnemonic

from vlbr.arch.x86 import MAX_INSN, RFLAGS_CF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF
from vlbr.arch.msrs import BranchType


@dataclass(frozen=True, slots=True)
class BranchClass:
    """What kind of control transfer an instruction makes, as LBR_INFO.BR_TYPE sees it.

    is_call / is_return are the *near* calls and returns that call-stack mode tracks; far
    transfers (far jmp/call/ret, iret, syscall/sysret, sysenter/sysexit, int n) are OTHER
    with is_far set; interrupt marks the ones that enter through the IDT.
    """

    kind: BranchType
    is_call: bool = False
    is_return: bool = False
    is_far: bool = False
    interrupt: bool = False
    conditional: bool = False  # may fall through: Jcc, J*CXZ, LOOP*, INTO


JCC = BranchClass(BranchType.JCC, conditional=True)
NEAR_REL_JMP = BranchClass(BranchType.NEAR_REL_JMP)
NEAR_IND_JMP = BranchClass(BranchType.NEAR_IND_JMP)
NEAR_REL_CALL = BranchClass(BranchType.NEAR_REL_CALL, is_call=True)
NEAR_IND_CALL = BranchClass(BranchType.NEAR_IND_CALL, is_call=True)
NEAR_RET = BranchClass(BranchType.NEAR_RET, is_return=True)
FAR = BranchClass(BranchType.OTHER, is_far=True)
SOFTWARE_INTERRUPT = BranchClass(BranchType.OTHER, is_far=True, interrupt=True)
INTO = BranchClass(BranchType.OTHER, is_far=True, interrupt=True, conditional=True)
EVENT = BranchClass(BranchType.OTHER, is_far=True, interrupt=True)  # exception/interrupt delivery

_FAR_RETURNS = {Mnemonic.RETF, Mnemonic.IRET, Mnemonic.IRETD, Mnemonic.IRETQ,
                Mnemonic.SYSRET, Mnemonic.SYSRETQ, Mnemonic.SYSEXIT, Mnemonic.SYSEXITQ}
_CODE_NAMES = {value: name for name, value in vars(Code).items() if not name.startswith("_")}


def classify(insn: Instruction) -> BranchClass | None:
    """The branch class of an instruction, or None when it never transfers control.

    UD0/UD1/UD2 and faults are not branches of their own: the exception they raise is an
    event (EVENT) the backend records when it delivers it. XBEGIN/XABORT are not recorded.
    """
    flow = insn.flow_control
    if flow == FlowControl.NEXT or flow == FlowControl.EXCEPTION:
        return None
    if flow == FlowControl.CONDITIONAL_BRANCH:
        return JCC
    if flow == FlowControl.UNCONDITIONAL_BRANCH:
        return FAR if insn.is_jmp_far else NEAR_REL_JMP
    if flow == FlowControl.INDIRECT_BRANCH:
        return FAR if insn.is_jmp_far_indirect else NEAR_IND_JMP
    if flow == FlowControl.CALL:
        if insn.is_call_near:
            return NEAR_REL_CALL
        return FAR  # call far ptr16:32, syscall, sysenter
    if flow == FlowControl.INDIRECT_CALL:
        return FAR if insn.is_call_far_indirect else NEAR_IND_CALL
    if flow == FlowControl.RETURN:
        return FAR if insn.mnemonic in _FAR_RETURNS else NEAR_RET
    if flow == FlowControl.INTERRUPT:
        return INTO if insn.mnemonic == Mnemonic.INTO else SOFTWARE_INTERRUPT
    return None  # XBEGIN_XABORT_XEND


def decode(code: bytes, ip: int, bitness: int = 64) -> Instruction:
    """Decode the one instruction at the start of code, located at ip."""
    return iced_x86.Decoder(bitness, bytes(code[:MAX_INSN]), ip=ip).decode()


def classify_bytes(code: bytes, ip: int, bitness: int = 64) -> tuple[Instruction, BranchClass | None]:
    insn = decode(code, ip, bitness)
    return insn, classify(insn)




def condition_holds(cc: int, rflags: int) -> bool:
    """Evaluate an iced-x86 ConditionCode against RFLAGS."""
    cf, pf, zf = bool(rflags & RFLAGS_CF), bool(rflags & RFLAGS_PF), bool(rflags & RFLAGS_ZF)
    sf, of = bool(rflags & RFLAGS_SF), bool(rflags & RFLAGS_OF)
    table = {
        ConditionCode.O: of, ConditionCode.NO: not of,
        ConditionCode.B: cf, ConditionCode.AE: not cf,
        ConditionCode.E: zf, ConditionCode.NE: not zf,
        ConditionCode.BE: cf or zf, ConditionCode.A: not (cf or zf),
        ConditionCode.S: sf, ConditionCode.NS: not sf,
        ConditionCode.P: pf, ConditionCode.NP: not pf,
        ConditionCode.L: sf != of, ConditionCode.GE: sf == of,
        ConditionCode.LE: zf or sf != of, ConditionCode.G: not zf and sf == of,
    }
    try:
        return table[cc]
    except KeyError:
        raise ValueError(f"not a condition code: {cc}") from None


def _count_register_mask(insn: Instruction) -> int:
    name = _CODE_NAMES.get(insn.code, "")
    if name.endswith("_ECX") or name.startswith("JECXZ"):
        return 0xFFFF_FFFF
    if name.endswith("_CX") or name.startswith("JCXZ"):
        return 0xFFFF
    return 0xFFFF_FFFF_FFFF_FFFF


def taken_after(insn: Instruction, rflags: int, rcx: int) -> bool:
    """Whether a conditional branch was taken, from RFLAGS and RCX *after* it executed.

    Jcc and J*CXZ change neither; LOOP* has already decremented the count register, so the
    test is on the new count (and ZF for LOOPE/LOOPNE), exactly as the instruction does.
    INTO is taken when OF is set.
    """
    mnemonic = insn.mnemonic
    if mnemonic in (Mnemonic.JRCXZ, Mnemonic.JECXZ, Mnemonic.JCXZ):
        return rcx & _count_register_mask(insn) == 0
    if mnemonic in (Mnemonic.LOOP, Mnemonic.LOOPE, Mnemonic.LOOPNE):
        count_nonzero = rcx & _count_register_mask(insn) != 0
        if mnemonic == Mnemonic.LOOPE:
            return count_nonzero and bool(rflags & RFLAGS_ZF)
        if mnemonic == Mnemonic.LOOPNE:
            return count_nonzero and not rflags & RFLAGS_ZF
        return count_nonzero
    if mnemonic == Mnemonic.INTO:
        return bool(rflags & RFLAGS_OF)
    return condition_holds(insn.condition_code, rflags)


def taken_before(insn: Instruction, rflags: int, rcx: int) -> bool:
    """taken_after from the registers *before* the conditional runs (LOOP* has yet to
    decrement its count; the others change neither)."""
    if insn.mnemonic in (Mnemonic.LOOP, Mnemonic.LOOPE, Mnemonic.LOOPNE):
        rcx -= 1
    return taken_after(insn, rflags, rcx)


def needs_flags(insn: Instruction, cls: BranchClass) -> bool:
    """A conditional whose target is its own fall-through: only RFLAGS/RCX tell if it went."""
    return cls.conditional and insn.near_branch_target == insn.next_ip


def branch_between(insn: Instruction, cls: BranchClass | None, to_ip: int, cpl: int,
                   flags: tuple[int, int] | None = None):
    """The taken branch a block's last instruction made to the next block at `to_ip`, or None
    (no branch, a conditional not taken, INT n and friends, which whoever delivers them
    records). A conditional whose target is its own fall-through is decided by `flags`
    (RFLAGS, RCX after it ran), or is None without them (addresses cannot tell)."""
    from vlbr.vcpu import Branch
    if cls is None or cls.interrupt:
        return None
    if needs_flags(insn, cls):
        if flags is None or not taken_after(insn, *flags):
            return None
    elif cls.conditional and to_ip == insn.next_ip:
        return None
    return Branch(insn.ip, to_ip, cls.kind, cpl, is_call=cls.is_call, is_return=cls.is_return)


RING_CHUNK = 256  # block-ring entries read back at a time when collecting the newest records


def decode_tail(code: bytes, address: int):
    """(last instruction, its BranchClass) of a block whose bytes `code` start at `address`."""
    insn = None
    for insn in iced_x86.Decoder(64, code, ip=address):
        pass
    return insn, (classify(insn) if insn is not None else None)


def newest_branches(blocks, n: int, prev, depth: int, kind_ok, branch_to) -> list:
    """The newest `depth` branches among `n` logged blocks that pass the type filter,
    oldest first (older ones would only be shifted out of the LBR); blocks(lo, hi) reads
    entries lo..hi-1."""
    found: list = []
    hi = n
    while hi > 0 and len(found) < depth:
        lo = max(0, hi - RING_CHUNK)
        chunk = blocks(max(0, lo - 1), hi)
        if lo == 0:
            chunk = [prev] + chunk
        for k in range(len(chunk) - 1, 0, -1):
            frm = chunk[k - 1]
            branch = None if frm is None else branch_to(frm, chunk[k][0])
            if branch is not None and kind_ok[branch.kind]:
                found.append(branch)
                if len(found) == depth:
                    break
        hi = lo
    found.reverse()
    return found
