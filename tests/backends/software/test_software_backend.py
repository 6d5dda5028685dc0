"""The software backend on tiny iced-x86 guests (sw_guests.Asm).

Expected values come from: the guest's own labels (branch addresses), the CPUID table the
machine is given (vlbr.policy.emulated_guest_cpuid over the corpus file
cpuid-tool-raw-amd-epyc-kvm-guest.txt, the KVM guest these machines are), the Guest ABI in
docs/design.md (selectors, stacks), the reference doc section 2 (LBR_CTL valid mask
0x7F000F, #DB clears LBREn, BR_TYPE encodings) and the SDM (64-bit interrupt frame).
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from iced_x86 import Code, Instruction, MemoryOperand
from iced_x86 import Register as R
from sw_guests import DATA, Asm, mem
from unicorn.x86_const import UC_X86_REG_RAX

from corpus import CPUID_RAW_DUMP
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_LBR_DEPTH, INFO_BR_TYPE_SHIFT, BranchType, LbrCtl
from vlbr.backends import layout
from vlbr.arch.x86 import MAX_INSN
from vlbr.backends.base import PORT_EXIT, MachineConfig, StopReason
from vlbr.backends.software import SoftwareBackend, native
from vlbr.backends.software.backend import SoftwareMachine
from vlbr.host import read_cpuid_file
from vlbr.policy import emulated_guest_cpuid
from vlbr.vcpu import LbrConfig

ALL_TYPES = 0x7F0000
RECORD_ALL = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR) | ALL_TYPES


@pytest.fixture(scope="module")
def table():
    if not CPUID_RAW_DUMP.exists():
        pytest.skip(f"corpus file {CPUID_RAW_DUMP} missing")
    return emulated_guest_cpuid(read_cpuid_file(CPUID_RAW_DUMP)[0].table, 32)


def machine(table, vcpus=1, max_steps=200_000):
    return MachineConfig(table, LbrConfig.from_cpuid(table), vcpus, max_steps)


def run(asm: Asm, table, **kw):
    sm = SoftwareMachine(asm.assemble(), machine(table, **kw))
    return sm, sm.run()


def data_words(sm, count, offset=0):
    return struct.unpack(f"<{count}Q", bytes(sm.uc.mem_read(DATA + offset, 8 * count)))


def db_handler_reports_rip_and_lbr_ctl(a: Asm) -> None:
    """A #DB handler that stores the faulting RIP and IA32_LBR_CTL at DATA and exits with 1."""
    a.label("db")
    a.raw(Code.POP_R64, R.RAX, kinds="r")
    a.store(0)
    a.rdmsr(IA32_LBR_CTL)
    a.store(8)
    a.exit(1)


def br_type(info):
    return (info >> INFO_BR_TYPE_SHIFT) & 0xF


def test_console_and_exit(table):
    a = Asm()
    a.putc("hello\n")
    a.exit(7)
    result = SoftwareBackend().run(a.assemble(), machine(table))
    assert result.console == ["hello\n"]
    assert result.exit_status == [7]
    assert result.stats["stopped"] == "exit"


@pytest.mark.parametrize("leaf,subleaf", [(0x1C, 0), (0x7, 0), (0xD, 0xF), (0xA, 0), (0x0, 0)])
def test_cpuid_comes_from_the_table(table, leaf, subleaf):
    a = Asm()
    a.raw(Code.MOV_R32_IMM32, R.EAX, leaf, kinds="ri")
    a.raw(Code.MOV_R32_IMM32, R.ECX, subleaf, kinds="ri")
    a.raw(Code.CPUID)
    for i, reg in enumerate((R.RAX, R.RBX, R.RCX, R.RDX)):
        a.store(8 * i, reg)
    a.exit(0)
    sm, result = run(a, table)
    assert result.exit_status == [0]
    assert data_words(sm, 4) == table.regs(leaf, subleaf).as_tuple()


