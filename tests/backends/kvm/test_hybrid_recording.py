"""Hybrid recording (backends/kvm/hybrid.py) against the step path on KVM: the same guest run
with MachineConfig.kvm_recording "hybrid" and "step" must leave identical records, LER,
console, exit status and stop, under several LBR_CTL filters and with the records read by
the guest mid-stretch (RDMSR of a record MSR, XSAVES of component 15)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from guest_asm import Asm, R, image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iced_x86 import Code, Instruction, MemoryOperand
from kvm_machine import machine_config
from test_backend import LBR_ALL, _ring3, _syscall_guest

from vlbr.arch.msrs import (IA32_LBR_CTL, IA32_LBR_FROM_IP_BASE, IA32_LBR_INFO_BASE,
                            IA32_LBR_TO_IP_BASE, IA32_XSS, LbrCtl)
from vlbr.backends.kvm import KvmBackend

sys.path.insert(0, str(Path(__file__).parents[1] / "software"))  # the random branchy guests
from test_recording_differential import OPS, build  # noqa: E402

ENABLE = int(LbrCtl.LBREN)
ALL_TYPES = 0x7F0000
CTLS = {
    "os": ENABLE | int(LbrCtl.OS) | ALL_TYPES,
    "usr": ENABLE | int(LbrCtl.USR) | ALL_TYPES,
    "both": LBR_ALL,
    "jcc_only": ENABLE | int(LbrCtl.OS | LbrCtl.USR | LbrCtl.COND),
    "calls_returns": ENABLE | int(LbrCtl.OS | LbrCtl.USR | LbrCtl.NEAR_REL_CALL
                                  | LbrCtl.NEAR_IND_CALL | LbrCtl.NEAR_RET),
    "call_stack": LBR_ALL | int(LbrCtl.CALL_STACK),
}
LER_FROM_IP = 0x1DD


def run_both(img, **config):
    """The guest under both recording modes: {mode: RunResult}."""
    base = dataclasses.replace(machine_config(), **config)
    return {mode: KvmBackend().run(img, dataclasses.replace(base, kvm_recording=mode))
            for mode in ("step", "hybrid")}


def assert_same(results) -> None:
    step, hybrid = results["step"], results["hybrid"]
    assert step.stats["kvm_recording"] == "step"
    assert hybrid.stats["kvm_recording"].startswith("hybrid"), hybrid.stats
    assert hybrid.console == step.console
    assert hybrid.exit_status == step.exit_status
    assert hybrid.stops == step.stops
    for s, h in zip(step.vcpus, hybrid.vcpus):
        assert h.records() == s.records()
        ler = [v.rdmsr(LER_FROM_IP, host_initiated=True) for v in (s, h)]
        assert ler[0] == ler[1]
        assert h.lbr_ctl == s.lbr_ctl


def _call_loop(ctl: int, iterations: int = 40) -> Asm:
    """Calls, returns, an indirect call and a Jcc per iteration, at CPL0."""
    a = Asm().wrmsr(IA32_LBR_CTL, ctl).mov(R.RCX, iterations)
    a.label("top").branch(Code.CALL_REL32_64, "fn")
    a.mov(R.RBX, 0).label("fn_address")
    a.emit(Instruction.create_reg(Code.CALL_RM64, R.RBX))
    a.emit(Instruction.create_reg(Code.DEC_RM64, R.RCX)).branch(Code.JNE_REL32_64, "top")
    a.wrmsr(IA32_LBR_CTL, 0).exit(status=0)
    a.label("fn").op(Code.RETNQ)
    return a


def call_loop(ctl: int, iterations: int = 40):
    """_call_loop with RBX holding fn's address (known once the encoder placed it)."""
    first = image(_call_loop(ctl, iterations))
    a = _call_loop(ctl, iterations)
    a.code[next(i for i, insn in enumerate(a.code) if insn.code == Code.MOV_R64_IMM64
                and insn.op0_register == R.RBX)].set_immediate_u64(1, first.symbols["fn"])
    return image(a)


