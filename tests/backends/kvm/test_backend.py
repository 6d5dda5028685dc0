"""The KVM backend on /dev/kvm with tiny guests encoded by iced-x86 (tests/backends/kvm/guest_asm).

Expected values come from: the Guest ABI (docs/design.md), the SDM bit positions of CR0/CR4/
EFER, the addresses iced-x86's encoder gave the guest's labels, and the Arch LBR reference
(../shared/docs/arch-lbr-reference.md) for LBR_CTL/DEPTH rules.
"""

from __future__ import annotations

import pytest
from kvm_machine import machine_config
from guest_asm import Asm, R, image
from iced_x86 import Code, Instruction, MemoryOperand

from vlbr.arch.msrs import IA32_LBR_CTL, IA32_LBR_DEPTH, BranchType, LbrCtl
from vlbr.backends.kvm import KvmBackend

LBR_ALL = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR) | 0x7F0000  # every branch type
EFER = 0xC0000080


def _gp_handler(status: int = 13) -> Asm:
    return Asm().print("GP\n").exit(status=status)


def _mov_cr(cr) -> Instruction:
    return Instruction.create_reg_reg(Code.MOV_R64_CR, R.RAX, cr)


def test_long_mode_entry_state(backend):
    # docs/design.md entry state; bit values: SDM vol. 3A 2.5 (CR0/CR4), 2.2.1 (EFER).
    a = Asm()
    for cr in (R.CR0, R.CR4):
        a.emit(_mov_cr(cr)).print_hex(R.RAX).print(" ")
    a.rdmsr(EFER).print_hex(R.RAX).print(" ")
    a.emit(Instruction.create_reg_reg(Code.MOV_R32M16_SREG, R.EAX, R.CS)).print_hex(R.RAX).print(" ")
    a.emit(Instruction.create_reg_reg(Code.MOV_R32M16_SREG, R.EAX, R.SS)).print_hex(R.RAX).print(" ")
    a.emit(Instruction.create_reg_reg(Code.MOV_R64_RM64, R.RAX, R.RSP)).print_hex(R.RAX)
    a.exit(status=0)
    result = backend.run(image(a), machine_config())
    cr0, cr4, efer, cs, ss, rsp = (int(x, 16) for x in result.console[0].split())
    assert cr0 == 0x80010033  # PE|MP|ET|NE|WP|PG
    assert cr4 == 0x40620  # PAE|OSFXSR|OSXMMEXCPT|OSXSAVE
    assert efer & 0x501 == 0x501  # SCE|LME|LMA
    assert (cs, ss) == (0x08, 0x10)
    assert rsp == 0x700000
    assert result.exit_status == [0]


def test_console_and_exit_status(backend):
    a = Asm().print("hello\n").exit(status=0xC0FFEE)
    result = backend.run(image(a), machine_config())
    assert result.console == ["hello\n"]
    assert result.exit_status == [0xC0FFEE]
    assert result.lines() == ["hello"]
    assert result.stats["stop_reasons"] == [None]


def test_no_idt_fault_stops_the_vcpu_with_a_reason(backend):
    a = Asm().emit(Instruction.create(Code.UD2)).exit(status=0)
    result = backend.run(image(a), machine_config())
    assert result.exit_status == [None]
    assert "SHUTDOWN" in result.stats["stop_reasons"][0]


def test_lbr_msrs_are_routed_to_the_model(backend):
    # ref 2: a legal DEPTH write; the model holds it, the guest reads it back through RDMSR.
    a = (Asm().wrmsr(IA32_LBR_DEPTH, 32).wrmsr(IA32_LBR_CTL, int(LbrCtl.OS | LbrCtl.USR))
         .rdmsr(IA32_LBR_CTL).print_hex(R.RAX).print(" ").rdmsr(IA32_LBR_DEPTH).print_hex(R.RAX)
         .exit(status=0))
    result = backend.run(image(a), machine_config(depth=32))
    ctl, depth = (int(x, 16) for x in result.console[0].split())
    assert (ctl, depth) == (int(LbrCtl.OS | LbrCtl.USR), 32)
    model = result.vcpus[0]
    assert model.rdmsr(IA32_LBR_CTL, host_initiated=True) == ctl
    assert result.stats["msr_exits"] == 4