def gp_guest(value):
    """Writes `value` to IA32_LBR_CTL; the #GP handler saves its frame and exits 13."""
    a = Asm()
    a.handler(13, "gp")
    a.lidt()
    a.wrmsr(IA32_LBR_CTL, value, label="faulting")
    a.exit(0)
    a.label("gp")
    for i in range(4):  # error code, RIP, CS, RFLAGS
        a.raw(Code.POP_R64, R.RAX, kinds="r")
        a.store(8 * i)
    a.exit(13)
    return a


@pytest.mark.parametrize("bit", [4, 15, 23, 31, 32, 63])  # outside LBR_CTL_VALID 0x7F000F
def test_reserved_lbr_ctl_bit_raises_gp_through_the_guest_idt(table, bit):
    a = gp_guest(1 << bit)
    sm, result = run(a, table)
    assert result.exit_status == [13]
    error, rip, cs, _ = data_words(sm, 4)
    assert (error, rip, cs) == (0, a.assemble().symbols["faulting"], layout.SEL_KERNEL_CODE)
    assert result.vcpus[0].lbr_ctl == 0


def test_valid_lbr_ctl_write_does_not_fault(table):
    sm, result = run(gp_guest(RECORD_ALL), table)
    assert result.exit_status == [0]
    assert result.vcpus[0].lbr_ctl == RECORD_ALL


def test_unknown_msr_raises_gp_not_qemus_zero(table):
    a = gp_guest(0)
    a.ops = []
    a.handler(13, "gp")
    a.lidt()
    a.rdmsr(0x1234_5678, label="faulting")
    a.exit(0)
    a.label("gp")
    a.exit(13)
    _, result = run(a, table)
    assert result.exit_status == [13]


def known_loop(a: Asm, iterations=3, p=""):
    """ecx = iterations; a jnz loop (iterations-1 taken, one not taken), a call and a ret."""
    a.raw(Code.MOV_R32_IMM32, R.ECX, iterations, kinds="ri")
    a.label(p + "loop")
    a.raw(Code.DEC_RM32, R.ECX, kinds="r")
    a.label(p + "jnz")
    a.branch(Code.JNE_REL32_64, p + "loop")
    a.label(p + "call")
    a.call(p + "fn")
    a.label(p + "after_call")
    a.jmp(p + "done")
    a.label(p + "fn")
    a.label(p + "ret")
    a.ret()
    a.label(p + "done")


def test_known_loop_leaves_exactly_the_expected_records(table):
    a = Asm()
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    known_loop(a, 3)
    a.wrmsr(IA32_LBR_CTL, 0)
    a.exit(0)
    symbols = a.assemble().symbols
    _, result = run(a, table)
    s = lambda n: symbols[n]  # noqa: E731
    expected = [(s("after_call"), s("done"), BranchType.NEAR_REL_JMP),
                (s("ret"), s("after_call"), BranchType.NEAR_RET),
                (s("call"), s("fn"), BranchType.NEAR_REL_CALL),
                (s("jnz"), s("loop"), BranchType.JCC),
                (s("jnz"), s("loop"), BranchType.JCC)]
    records = [r for r in result.vcpus[0].records() if r != (0, 0, 0)]
    assert [(f, t, br_type(i)) for f, t, i in records] == expected


def test_not_taken_conditional_is_not_recorded(table):
    a = Asm()
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    a.raw(Code.XOR_R32_RM32, R.EAX, R.EAX, kinds="rr")  # ZF=1: jne falls through
    a.label("jne")
    a.branch(Code.JNE_REL32_64, "far")
    a.label("far")  # target == fall-through: only the flags can tell
    a.branch(Code.JE_REL32_64, "next")  # taken, to its own fall-through
    a.label("next")
    a.wrmsr(IA32_LBR_CTL, 0)
    a.exit(0)
    symbols = a.assemble().symbols
    _, result = run(a, table)
    records = [r[:2] for r in result.vcpus[0].records() if r != (0, 0, 0)]
    assert records == [(symbols["far"], symbols["next"])]


def test_no_block_hook_while_lbren_clear(table):
    a = Asm()
    known_loop(a, 5)
    a.exit(0)
    sm, result = run(a, table)
    assert result.stats["branches_seen"] == 0
    assert sm.block_hook is None
    assert all(r == (0, 0, 0) for r in result.vcpus[0].records())


