"""Differential test: the records the software backend leaves (block hooks, branches.py)
equal the branches seen by single-stepping the same guest on plain unicorn with a code hook
on every instruction. BR_TYPE expectations from the reference doc section 2 table."""

from __future__ import annotations

import iced_x86
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iced_x86 import Code, FlowControl, OpKind
from iced_x86 import Register as R
from sw_guests import Asm
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, Uc
from unicorn import x86_const as X

from corpus import CPUID_RAW_DUMP
from vlbr.arch.msrs import IA32_LBR_CTL, INFO_BR_TYPE_SHIFT, LbrCtl
from vlbr.backends import layout
from vlbr.backends.base import MachineConfig
from vlbr.backends.software.backend import SoftwareMachine, enter_long_mode, load_guest
from vlbr.host import read_cpuid_file
from vlbr.policy import emulated_guest_cpuid
from vlbr.vcpu import LbrConfig

RECORD_ALL = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR) | 0x7F0000
JCCS = [Code.JE_REL32_64, Code.JNE_REL32_64, Code.JL_REL32_64, Code.JGE_REL32_64,
        Code.JB_REL32_64, Code.JA_REL32_64, Code.JS_REL32_64, Code.JNP_REL32_64]
OPS = st.one_of(
    st.tuples(st.just("jcc"), st.sampled_from(JCCS), st.integers(-3, 3)),
    st.tuples(st.just("add"), st.integers(-5, 5)),
    st.tuples(st.just("jmp")), st.tuples(st.just("call")), st.tuples(st.just("ind_jmp")),
    st.tuples(st.just("ind_call")), st.tuples(st.just("loop"), st.integers(1, 4)),
)


def expected_type(insn) -> int:
    """BR_TYPE per the reference doc: 0 Jcc, 1 near ind JMP, 2 near rel JMP, 3 near ind
    CALL, 4 near rel CALL, 5 near RET."""
    if insn.flow_control == FlowControl.CONDITIONAL_BRANCH:
        return 0
    if insn.flow_control == FlowControl.RETURN:
        return 5
    relative = insn.op0_kind in (OpKind.NEAR_BRANCH64, OpKind.NEAR_BRANCH32)
    if insn.flow_control in (FlowControl.CALL, FlowControl.INDIRECT_CALL):
        return 4 if relative else 3
    return 2 if relative else 1


def build(ops, eax, ctl: int = RECORD_ALL) -> Asm:
    a = Asm()
    a.raw(Code.MOV_R32_IMM32, R.EAX, eax & 0xFFFFFFFF, kinds="ri")
    a.wrmsr(IA32_LBR_CTL, ctl, label="enable")
    a.raw(Code.MOV_R32_IMM32, R.EAX, eax & 0xFFFFFFFF, kinds="ri")
    for k, op in enumerate(ops):
        here = f"L{k}"
        if op[0] == "jcc":
            a.raw(Code.CMP_RM32_IMM32, R.EAX, op[2] & 0xFFFFFFFF, kinds="ri")
            a.branch(op[1], here)
            a.raw(Code.NOPD)  # target != fall-through
        elif op[0] == "add":
            a.raw(Code.ADD_RM32_IMM32, R.EAX, op[1] & 0xFFFFFFFF, kinds="ri")
        elif op[0] == "jmp":
            a.jmp(here)
            a.raw(Code.NOPD)
        elif op[0] == "call":
            a.call(f"F{k}")
        elif op[0] == "ind_jmp":
            a.mov(R.RBX, here)
            a.raw(Code.JMP_RM64, R.RBX, kinds="r")
            a.raw(Code.NOPD)
        elif op[0] == "ind_call":
            a.mov(R.RBX, f"F{k}")
            a.raw(Code.CALL_RM64, R.RBX, kinds="r")
        elif op[0] == "loop":
            a.raw(Code.MOV_R32_IMM32, R.ECX, op[1], kinds="ri")
            a.label(f"B{k}")
            a.raw(Code.DEC_RM32, R.ECX, kinds="r")
            a.branch(Code.JNE_REL32_64, f"B{k}")
        a.label(here)
    a.wrmsr(IA32_LBR_CTL, 0, label="disable")
    a.exit(0)
    for k, op in enumerate(ops):
        if op[0] in ("call", "ind_call"):
            a.label(f"F{k}")
            a.ret()
    return a


def reference_branches(image, start, stop):
    """(from, to, type) of every taken branch between `start` and `stop`, by single-stepping."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_HASWELL)
    load_guest(uc, image, 1)
    enter_long_mode(uc, layout.entry_state(0, 1, image.entry))
    trace = []
    uc.hook_add(UC_HOOK_CODE, lambda uc, address, size, _: trace.append(address))
    uc.emu_start(image.entry, stop)
    trace = trace[trace.index(start):]
    out = []
    for a, b in zip(trace, trace[1:]):
        insn = iced_x86.Decoder(64, bytes(uc.mem_read(a, 15)), ip=a).decode()
        if insn.flow_control == FlowControl.NEXT:
            continue
        if insn.flow_control == FlowControl.CONDITIONAL_BRANCH and b != insn.near_branch_target:
            continue
        out.append((a, b, expected_type(insn)))
    return out


@pytest.fixture(scope="module")
def table():
    if not CPUID_RAW_DUMP.exists():
        pytest.skip(f"corpus file {CPUID_RAW_DUMP} missing")
    return emulated_guest_cpuid(read_cpuid_file(CPUID_RAW_DUMP)[0].table, 32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, min_size=1, max_size=30), st.integers(-4, 4))
def test_recorded_branches_equal_single_step_reference(table, ops, eax):
    a = build(ops, eax)
    image = a.assemble()
    config = LbrConfig.from_cpuid(table)
    result = SoftwareMachine(image, MachineConfig(table, config, 1, 100_000)).run()
    assert result.exit_status == [0], result.stats
    want = reference_branches(image, image.symbols["enable"], image.symbols["disable"])
    got = [(f, t, (i >> INFO_BR_TYPE_SHIFT) & 0xF) for f, t, i in result.vcpus[0].records()
           if (f, t, i) != (0, 0, 0)]
    assert got == list(reversed(want))[:config.max_depth]