@pytest.mark.parametrize("name", sorted(CTLS))
def test_loops_record_the_same_under_each_filter(name):
    assert_same(run_both(call_loop(CTLS[name])))


@pytest.mark.parametrize("name", ["os", "usr", "call_stack"])
def test_ring3_and_syscall_guests_record_the_same(name):
    ctl = CTLS[name]
    assert_same(run_both(_ring3(ctl)))
    assert_same(run_both(_syscall_guest(ctl)))


def test_records_read_mid_stretch_by_rdmsr_are_the_same():
    # record 0 and 1 (FROM, TO, INFO) read while recording, between two loops, then printed
    a = Asm().wrmsr(IA32_LBR_CTL, LBR_ALL).mov(R.RCX, 7)
    a.label("l1").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX)).branch(Code.JNE_REL32_64, "l1")
    for base in (IA32_LBR_FROM_IP_BASE, IA32_LBR_TO_IP_BASE, IA32_LBR_INFO_BASE):
        for index in (0, 1):
            a.rdmsr(base + index).emit(Instruction.create_reg_reg(Code.MOV_R64_RM64, R.R9, R.RAX))
            a.print_hex(R.R9).print(" ")
    a.mov(R.RCX, 3).label("l2").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX))
    a.branch(Code.JNE_REL32_64, "l2")
    a.wrmsr(IA32_LBR_CTL, 0).exit(status=0)
    results = run_both(image(a))
    assert_same(results)
    assert len(results["hybrid"].console[0].split()) == 6
    assert results["hybrid"].stats["hybrid_stretches"] > 1


def test_xsaves_of_component_15_mid_stretch_is_the_same():
    # XSAVES of the LBR component while recording; the saved bytes printed: its records
    area = 0x200000
    a = Asm().lidt().wrmsr(IA32_XSS, 1 << 15).wrmsr(IA32_LBR_CTL, LBR_ALL).mov(R.RCX, 9)
    a.label("loop").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX))
    a.branch(Code.JNE_REL32_64, "loop")
    a.mov(R.RAX, 1 << 15).mov(R.RDX, 0).mov(R.RBX, area)
    a.emit(Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.RBX)))
    a.branch(Code.CALL_REL32_64, "fn")
    for offset in range(576, 576 + 40 + 24 * 3, 8):  # header of component 15, 3 records
        a.mov(R.RBX, area + offset)
        a.emit(Instruction.create_reg_mem(Code.MOV_R64_RM64, R.R9, MemoryOperand(R.RBX)))
        a.print_hex(R.R9).print(" ")
    a.wrmsr(IA32_LBR_CTL, 0).exit(status=0)
    a.label("fn").op(Code.RETNQ)
    results = run_both(image(a))
    assert_same(results)
    assert "0000000000000000 " * 8 not in results["hybrid"].console[0]


def test_code_changed_by_kvm_between_stretches_is_retranslated():
    # Each round records a call through `fn`, whose jmp the guest then retargets with
    # LBREn clear (KVM runs that store, not unicorn): the next stretch must see the new jmp.
    def guest(t2: int = 0, fn: int = 0) -> Asm:
        a = Asm().mov(R.R12, 2)
        a.label("round").wrmsr(IA32_LBR_CTL, LBR_ALL).branch(Code.CALL_REL32_64, "fn")
        a.wrmsr(IA32_LBR_CTL, 0)
        a.mov(R.RBX, fn + 1).mov(R.RAX, (t2 - (fn + 2)) & 0xFF)  # the encoder made it jmp short
        a.emit(Instruction.create_mem_reg(Code.MOV_RM8_R8, MemoryOperand(R.RBX), R.AL))
        a.emit(Instruction.create_reg(Code.DEC_RM64, R.R12)).branch(Code.JNE_REL32_64, "round")
        a.exit(status=0)
        a.label("fn").branch(Code.JMP_REL32_64, "t1")
        a.label("t1").op(Code.RETNQ)
        a.label("t2").op(Code.NOPD).op(Code.RETNQ)
        return a
    first = image(guest())
    img = image(guest(first.symbols["t2"], first.symbols["fn"]))
    assert img.symbols == first.symbols
    assert img.data[img.symbols["fn"] - img.load_address] == 0xEB  # jmp rel8
    results = run_both(img)
    assert_same(results)
    tos = {t for _, t, _ in results["hybrid"].vcpus[0].records()}
    assert img.symbols["t2"] in tos