def iretq_to_user(a: Asm, rflags: int = 0x2) -> None:
    """IRETQ (at label "iretq") to ring 3 at label "user", stack at 0x6F0000."""
    for value in (layout.SEL_USER_DATA, 0x6F0000, rflags, layout.SEL_USER_CODE, "user"):
        a.mov(R.RAX, value)
        a.raw(Code.PUSH_R64, R.RAX, kinds="r")
    a.label("iretq")
    a.raw(Code.IRETQ)
    a.label("user")


def ring3_guest(ctl):
    """Kernel enables LBR with ctl, IRETQs to ring 3, which jumps twice and INT 0x80s back."""
    a = Asm()
    a.handler(0x80, "kernel_entry", dpl=3)
    a.lidt()
    a.wrmsr(IA32_LBR_CTL, ctl)
    iretq_to_user(a)
    a.jmp("u1")
    a.label("u1")
    a.jmp("u2")
    a.label("u2")
    a.label("int80")
    a.raw(Code.INT_IMM8, 0x80, kinds="i")
    a.label("kernel_entry")
    for i in range(5):  # RIP, CS, RFLAGS, RSP, SS
        a.raw(Code.POP_R64, R.RAX, kinds="r")
        a.store(8 * i)
    a.raw(Code.MOV_R64_RM64, R.RAX, R.RSP, kinds="rr")
    a.store(40)
    a.wrmsr(IA32_LBR_CTL, 0)
    a.exit(0x80)
    return a


def test_ring3_drop_and_int80_frame(table):
    a = ring3_guest(RECORD_ALL)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [0x80]
    rip, cs, _, rsp, ss, kernel_rsp = data_words(sm, 6)
    assert (rip, cs, rsp, ss) == (sym["kernel_entry"], layout.SEL_USER_CODE, 0x6F0000,
                                  layout.SEL_USER_DATA)
    assert kernel_rsp == layout.stack_top(0)  # the TSS.RSP0 stack, frame popped
    records = [r[:2] for r in result.vcpus[0].records() if r != (0, 0, 0)]
    assert records[:4] == [(sym["int80"], sym["kernel_entry"]), (sym["u1"], sym["u2"]),
                           (sym["user"], sym["u1"]), (sym["iretq"], sym["user"])]


def test_usr_filter_keeps_only_ring3_branches(table):
    a = ring3_guest(int(LbrCtl.LBREN | LbrCtl.USR) | ALL_TYPES)
    _, result = run(a, table)
    sym = a.assemble().symbols
    records = [r[:2] for r in result.vcpus[0].records() if r != (0, 0, 0)]
    # branches ending at CPL 3: iretq into user, jmp u1, jmp u2; INT 0x80 ends at CPL 0
    assert records == [(sym["u1"], sym["u2"]), (sym["user"], sym["u1"]),
                       (sym["iretq"], sym["user"])]
    assert result.vcpus[0].ler[:2] == (sym["u1"], sym["u2"])  # LER: last record before INT


def test_os_filter_keeps_only_ring0_branches(table):
    a = ring3_guest(int(LbrCtl.LBREN | LbrCtl.OS) | ALL_TYPES)
    _, result = run(a, table)
    sym = a.assemble().symbols
    records = [(f, t, br_type(i)) for f, t, i in result.vcpus[0].records() if (f, t, i) != (0, 0, 0)]
    assert records == [(sym["int80"], sym["kernel_entry"], BranchType.OTHER)]


def test_int1_is_a_debug_exception_that_clears_lbren(table):
    a = Asm()
    a.handler(1, "db")
    a.lidt()
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    a.jmp("j")
    a.label("j")
    a.label("int1")
    a.raw(Code.INT1)
    a.label("after")
    a.exit(0)
    db_handler_reports_rip_and_lbr_ctl(a)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [1]
    rip, ctl = data_words(sm, 2)
    assert rip == sym["after"]  # #DB from INT1 is a trap: RIP after it
    assert ctl == RECORD_ALL & ~LbrCtl.LBREN
    records = [r[:2] for r in result.vcpus[0].records() if r != (0, 0, 0)]
    assert records == [(sym["j"] - 5, sym["j"])]