def test_reserved_lbr_ctl_bit_gp_reaches_the_guest_idt(backend):
    # ref 2: LBR_CTL valid mask 0x7F000F; bit 4 set -> #GP, delivered through the guest IDT.
    a = Asm().lidt().wrmsr(IA32_LBR_CTL, 1 << 4).print("no fault\n").exit(status=0)
    result = backend.run(image(a, {13: _gp_handler()}), machine_config())
    assert result.console == ["GP\n"]
    assert result.exit_status == [13]
    assert result.vcpus[0].rdmsr(IA32_LBR_CTL, host_initiated=True) == 0


def test_illegal_depth_gp(backend):
    # ref 2: a depth CPUID does not enumerate (here 16 with only 32 offered) -> #GP.
    a = Asm().lidt().wrmsr(IA32_LBR_DEPTH, 16).exit(status=0)
    result = backend.run(image(a, {13: _gp_handler()}), machine_config(depth=32))
    assert result.exit_status == [13]


def _loop_guest(iterations: int = 3, ctl: int = LBR_ALL) -> Asm:
    a = Asm().wrmsr(IA32_LBR_CTL, ctl)
    a.mov(R.RCX, iterations)
    a.label("loop").branch(Code.CALL_REL32_64, "fn")
    a.label("after_call").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX))
    a.label("jnz").branch(Code.JNE_REL32_64, "loop")
    a.label("stop").wrmsr(IA32_LBR_CTL, 0).exit(status=0)
    a.label("fn").op(Code.RETNQ)
    return a


def _expected_loop_records(sym: dict[str, int], iterations: int) -> list[tuple[int, int, int]]:
    calls = (sym["loop"], sym["fn"], BranchType.NEAR_REL_CALL)
    rets = (sym["fn"], sym["after_call"], BranchType.NEAR_RET)
    jnz = (sym["jnz"], sym["loop"], BranchType.JCC)
    oldest_first = []
    for i in range(iterations):
        oldest_first += [calls, rets] + ([jnz] if i < iterations - 1 else [])
    return oldest_first[::-1]


def test_recorded_branches_are_the_loops(backend):
    img = image(_loop_guest(3))
    result = backend.run(img, machine_config(depth=32))
    assert result.exit_status == [0]
    records = result.vcpus[0].records()
    want = _expected_loop_records(img.symbols, 3)
    got = [(f, t, (info >> 56) & 0xF) for f, t, info in records[:len(want)]]
    assert got == [(f, t, int(kind)) for f, t, kind in want]
    assert all(r == (0, 0, 0) for r in records[len(want):])
    assert result.stats["branches"] == len(want)


def test_lbren_clear_runs_without_stepping(backend):
    img = image(_loop_guest(50, ctl=int(LbrCtl.OS)))
    result = backend.run(img, machine_config())
    assert result.exit_status == [0]
    assert result.stats["steps"] == 0
    assert all(r == (0, 0, 0) for r in result.vcpus[0].records())


def test_call_stack_mode_pops_on_return(backend):
    # ref 2: call-stack mode; a NEAR_RET pops the matching call record, so only the Jcc stay.
    ctl = LBR_ALL | int(LbrCtl.CALL_STACK)
    img = image(_loop_guest(3, ctl=ctl))
    result = backend.run(img, machine_config())
    kinds = [(info >> 56) & 0xF for _, _, info in result.vcpus[0].records() if info]
    assert int(BranchType.NEAR_RET) not in kinds and int(BranchType.NEAR_REL_CALL) not in kinds
    assert kinds.count(int(BranchType.JCC)) == 2