def test_python_block_hook_where_the_native_ring_is_missing(monkeypatch):
    from vlbr.backends.kvm import hybrid
    monkeypatch.setattr(hybrid.native, "load", lambda name="block_ring": None)
    results = run_both(call_loop(CTLS["both"], 10))
    assert results["hybrid"].stats["kvm_recording"] == "hybrid-python"
    assert_same(results)


def test_step_path_where_the_hybrid_cannot_start(monkeypatch):
    from vlbr.backends.kvm import hybrid

    def unavailable(*args, **kwargs):
        raise RuntimeError("no unicorn here")
    monkeypatch.setattr(hybrid, "HybridCpu", unavailable)
    img = call_loop(CTLS["both"], 10)
    config = dataclasses.replace(machine_config(), kvm_recording="hybrid")
    result = KvmBackend().run(img, config)
    assert result.stats["kvm_recording"] == "step"
    assert "no unicorn here" in result.stats["hybrid_unavailable"]
    assert result.vcpus[0].records() == run_both(img)["step"].vcpus[0].records()


def test_unknown_recording_mode_is_an_error():
    from vlbr.errors import VlbrError
    config = dataclasses.replace(machine_config(), kvm_recording="fast")
    with pytest.raises(VlbrError, match="hybrid, step"):
        KvmBackend().run(image(Asm().exit(status=0)), config)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=1, max_size=25), st.integers(-4, 4), st.sampled_from(sorted(CTLS)))
def test_random_branchy_guests_record_the_same(ops, eax, name):
    assert_same(run_both(build(ops, eax, CTLS[name]).assemble()))


def _ring3_branchy(ctl: int, ending: Code):
    """Ring 3 (on unicorn under quirk user_single_step_fails): calls, returns, an indirect
    jump, Jcc to their own fall-through taken and not, a CPUID, then `ending` leaves ring 3
    (INT 0x80 back to the kernel, or UD2's #UD to its fault handler)."""
    from guest_asm import ring3_image
    kernel = Asm().wrmsr(IA32_LBR_CTL, ctl)
    user = Asm().mov(R.R8, 4).mov(R.RCX, 4).label("u_top").branch(Code.CALL_REL32_64, "u_fn")
    user.emit(Instruction.create_reg_reg(Code.TEST_RM64_R64, R.RCX, R.RCX))
    user.branch(Code.JE_REL8_64, "u_next").label("u_next")  # to itself +2: not taken
    user.emit(Instruction.create_reg_reg(Code.XOR_R32_RM32, R.EAX, R.EAX))
    user.branch(Code.JE_REL8_64, "u_after").label("u_after")  # taken (ZF set)
    user.mov(R.RAX, 0).mov(R.RCX, 0).op(Code.CPUID).mov(R.RCX, 1)
    user.emit(Instruction.create_reg(Code.DEC_RM64, R.R8)).branch(Code.JNE_REL32_64, "u_top")
    user.emit(Instruction.create_u32(Code.INT_IMM8, 0x80) if ending == Code.INT_IMM8
              else Instruction.create(ending))
    user.label("u_fn").op(Code.RETNQ)
    back = Asm().wrmsr(IA32_LBR_CTL, 0).exit(status=0x80)
    fault = Asm().wrmsr(IA32_LBR_CTL, 0).exit(status=0xBAD)
    return ring3_image(kernel, user, back, fault)