def test_self_modified_rdmsr_reaches_the_model(table):
    """The guest writes RDMSR bytes into a page at run time and executes them."""
    a = Asm()
    target = DATA + 0x400
    a.mov(R.RAX, 0xC3320F)  # rdmsr; ret
    a.raw(Code.MOV_RM64_R64, mem(target), R.RAX, kinds="mr")
    a.raw(Code.MOV_R32_IMM32, R.ECX, IA32_LBR_DEPTH, kinds="ri")
    a.raw(Code.MOV_R32_IMM32, R.EAX, 0x5555, kinds="ri")
    a.mov(R.RBX, target)
    a.raw(Code.CALL_RM64, R.RBX, kinds="r")
    a.exit()  # status = EAX from the rdmsr
    _, result = run(a, table)
    assert result.exit_status == [LbrConfig.from_cpuid(table).max_depth]


def test_max_steps_stops_with_a_named_error(table):
    a = Asm()
    a.label("spin")
    a.jmp("spin")
    _, result = run(a, table, max_steps=1000)
    assert result.stats["stopped"] == "max_steps"
    assert "max_steps=1000" in result.stats["error"]
    assert result.exit_status == [None]


@pytest.mark.parametrize("native_on", [True, False])
@pytest.mark.parametrize("ctl", [0, RECORD_ALL, int(LbrCtl.LBREN | LbrCtl.OS) | ALL_TYPES])
def test_the_step_budget_stops_a_spin_after_max_steps_to_15x_instructions(table, native_on, ctl):
    # LBREn clear, recording natively, recording with the Python hook (OS only); the budget
    # counts block bytes, so between max_steps and MAX_INSN * max_steps instructions run.
    a = Asm()
    a.wrmsr(IA32_LBR_CTL, ctl)
    a.raw(Code.XOR_R32_RM32, R.EAX, R.EAX, kinds="rr")
    a.label("spin")
    a.raw(Code.INC_RM64, R.RAX, kinds="r")
    a.jmp("spin")
    config = dataclasses.replace(machine(table, max_steps=1000), native_recording=native_on)
    sm = SoftwareMachine(a.assemble(), config)
    result = sm.run()
    assert result.stats["stopped"] == "max_steps"
    assert result.stops[0].reason == StopReason.STEP_BUDGET
    instructions = 2 * sm.uc.reg_read(UC_X86_REG_RAX)
    assert 1000 <= instructions + 1 <= MAX_INSN * 1000 + 1
    native_ring = native_on and native.load() is not None and ctl == RECORD_ALL
    assert ("native_blocks" in result.stats) == native_ring


@pytest.mark.parametrize("native_on", [True, False])
def test_a_port_stop_lands_right_after_the_out(table, native_on):
    # Without a per-instruction hook QEMU would run the rest of the block after the OUT: a
    # fence (a native or Python no-op code hook) follows each OUT.
    a = Asm()
    a.raw(Code.MOV_R32_IMM32, R.EDX, PORT_EXIT, kinds="ri")
    a.raw(Code.XOR_R32_RM32, R.EAX, R.EAX, kinds="rr")
    a.raw(Code.OUT_DX_EAX, R.DX, R.EAX, kinds="rr")
    a.raw(Code.MOV_R32_IMM32, R.EAX, 7, kinds="ri")
    a.store(0)
    a.raw(Code.HLT)
    config = dataclasses.replace(machine(table), native_recording=native_on)
    sm = SoftwareMachine(a.assemble(), config)
    assert sm.run().exit_status == [0]
    assert data_words(sm, 1) == (0,)