def test_int1_debug_exception_clears_lbren(backend):
    # ref 2 "Events: #DB clears LBREn"; the #DB handler reads LBR_CTL back.
    handler = Asm().rdmsr(IA32_LBR_CTL).print_hex(R.RAX).exit(status=1)
    a = Asm().lidt().wrmsr(IA32_LBR_CTL, LBR_ALL).op(Code.NOPD).op(Code.INT1).exit(status=0)
    result = backend.run(image(a, {1: handler}), machine_config())
    assert result.exit_status == [1]
    assert int(result.console[0], 16) == LBR_ALL & ~int(LbrCtl.LBREN)


def test_gp_during_recording_is_an_other_branch_to_the_handler(backend):
    handler = Asm().wrmsr(IA32_LBR_CTL, 0).exit(status=13)
    a = Asm().lidt().wrmsr(IA32_LBR_CTL, LBR_ALL).label("bad").wrmsr(IA32_LBR_CTL, 1 << 5)
    a.exit(status=0)
    img = image(a, {13: handler})
    result = backend.run(img, machine_config())
    assert result.exit_status == [13]
    frm, to, info = result.vcpus[0].records()[0]
    bad_wrmsr = img.symbols["bad"] + 3 * 5  # three `mov r32, imm32` (5 bytes each) precede it
    assert (frm, to, (info >> 56) & 0xF) == (bad_wrmsr, img.symbols["handler13"], 8)


def test_two_vcpus_interleave_and_keep_their_own_records(backend):
    # Guest ABI: RDI = vCPU index; vCPU n loops n+2 times, yielding inside the loop, so the
    # two run interleaved; each model must hold only its own vCPU's branches.
    a = Asm().wrmsr(IA32_LBR_CTL, LBR_ALL)
    a.emit(Instruction.create_reg_mem(Code.LEA_R64_M, R.RCX, MemoryOperand(R.RDI, displ=2)))
    a.label("loop").emit(Instruction.create_reg(Code.PUSH_R64, R.RCX)).yield_()
    a.emit(Instruction.create_reg(Code.POP_R64, R.RCX))
    a.emit(Instruction.create_reg(Code.DEC_RM64, R.RCX))
    a.label("jnz").branch(Code.JNE_REL32_64, "loop")
    a.wrmsr(IA32_LBR_CTL, 0).exit(R.EDI)
    img = image(a)
    result = backend.run(img, machine_config(vcpus=2))
    assert result.exit_status == [0, 1]
    assert result.stats["switches"] >= 4
    jcc = (img.symbols["jnz"], img.symbols["loop"])
    for n, model in enumerate(result.vcpus):
        live = [(f, t) for f, t, info in model.records() if info or f]
        assert live == [jcc] * (n + 1)


def test_without_filter_kvm_handles_the_msrs():
    # The benchmark's baseline: no filter, so KVM itself answers (and #GPs) LBR_CTL.
    a = Asm().lidt().rdmsr(IA32_LBR_CTL).exit(status=0)
    result = KvmBackend(msr_filter=False).run(image(a, {13: _gp_handler()}), machine_config())
    assert result.exit_status == [13]  # KVM here has no Arch LBR: the MSR does not exist
    assert result.stats["msr_exits"] == 0


def test_guest_cpuid_is_the_machine_table(backend):
    # KVM here rewrites leaves 1/7/0xD on KVM_SET_CPUID2 (measured: KVM_GET_CPUID2 differs), so
    # the backend answers CPUID itself: the guest must see exactly the machine's table rows.
    a = Asm()
    for leaf, sub in ((7, 0), (0x1C, 0), (0xD, 1)):
        a.mov(R.RAX, leaf).mov(R.RCX, sub).op(Code.CPUID)
        for reg in (R.RAX, R.RBX, R.RCX, R.RDX):
            a.emit(Instruction.create_reg(Code.PUSH_R64, reg))
        for _ in range(4):
            a.emit(Instruction.create_reg(Code.POP_R64, R.R9)).print_hex(R.R9).print(" ")
    a.exit(status=0)
    machine = machine_config()
    result = backend.run(image(a), machine)
    words = [int(x, 16) for x in result.console[0].split()]
    for i, (leaf, sub) in enumerate(((7, 0), (0x1C, 0), (0xD, 1))):
        edx, ecx, ebx, eax = words[4 * i:4 * i + 4]
        want = machine.cpuid.regs(leaf, sub)
        if leaf == 0xD:  # EBX: the XSAVE size of XCR0|XSS, kept current as KVM does
            assert (eax, ecx, edx) == (want.eax, want.ecx, want.edx)
        else:
            assert (eax, ebx, ecx, edx) == want.as_tuple()
    assert words[0] >> 19 & 1  # CPUID.7.0:EDX[19] Arch LBR, which KVM here would hide
    assert result.stats["cpuid_exits"] == 3