@pytest.mark.parametrize("ending", [Code.INT_IMM8, Code.UD2])
@pytest.mark.parametrize("name", ["usr", "both", "call_stack"])
def test_ring3_excursions_record_the_same(name, ending):
    img = _ring3_branchy(CTLS[name], ending)
    results = run_both(img)
    assert_same(results)
    after = img.symbols["u_after"]
    records = results["hybrid"].vcpus[0].records()
    assert any(r[:2] == (after - 2, after) for r in records) or name == "call_stack"
    assert results["hybrid"].stats["ring3_excursions"] == 1
    assert results["hybrid"].exit_status == [0x80 if ending == Code.INT_IMM8 else 0xBAD]


def _cross_page(ctl: int, iterations: int = 30):
    """Calls to a function on another page (its first fetch faults in unicorn, which scans
    that page and goes on mid-stretch), a Jcc back over the page edge, and a near return."""
    far = 0x102000  # image()'s handler slot 16: the page after next
    a = Asm().wrmsr(IA32_LBR_CTL, ctl).mov(R.RCX, iterations).mov(R.RBX, far)
    a.label("top").emit(Instruction.create_reg(Code.CALL_RM64, R.RBX))
    a.emit(Instruction.create_reg(Code.DEC_RM64, R.RCX)).branch(Code.JNE_REL32_64, "top")
    a.wrmsr(IA32_LBR_CTL, 0).exit(status=0)
    fn = Asm().emit(Instruction.create_reg(Code.INC_RM64, R.RDX)).op(Code.RETNQ)
    return image(a, {16: fn})


@pytest.mark.parametrize("ring", [16, 64])
def test_many_pieces_per_stretch_record_the_same(monkeypatch, ring):
    # A tiny block ring ends pieces every few instructions: at count stops, at page scans
    # (fetch faults) and, in ring 3, around the Jcc decided from the flags.
    from vlbr.backends.kvm import hybrid
    monkeypatch.setattr(hybrid, "RING", ring)
    for img in (_cross_page(CTLS["both"], 3), _cross_page(CTLS["both"]),
                _cross_page(CTLS["call_stack"]),
                call_loop(CTLS["both"], 25), _ring3_branchy(CTLS["both"], Code.INT_IMM8)):
        assert_same(run_both(img))


def test_a_fault_unicorn_raises_is_run_by_kvm():
    # The loop's page is unmapped behind unicorn's back (a PDE cleared, CR3 reloaded by
    # KVM): unicorn faults on the load, KVM runs it and delivers the #PF, which the step path
    # records; the stretch must not start again at the faulting instruction.
    pde = 0x3000 + 8 * 2  # Guest ABI: PD at 0x3000, 2 MiB pages; entry 2 maps 0x400000
    handler = Asm().emit(Instruction.create_reg_reg(Code.MOV_R64_CR, R.RAX, R.CR2))
    handler.emit(Instruction.create_reg_reg(Code.MOV_R64_RM64, R.R9, R.RAX)).print_hex(R.R9)
    handler.wrmsr(IA32_LBR_CTL, 0).exit(status=14)
    a = Asm().lidt().wrmsr(IA32_LBR_CTL, LBR_ALL).mov(R.RCX, 5)
    a.label("l").emit(Instruction.create_reg(Code.DEC_RM64, R.RCX)).branch(Code.JNE_REL32_64, "l")
    a.mov(R.RBX, pde).mov(R.RAX, 0)
    a.emit(Instruction.create_mem_reg(Code.MOV_RM64_R64, MemoryOperand(R.RBX), R.RAX))
    a.emit(Instruction.create_reg_reg(Code.MOV_R64_CR, R.RAX, R.CR3))
    a.emit(Instruction.create_reg_reg(Code.MOV_CR_R64, R.CR3, R.RAX))
    a.mov(R.RBX, 0x400000).label("load")
    a.emit(Instruction.create_reg_mem(Code.MOV_R64_RM64, R.RAX, MemoryOperand(R.RBX)))
    a.exit(status=0)
    results = run_both(image(a, {14: handler}))
    assert_same(results)
    assert results["hybrid"].exit_status == [14]
    assert int(results["hybrid"].console[0], 16) == 0x400000