def test_two_vcpus_see_only_their_own_records(table):
    a = Asm()
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    a.yield_()  # the other vCPU runs between enabling and the loop
    a.raw(Code.LEA_R32_M, R.ECX, MemoryOperand(R.RDI, displ=2), kinds="rm")
    a.label("loop")
    a.raw(Code.DEC_RM32, R.ECX, kinds="r")
    a.label("jnz")
    a.branch(Code.JNE_REL32_64, "loop")
    a.yield_()
    a.wrmsr(IA32_LBR_CTL, 0)
    a.raw(Code.MOV_R32_RM32, R.EAX, R.EDI, kinds="rr")
    a.exit()
    sym = a.assemble().symbols
    _, result = run(a, table, vcpus=2)
    assert result.exit_status == [0, 1]
    for n, model in enumerate(result.vcpus):
        records = [r[:2] for r in model.records() if r != (0, 0, 0)]
        assert records == [(sym["jnz"], sym["loop"])] * (n + 1)  # vCPU n loops n+2 times


def test_syscall_and_sysret_cross_rings_and_are_recorded(table):
    """STAR/LSTAR/FMASK as in SDM Vol. 2B SYSCALL/SYSRET with the Guest ABI selectors:
    SYSCALL loads CS=STAR[47:32]=0x08, SYSRET CS=STAR[63:48]+16|3=0x23, SS=+8|3=0x1B."""
    a = Asm()
    a.wrmsr(0xC0000081, (0x10 << 48) | (layout.SEL_KERNEL_CODE << 32))  # STAR
    a.emit(lambda l: Instruction.create_reg_u32(
        Code.MOV_R32_IMM32, R.EAX, l.get("kernel_entry", 0)))
    a.raw(Code.MOV_R32_IMM32, R.ECX, 0xC0000082, kinds="ri")  # LSTAR
    a.raw(Code.XOR_R32_RM32, R.EDX, R.EDX, kinds="rr")
    a.raw(Code.WRMSR)
    a.wrmsr(0xC0000084, 0x200)  # FMASK: clear IF
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    iretq_to_user(a, rflags=0x202)
    a.label("syscall")
    a.raw(Code.SYSCALL)
    a.label("after_syscall")
    a.exit(0x5C)  # from ring 3: the TSS I/O bitmap opens the exit port
    a.label("kernel_entry")
    a.raw(Code.MOV_R64_RM64, R.RAX, R.RCX, kinds="rr")
    a.store(0)
    a.raw(Code.MOV_R64_RM64, R.RBX, R.RCX, kinds="rr")
    a.raw(Code.MOV_R64_RM64, R.RAX, R.R11, kinds="rr")
    a.store(8)
    a.rdmsr(IA32_LBR_DEPTH)  # CPL0 only: #GP (no handler: shutdown) if SYSCALL left CPL 3
    a.store(16)
    a.raw(Code.MOV_R64_RM64, R.RCX, R.RBX, kinds="rr")
    a.label("sysret")
    a.raw(Code.SYSRETQ)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [0x5C], result.stats
    rcx, r11, depth = data_words(sm, 3)
    assert rcx == sym["after_syscall"] and r11 & 0x200  # RFLAGS saved with IF set
    assert depth == LbrConfig.from_cpuid(table).max_depth
    records = [(f, t, br_type(i)) for f, t, i in result.vcpus[0].records() if (f, t, i) != (0, 0, 0)]
    assert records[:3] == [(sym["sysret"], sym["after_syscall"], BranchType.OTHER),
                           (sym["syscall"], sym["kernel_entry"], BranchType.OTHER),
                           (sym["iretq"], sym["user"], BranchType.OTHER)]


XSAVE_AREA = 0x200000  # 64-byte aligned guest RAM outside the image