def _ring3(ctl: int):
    from guest_asm import ring3_image
    kernel = Asm().wrmsr(IA32_LBR_CTL, ctl)
    user = Asm().mov(R.RCX, 3).label("u_top").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX))
    user.label("u_jcc").branch(Code.JNE_REL32_64, "u_top")
    user.label("u_int").emit(Instruction.create_u32(Code.INT_IMM8, 0x80))
    back = Asm().wrmsr(IA32_LBR_CTL, 0).exit(status=0x80)
    fault = Asm().wrmsr(IA32_LBR_CTL, 0).exit(status=0xBAD)
    return ring3_image(kernel, user, back, fault)


def _live(model):
    return [(f, t, (i >> 56) & 0xF) for f, t, i in model.records() if f or t]


def test_ring3_branches_are_recorded_with_usr_filter(backend):
    # ref 2: LBR_CTL.USR records branches ending at CPL>0; the INT 0x80 back to ring 0 ends at
    # CPL0 and is filtered. Expected addresses: the encoder's labels.
    img = _ring3(int(LbrCtl.LBREN | LbrCtl.USR) | 0x7F0000)
    result = backend.run(img, machine_config())
    assert result.exit_status == [0x80]
    s = img.symbols
    jcc = (s["u_jcc"], s["u_top"], int(BranchType.JCC))
    assert _live(result.vcpus[0]) == [jcc, jcc, (s["iretq"], s["user_code"], 8)]
    assert result.stats["ring3_excursions"] == 1


def test_ring3_with_os_filter_records_only_the_return_to_ring0(backend):
    img = _ring3(int(LbrCtl.LBREN | LbrCtl.OS) | 0x7F0000)
    result = backend.run(img, machine_config())
    s = img.symbols
    assert _live(result.vcpus[0]) == [(s["u_int"], s["back"], 8)]


def test_ring3_privileged_instruction_faults_to_ring0(backend):
    from guest_asm import ring3_image
    kernel = Asm().wrmsr(IA32_LBR_CTL, LBR_ALL)
    user = Asm().label("u_hlt").op(Code.HLT)
    back = Asm().exit(status=0x80)
    fault = Asm().wrmsr(IA32_LBR_CTL, 0).emit(Instruction.create_reg(Code.POP_R64, R.RAX))
    fault.emit(Instruction.create_reg(Code.POP_R64, R.RAX)).print_hex(R.RAX).exit(status=13)
    img = ring3_image(kernel, user, back, fault)
    result = backend.run(img, machine_config())
    # SDM: HLT at CPL3 is #GP(0); the frame holds error code 0, then RIP of the HLT.
    assert result.exit_status == [13]
    assert int(result.console[0], 16) == img.symbols["u_hlt"]


def test_int_n_in_ring0_is_delivered_and_recorded(backend):
    # KVM here fails to emulate INT n (KVM_EXIT_INTERNAL_ERROR); the backend delivers it.
    handler = Asm().wrmsr(IA32_LBR_CTL, 0).exit(status=0x21)
    a = Asm().lidt().wrmsr(IA32_LBR_CTL, LBR_ALL).label("int")
    a.emit(Instruction.create_u32(Code.INT_IMM8, 0x1F)).exit(status=0)
    img = image(a, {0x1F: handler})
    result = backend.run(img, machine_config())
    assert result.exit_status == [0x21]
    assert _live(result.vcpus[0])[0] == (img.symbols["int"], img.symbols["handler31"], 8)


