"""The native block ring (backends/software/native) against the pure-Python block hook:
random branchy guests (hypothesis) leave identical records through both in every filter and
call-stack configuration, including record MSRs read mid-stretch and conditional branches to
their own fall-through (decided at a hook from the flags), and a runaway guest stopped by
the step budget (counted natively or by the Python hook) at the same block with the same
records, whatever the ring's size (a full ring is drained mid-stretch). Issue: recording at
emulator speed."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iced_x86 import Code
from iced_x86 import Register as R
from sw_guests import DATA, Asm
from test_recording_differential import OPS

from corpus import CPUID_RAW_DUMP
from vlbr.arch.msrs import IA32_LBR_CTL, LbrCtl
from vlbr.backends.base import MachineConfig
from vlbr.backends.software import native
from vlbr.backends.software import backend
from vlbr.backends.software.backend import SoftwareMachine
from vlbr.host import read_cpuid_file
from vlbr.policy import emulated_guest_cpuid
from vlbr.vcpu import LbrConfig

pytestmark = pytest.mark.skipif(native.load() is None, reason="no gcc: no native recorder")

BASE = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR)
CONFIGS = [BASE | 0x7F0000, BASE | 0x010000 | 0x080000, BASE | int(LbrCtl.CALL_STACK) | 0x7F0000,
           int(LbrCtl.LBREN | LbrCtl.OS) | 0x7F0000]  # all; Jcc+rel call; call stack; OS only
EXTRA = st.one_of(st.tuples(st.just("read"), st.integers(0, 3)),
                  st.tuples(st.just("jcc_to_fallthrough"), st.booleans()))


@pytest.fixture(scope="module")
def table():
    if not CPUID_RAW_DUMP.exists():
        pytest.skip(f"corpus file {CPUID_RAW_DUMP} missing")
    return emulated_guest_cpuid(read_cpuid_file(CPUID_RAW_DUMP)[0].table, 32)


def run(table, image, native_on: bool, max_steps=100_000, max_exits=100_000, ring=None,
        exits=True):
    config = LbrConfig.from_cpuid(table)
    machine = MachineConfig(table, config, 1, max_steps, max_exits, native_recording=native_on)
    with mock.patch.object(backend, "NATIVE_RING", ring or backend.NATIVE_RING):
        sm = SoftwareMachine(image, machine)
    result = sm.run()
    assert (result.exit_status == [0]) == exits, result.stats
    return sm, result


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(OPS, EXTRA), min_size=1, max_size=30), st.integers(-4, 4),
       st.sampled_from(CONFIGS))
def test_native_and_python_recording_leave_the_same_records(table, ops, eax, ctl):
    image = assemble(ops, eax, ctl)
    sm_native, native_result = run(table, image, True)
    sm_python, python_result = run(table, image, False)
    assert native_result.vcpus[0].records() == python_result.vcpus[0].records()
    assert native_result.vcpus[0].ler == python_result.vcpus[0].ler
    # the records read mid-stretch are the same: the guest stored them
    assert sm_native.uc.mem_read(DATA, 8 * 64) == sm_python.uc.mem_read(DATA, 8 * 64)
    cpl_all = ctl & (LbrCtl.OS | LbrCtl.USR) == LbrCtl.OS | LbrCtl.USR
    assert ("native_blocks" in native_result.stats) == cpl_all  # used exactly where exact


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(OPS, EXTRA), min_size=1, max_size=20), st.integers(-4, 4),
       st.sampled_from(CONFIGS), st.integers(20, 3000), st.integers(1, 64))
def test_a_step_budget_stops_both_recorders_at_the_same_block(table, ops, eax, ctl, steps, ring):
    image = assemble(ops, eax, ctl, runaway=True)
    results = [run(table, image, native_on, steps, 200, ring if native_on else None, exits=False)
               for native_on in (True, False)]
    (sm_native, native_result), (sm_python, python_result) = results
    assert native_result.stops == python_result.stops  # step-budget, at the same RIP
    assert native_result.stops[0].reason == "step-budget"
    assert native_result.vcpus[0].records() == python_result.vcpus[0].records()
    assert native_result.vcpus[0].ler == python_result.vcpus[0].ler
    assert sm_native.uc.mem_read(DATA, 8 * 64) == sm_python.uc.mem_read(DATA, 8 * 64)
    assert native_result.stats["stretches"] == python_result.stats["stretches"]



def assemble(ops, eax, ctl, runaway=False):
    """The ops between enabling and disabling the LBR, then exit 0; a runaway guest repeats
    them forever instead."""
    a = Asm()
    a.raw(Code.MOV_R32_IMM32, R.EAX, eax & 0xFFFFFFFF, kinds="ri")
    a.wrmsr(IA32_LBR_CTL, ctl, label="enable")
    a.raw(Code.MOV_R32_IMM32, R.EAX, eax & 0xFFFFFFFF, kinds="ri")
    a.label("again")
    slot = 0
    for k, op in enumerate(ops):
        here = f"L{k}"
        if op[0] == "read":
            a.raw(Code.PUSH_R64, R.RAX, kinds="r")
            a.rdmsr(0x1500 + op[1])  # IA32_LBR_FROM_IP(i), mid-stretch
            a.store(8 * (slot % 64))
            slot += 1
            a.raw(Code.POP_R64, R.RAX, kinds="r")
        elif op[0] == "jcc_to_fallthrough":
            a.raw(Code.CMP_RM32_IMM32, R.EAX, 0, kinds="ri")
            a.branch(Code.JE_REL32_64 if op[1] else Code.JNE_REL32_64, here)
        elif op[0] == "jcc":
            a.raw(Code.CMP_RM32_IMM32, R.EAX, op[2] & 0xFFFFFFFF, kinds="ri")
            a.branch(op[1], here)
            a.raw(Code.NOPD)
        elif op[0] == "add":
            a.raw(Code.ADD_RM32_IMM32, R.EAX, op[1] & 0xFFFFFFFF, kinds="ri")
        elif op[0] == "jmp":
            a.jmp(here)
            a.raw(Code.NOPD)
        elif op[0] in ("call", "ind_call"):
            if op[0] == "call":
                a.call(f"F{k}")
            else:
                a.mov(R.RBX, f"F{k}")
                a.raw(Code.CALL_RM64, R.RBX, kinds="r")
        elif op[0] == "ind_jmp":
            a.mov(R.RBX, here)
            a.raw(Code.JMP_RM64, R.RBX, kinds="r")
            a.raw(Code.NOPD)
        elif op[0] == "loop":
            a.raw(Code.MOV_R32_IMM32, R.ECX, op[1], kinds="ri")
            a.label(f"B{k}")
            a.raw(Code.DEC_RM32, R.ECX, kinds="r")
            a.branch(Code.JNE_REL32_64, f"B{k}")
        a.label(here)
    if runaway:
        a.jmp("again")
    a.wrmsr(IA32_LBR_CTL, 0, label="disable")
    a.exit(0)
    for k, op in enumerate(ops):
        if op[0] in ("call", "ind_call"):
            a.label(f"F{k}")
            a.ret()
    return a.assemble()