def test_xsaves_and_xrstors_of_component_15(table):
    """Layout from the reference doc section 1 (component 15: CTL, DEPTH, LER x3, records)
    in the compacted format (XCOMP_BV bit 63), 15 starting at 576 after the header."""
    from vlbr.arch.msrs import IA32_XSS
    a = Asm()
    a.wrmsr(IA32_XSS, 1 << 15)
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    known_loop(a, 2)
    saved_ctl = int(LbrCtl.OS) | int(LbrCtl.COND)
    a.wrmsr(IA32_LBR_CTL, saved_ctl)
    a.raw(Code.MOV_R32_IMM32, R.EAX, 1 << 15, kinds="ri")
    a.raw(Code.XOR_R32_RM32, R.EDX, R.EDX, kinds="rr")
    a.raw(Code.XSAVES64_MEM, mem(XSAVE_AREA), kinds="m")
    a.wrmsr(IA32_LBR_CTL, 0)
    a.wrmsr(IA32_LBR_DEPTH, LbrConfig.from_cpuid(table).max_depth)  # clears the records
    a.raw(Code.MOV_R32_IMM32, R.EAX, 1 << 15, kinds="ri")
    a.raw(Code.XOR_R32_RM32, R.EDX, R.EDX, kinds="rr")
    a.raw(Code.XRSTORS64_MEM, mem(XSAVE_AREA), kinds="m")
    a.exit(0)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [0], result.stats
    area = bytes(sm.uc.mem_read(XSAVE_AREA, 576 + 64))
    xstate_bv, xcomp_bv = struct.unpack_from("<QQ", area, 512)
    ctl, depth, _, _, _, from0, to0 = struct.unpack_from("<7Q", area, 576)
    assert xstate_bv == 1 << 15 and xcomp_bv == (1 << 63) | (1 << 15)
    assert (ctl, depth) == (saved_ctl, LbrConfig.from_cpuid(table).max_depth)
    assert (from0, to0) == (sym["after_call"], sym["done"])
    model = result.vcpus[0]
    assert model.lbr_ctl == saved_ctl
    assert model.records()[0][:2] == (sym["after_call"], sym["done"])


def test_prefixed_rdmsr_and_code_patched_after_it_ran(table):
    """REX.W RDMSR (48 0F 32) is still RDMSR; a NOP pair in an already executed page that the
    guest overwrites with RDMSR (0F 32) must reach the model too."""
    a = Asm()
    a.label("top")
    a.raw(Code.MOV_R32_IMM32, R.ECX, IA32_LBR_DEPTH, kinds="ri")
    a.emit(lambda _l: Instruction.create(Code.RDMSR))
    a.ops[-1] = lambda _l: Instruction.create_declare_byte_3(0x48, 0x0F, 0x32)
    a.store(0)
    a.mov(R.RBX, "patch")
    a.raw(Code.MOV_R32_IMM32, R.EAX, 0x320F, kinds="ri")
    a.raw(Code.MOV_RM16_R16, MemoryOperand(R.RBX), R.AX, kinds="mr")
    a.raw(Code.MOV_R32_IMM32, R.EAX, 0x7777, kinds="ri")
    a.label("patch")
    a.raw(Code.NOPD)
    a.ops[-1] = lambda _l: Instruction.create_declare_byte_2(0x66, 0x90)
    a.store(8)
    a.exit(0)
    sm, result = run(a, table)
    depth = LbrConfig.from_cpuid(table).max_depth
    assert result.exit_status == [0], result.stats
    assert data_words(sm, 2) == (depth, depth)


def test_trap_flag_single_step_is_a_debug_exception(table):
    """RFLAGS.TF: #DB after the next instruction (SDM 17.3.1.4); #DB clears LBREn (ref 2)."""
    a = Asm()
    a.handler(1, "db")
    a.lidt()
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    a.raw(Code.PUSHFQ)
    a.raw(Code.OR_RM64_IMM32, MemoryOperand(R.RSP), 0x100, kinds="mi")
    a.raw(Code.POPFQ)
    a.label("stepped")
    a.raw(Code.NOPD)
    a.label("after")
    a.exit(0)
    db_handler_reports_rip_and_lbr_ctl(a)
    sm, result = run(a, table)
    assert result.exit_status == [1], result.stats
    rip, ctl = data_words(sm, 2)
    assert rip == a.assemble().symbols["after"]  # a trap: the frame's RIP is past the NOP
    assert ctl == RECORD_ALL & ~LbrCtl.LBREN