def test_xsaves_xrstors_of_component_15_round_trip(backend):
    # SDM XSAVES: compacted format, XCOMP_BV bit 63 | RFBM; component 15 right after the
    # 64-byte header at 576 when it is the only one (ref 1); LBR_CTL is its first field.
    area = 0x200000
    ctl = int(LbrCtl.OS)
    a = Asm().lidt().wrmsr(0xDA0, 1 << 15).wrmsr(IA32_LBR_CTL, ctl)
    a.mov(R.RAX, 1 << 15).mov(R.RDX, 0).mov(R.RBX, area)
    a.emit(Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.RBX)))
    a.wrmsr(IA32_LBR_CTL, 0).mov(R.RAX, 1 << 15).mov(R.RDX, 0).mov(R.RBX, area)
    a.emit(Instruction.create_mem(Code.XRSTORS64_MEM, MemoryOperand(R.RBX)))
    a.rdmsr(IA32_LBR_CTL).print_hex(R.RAX).print(" ")
    for offset in (520, 576):
        a.mov(R.RBX, area + offset)
        a.emit(Instruction.create_reg_mem(Code.MOV_R64_RM64, R.R9, MemoryOperand(R.RBX)))
        a.print_hex(R.R9).print(" ")
    a.exit(status=0)
    result = backend.run(image(a, {13: _gp_handler(), 6: _gp_handler(6)}), machine_config())
    assert result.exit_status == [0]
    restored, xcomp_bv, saved_ctl = (int(x, 16) for x in result.console[0].split())
    assert (restored, saved_ctl) == (ctl, ctl)
    assert xcomp_bv == (1 << 63) | (1 << 15)
    assert result.stats["emulated"] == 2


def test_misaligned_xsaves_is_gp(backend):
    a = Asm().lidt().wrmsr(0xDA0, 1 << 15).mov(R.RAX, 1 << 15).mov(R.RDX, 0)
    a.mov(R.RBX, 0x200008).emit(Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.RBX)))
    a.exit(status=0)
    result = backend.run(image(a, {13: _gp_handler()}), machine_config())
    assert result.exit_status == [13]  # SDM XSAVES: #GP if not 64-byte aligned


def test_ring3_round_trip_without_recording_runs_in_kvm(backend):
    # LBREn clear: no stepping, ring 3 runs in KVM itself; INT 0x80 (which this KVM cannot run
    # at CPL3) comes back through the patched port exit (backends.kvm.traps).
    img = _ring3(0)
    result = backend.run(img, machine_config())
    assert result.exit_status == [0x80]
    assert result.stats["steps"] == 0 and result.stats["ring3_excursions"] == 0
    assert result.stats["emulated"] == 1


def _syscall_guest(ctl: int):
    from guest_asm import IMAGE_BASE, ring3_image
    kernel = (Asm().wrmsr(0xC0000082, IMAGE_BASE + 0x2800)  # LSTAR: `back`
              .wrmsr(0xC0000081, (0x10 << 48) | (0x08 << 32))  # STAR: kernel CS 0x08, user base
              .wrmsr(0xC0000084, 0x200)  # FMASK: clear IF
              .wrmsr(IA32_LBR_CTL, ctl))
    user = Asm().mov(R.RCX, 2).label("u_top").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX))
    user.branch(Code.JNE_REL32_64, "u_top").label("u_syscall").op(Code.SYSCALL)
    back = Asm().wrmsr(IA32_LBR_CTL, 0).emit(Instruction.create_reg_reg(Code.MOV_R64_RM64, R.R9, R.R11))
    back.print_hex(R.R9).exit(status=0x55)
    return ring3_image(kernel, user, back, Asm().exit(status=0xBAD))