VEX_GUEST = r'''#include "runtime.h"
static void xsetbv0(u64 v)
{
    __asm__ volatile("xsetbv" :: "c"(0), "a"((u32)v), "d"((u32)(v >> 32)));
}
int guest_main(int cpu, int ncpus) {
    u32 acc = 1, v = 0;
    if (!(cpuid(0xD, 0).eax & 4)) { rt_printf("no avx\n"); return 0; }
    xsetbv0(7);
    wrmsr(0x14ce, 0x7f0007);
    for (int i = 0; i < 20; i++) {
        __asm__ volatile("vmovd xmm2, %1\n vpaddd xmm3, xmm2, xmm2\n vmovd %0, xmm3"
                         : "=r"(v) : "r"(acc));
        if (v & 4) acc += v; else acc ^= 0x1234;
    }
    wrmsr(0x14ce, 0);
    xsetbv0(3);
    rt_printf("acc %x\n", acc);
    return 0;
}
'''


def built(tmp_path, name: str, source: str):
    """A C guest built with the system gcc (skipped where there is none)."""
    import shutil
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    from vlbr.guest.build import build_guest
    path = tmp_path / name
    path.write_text(source)
    return build_guest(path)


def test_vex_instructions_are_left_to_kvm(tmp_path):
    # AVX state beyond XMM lives in KVM's XSAVE image only: VEX-encoded instructions stop a
    # stretch, so both modes end the same way (here KVM cannot single-step them at all).
    assert_same(run_both(built(tmp_path, "vex_recording.c", VEX_GUEST)))


SSE_GUEST = r'''#include "runtime.h"
static u8 area[4096] __attribute__((aligned(64)));
int guest_main(int cpu, int ncpus) {
    u32 acc = 7, *xmm2 = (u32 *)(area + 160 + 2 * 16);   /* the legacy region's XMM2 */
    *(u16 *)area = 0x37f;                               /* FCW, MXCSR: valid */
    *(u32 *)(area + 24) = 0x1f80;
    *(u64 *)(area + 512) = 3;                           /* XSTATE_BV: x87 | SSE */
    *(u64 *)(area + 520) = (1ull << 63) | 3;            /* compacted */
    for (int i = 0; i < 4; i++) xmm2[i] = 0x11111111u * (i + 1);
    u32 restored = xrstors_safe(area, 3);               /* vlbr's, into KVM's image */
    wrmsr(0x14ce, 0x7f0007);
    for (int i = 0; i < 8; i++) {                       /* XMM2's top half survives */
        __asm__ volatile("movd xmm1, %0\n pshufd xmm1, xmm1, 0x1b\n paddd xmm2, xmm1\n"
                         "pslldq xmm2, 1" :: "r"(acc + i));
        if (acc & 1) acc = acc * 3 + 1; else acc >>= 1;
    }
    wrmsr(0x14ce, 0);
    for (int i = 0; i < 4096; i++) area[i] = 0;
    u32 saved = xsaves_safe(area, 3);                   /* from KVM's image again */
    rt_printf("%x %x %x %x %x %x %x\n", restored, saved, acc, xmm2[0], xmm2[1], xmm2[2], xmm2[3]);
    return 0;
}
'''


def test_sse_state_goes_both_ways_like_the_software_cpu(tmp_path):
    # x87/SSE state moves KVM -> unicorn -> KVM around each stretch: XMM2 set by an XRSTORS
    # (vlbr's, into KVM's XSAVE image), changed by SSE code on unicorn, read back by an
    # XSAVES. This KVM runs no SSE instruction itself, so the reference is the software CPU.
    from test_guests import _software

    from vlbr.guest.conformance import machine_for
    img = built(tmp_path, "sse_recording.c", SSE_GUEST)
    kvm = KvmBackend().run(img, dataclasses.replace(machine_for("kvm"), kvm_recording="hybrid"))
    software = _software().run(img, machine_for("software"))
    assert kvm.stops[0].reason == software.stops[0].reason == "exit"
    assert kvm.console == software.console
    assert kvm.vcpus[0].records() == software.vcpus[0].records()