@pytest.mark.parametrize("privileged", ["wrmsr", "hlt"])
def test_gp_in_ring3_switches_to_the_tss_rsp0_stack(table, privileged):
    """A CPL3 WRMSR (routed by vlbr) or HLT (faulted by QEMU) raises #GP(0) (SDM Vol. 2);
    the 64-bit frame holds error code, RIP, CS=0x23, RFLAGS, RSP, SS=0x1B and lands on
    TSS.RSP0 (Guest ABI: stack_top(0))."""
    a = Asm()
    a.handler(13, "gp")
    a.lidt()
    iretq_to_user(a)
    if privileged == "wrmsr":
        a.wrmsr(IA32_LBR_CTL, 1, label="faulting")
    else:
        a.label("faulting")
        a.raw(Code.HLT)
    a.exit(0)
    a.label("gp")
    a.raw(Code.MOV_R64_RM64, R.RAX, R.RSP, kinds="rr")
    a.store(48)
    for i in range(6):
        a.raw(Code.POP_R64, R.RAX, kinds="r")
        a.store(8 * i)
    a.exit(13)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [13], result.stats
    error, rip, cs, _, rsp, ss, handler_rsp = data_words(sm, 7)
    assert (error, rip, cs, rsp, ss) == (0, sym["faulting"], layout.SEL_USER_CODE, 0x6F0000,
                                         layout.SEL_USER_DATA)
    assert handler_rsp == layout.stack_top(0) - 6 * 8
    assert result.vcpus[0].lbr_ctl == 0


def test_xsave_sizes_and_osxsave_follow_xss_and_cr4(table):
    """CPUID.(0xD,1):EBX is the XCR0|XSS compacted size, recomputed when IA32_XSS changes
    (reference doc section 4, KVM's XSS prerequisite); CPUID.1:ECX[27] mirrors CR4.OSXSAVE."""
    from vlbr.arch.msrs import IA32_XSS
    from vlbr.arch.xsave import XsaveLayout
    a = Asm()
    for step, xss in enumerate((0, 1 << 15)):
        a.wrmsr(IA32_XSS, xss)
        a.raw(Code.MOV_R32_IMM32, R.EAX, 0xD, kinds="ri")
        a.raw(Code.MOV_R32_IMM32, R.ECX, 1, kinds="ri")
        a.raw(Code.CPUID)
        a.store(8 * step, R.RBX)
    a.raw(Code.MOV_R64_CR, R.RAX, R.CR4, kinds="rr")
    a.raw(Code.AND_RM64_IMM32, R.RAX, ~(1 << 18), kinds="rI")
    a.raw(Code.MOV_CR_R64, R.CR4, R.RAX, kinds="rr")
    a.raw(Code.MOV_R32_IMM32, R.EAX, 1, kinds="ri")
    a.raw(Code.CPUID)
    a.store(16, R.RCX)
    a.exit(0)
    sm, result = run(a, table)
    assert result.exit_status == [0], result.stats
    without, with_lbr, leaf1_ecx = data_words(sm, 3)
    assert without == XsaveLayout.for_mask(table, 0x3, compacted=True).size
    assert with_lbr == XsaveLayout.for_mask(table, 0x3 | 1 << 15, compacted=True).size
    assert with_lbr - without >= 40 + 24 * LbrConfig.from_cpuid(table).max_depth
    assert not leaf1_ecx & (1 << 27)


def test_unavailable_reason_is_none_here():
    assert SoftwareBackend().unavailable_reason() is None