def test_syscall_from_ring3(backend):
    # SDM SYSCALL: RIP := LSTAR, R11 := RFLAGS (0x46 after the loop's last DEC set ZF|PF).
    for ctl in (0, LBR_ALL):
        img = _syscall_guest(ctl)
        result = backend.run(img, machine_config())
        assert result.exit_status == [0x55]
        assert int(result.console[0], 16) & 0xFFFF == 0x46
    s = img.symbols
    assert _live(result.vcpus[0])[0] == (s["u_syscall"], s["back"], 8)


def test_guest_trap_flag_debug_exception_clears_lbren(backend):
    # SDM 17.3.1.4: with TF set by POPFQ, #DB follows the next instruction; ref 2: #DB clears
    # LBREn. KVM's own single-step would swallow that trap while recording.
    handler = Asm().rdmsr(IA32_LBR_CTL).print_hex(R.RAX).print(" ")
    handler.emit(Instruction.create_reg(Code.POP_R64, R.R9)).print_hex(R.R9).exit(status=1)
    a = Asm().lidt().wrmsr(IA32_LBR_CTL, LBR_ALL).op(Code.PUSHFQ)
    a.emit(Instruction.create_mem_u32(Code.OR_RM64_IMM32, MemoryOperand(R.RSP), 0x100))
    a.op(Code.POPFQ).label("after").op(Code.NOPD).label("trap").op(Code.NOPD).exit(status=0)
    img = image(a, {1: handler})
    result = backend.run(img, machine_config())
    assert result.exit_status == [1]
    ctl, rip = (int(x, 16) for x in result.console[0].split())
    assert ctl == LBR_ALL & ~int(LbrCtl.LBREN)
    assert rip == img.symbols["trap"]  # the #DB frame's RIP: after the one instruction


def test_bad_machines_are_clear_vlbr_errors(backend):
    import dataclasses

    import pytest

    from vlbr.errors import VlbrError
    config = machine_config()
    with pytest.raises(VlbrError, match="vCPUs"):
        backend.run(image(Asm().exit(status=0)), dataclasses.replace(config, vcpus=0))
    too_big = image(Asm().exit(status=0))
    too_big = dataclasses.replace(too_big, data=too_big.data + bytes(8 << 20))
    with pytest.raises(VlbrError, match="outside"):
        backend.run(too_big, config)


@pytest.mark.parametrize("recording", ["step", "hybrid"])
def test_max_steps_stops_a_spinning_guest(backend, recording):
    # max_steps counts single-steps and, in hybrid recording, the instructions unicorn ran.
    import dataclasses
    a = Asm().wrmsr(IA32_LBR_CTL, LBR_ALL).label("spin").branch(Code.JMP_REL32_64, "spin")
    config = dataclasses.replace(machine_config(), max_steps=500, kvm_recording=recording)
    result = backend.run(image(a), config)
    assert result.exit_status == [None]
    assert result.stops[0].reason == "step-budget"
    assert result.stats["out_of_budget"]
    assert result.stats["exits"] + result.stats["hybrid_instructions"] == 500


def test_filter_denies_exactly_the_models_msrs(backend):
    # vlbr.arch.msrs: LBR_CTL, DEPTH, LER, 64 FROM/TO/INFO slots, DEBUGCTL, PERF_CAPABILITIES,
    # XSS, PERF_GLOBAL_STATUS(_RESET) belong to the model; IA32_TSC (0x10) stays KVM's.
    from vlbr.backends.kvm.backend import owned_msrs
    from vlbr.vcpu.lbr import ArchLbrVcpu
    model = ArchLbrVcpu(machine_config().lbr)
    owned = owned_msrs(model)
    assert {0x14CE, 0x14CF, 0x1DD, 0x1DE, 0x1E0, 0xDA0, 0x1D9, 0x345} <= owned
    assert {0x1500 + i for i in range(64)} | {0x1600 + i for i in range(64)} <= owned
    assert 0x10 not in owned and all(model.owns(m) for m in owned)
    a = Asm().rdmsr(0x10).rdmsr(0x345).exit(status=0)
    result = backend.run(image(a), machine_config())
    assert result.exit_status == [0] and result.stats["msr_exits"] == 1