def test_qemu_fault_error_code_and_int_n_without_one(table):
    """MOV DS with selector 0x38 (beyond the 7-entry Guest ABI GDT) is #GP(0x38) (SDM MOV,
    protected-mode exceptions); INT 13 (CD 0D) enters the same gate with no error code and
    RIP past the INT (SDM INT n)."""
    a = Asm()
    a.handler(13, "gp")
    a.lidt()
    a.raw(Code.MOV_R32_IMM32, R.EAX, 0x38, kinds="ri")
    a.label("faulting")
    a.raw(Code.MOV_SREG_RM16, R.DS, R.AX, kinds="rr")
    a.label("int13")
    a.raw(Code.INT_IMM8, 13, kinds="i")
    a.label("after_int")
    a.exit(0)
    a.label("gp")
    # first entry: [rsp] = error code; second: [rsp] = RIP. Keep both first words and RSPs.
    a.raw(Code.MOV_R64_RM64, R.RAX, MemoryOperand(R.RSP), kinds="rm")
    a.raw(Code.MOV_R64_RM64, R.RBX, MemoryOperand(R.RSP, displ=8, displ_size=1), kinds="rm")
    a.raw(Code.CMP_RM64_IMM32, R.R15, 0, kinds="ri")
    a.branch(Code.JNE_REL32_64, "second")
    a.store(0)
    a.raw(Code.MOV_R64_RM64, R.RAX, R.RBX, kinds="rr")
    a.store(8)
    a.raw(Code.MOV_R32_IMM32, R.R15D, 1, kinds="ri")
    a.raw(Code.ADD_RM64_IMM32, R.RSP, 8, kinds="ri")  # drop the error code, skip the MOV
    a.emit(lambda l: Instruction.create_mem_i32(
        Code.ADD_RM64_IMM32, MemoryOperand(R.RSP),
        l.get("int13", 0) - l.get("faulting", 0)))
    a.raw(Code.IRETQ)
    a.label("second")
    a.store(16)
    a.exit(13)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [13], result.stats
    assert data_words(sm, 3) == (0x38, sym["faulting"], sym["after_int"])


def test_int_n_through_a_dpl0_gate_from_ring3_is_gp_with_the_idt_error_code(table):
    """SDM INT n: a gate DPL below CPL raises #GP(vector * 8 + 2) (IDT bit) at the INT."""
    a = Asm()
    a.handler(13, "gp")
    a.handler(0x81, "never")  # DPL 0
    a.lidt()
    iretq_to_user(a)
    a.label("int81")
    a.raw(Code.INT_IMM8, 0x81, kinds="i")
    a.exit(0)
    a.label("never")
    a.exit(0x81)
    a.label("gp")
    for i in range(3):
        a.raw(Code.POP_R64, R.RAX, kinds="r")
        a.store(8 * i)
    a.exit(13)
    sm, result = run(a, table)
    sym = a.assemble().symbols
    assert result.exit_status == [13], result.stats
    assert data_words(sm, 3) == (0x81 * 8 + 2, sym["int81"], layout.SEL_USER_CODE)


def test_block_hook_removed_when_lbren_cleared(table):
    a = Asm()
    a.wrmsr(IA32_LBR_CTL, RECORD_ALL)
    known_loop(a, 2)
    a.wrmsr(IA32_LBR_CTL, 0)
    known_loop(a, 4, p="second_")  # not recorded, and no hook to pay for
    a.exit(0)
    sm, result = run(a, table)
    assert sm.block_hook is None
    assert result.stats["branches_seen"] == 4  # taken jnz, call, ret, jmp of the first loop
    assert len([r for r in result.vcpus[0].records() if r != (0, 0, 0)]) == 4


def test_halt_without_exit_is_a_named_error(table):
    a = Asm()
    a.raw(Code.HLT)
    _, result = run(a, table)
    assert result.exit_status == [None]
    assert "halted" in result.stats["error"]


def test_xsaves_of_unemulated_components_is_a_named_error(table):
    """AVX (XCR0 bit 2) is not emulated: XSAVES requesting it stops the vCPU, named."""
    from vlbr.arch.msrs import IA32_XSS
    a = Asm()
    a.wrmsr(IA32_XSS, 1 << 15)
    a.raw(Code.MOV_R32_IMM32, R.EAX, 0x7, kinds="ri")  # XSETBV XCR0 = x87 | SSE | AVX
    a.raw(Code.XOR_R32_RM32, R.EDX, R.EDX, kinds="rr")
    a.raw(Code.XOR_R32_RM32, R.ECX, R.ECX, kinds="rr")
    a.emit(Instruction.create(Code.XSETBV))
    a.raw(Code.MOV_R32_IMM32, R.EAX, 0x8007, kinds="ri")
    a.raw(Code.XSAVES64_MEM, mem(0x200000), kinds="m")
    a.exit(0)
    _, result = run(a, table)
    assert result.exit_status == [None]
    assert "components 0x4" in result.stats["error"], result.stats
