"""vlbr.x86: descriptors and 64-bit event delivery against the SDM (vol. 3A 6.14, 6.12.1.1,
INT n), on a plain in-memory CPU so every rule is checked without a backend."""

from __future__ import annotations

import struct

import pytest

from vlbr.arch.x86 import RFLAGS_IF, RFLAGS_RF, RFLAGS_TF, VECTOR_GP, VECTOR_NP
from vlbr.backends import layout
from vlbr.x86.descriptors import GATE_INTERRUPT, GATE_TRAP, Gate, SegmentDescriptor
from vlbr.x86.events import DeliveryFailed, Interrupted, deliver, handler_of

IDT, GDT, TSS = 0x10000, 0x4000, 0x4100
RSP0, IST2 = 0x9000, 0xA000


def gate(offset: int, type_: int = GATE_INTERRUPT, dpl: int = 0, ist: int = 0,
         selector: int = layout.SEL_KERNEL_CODE, present: bool = True) -> bytes:
    return Gate(offset, selector, ist, type_, dpl, present).encode()


class Cpu:
    """An EventCpu over a bytearray: the Guest ABI GDT and TSS, an IDT of our own."""

    def __init__(self, cpl: int = 0, rsp: int = 0x8008, rflags: int = 0x202 | RFLAGS_TF):
        self.mem = bytearray(0x20000)
        self.mem[GDT:GDT + 56] = layout.gdt_bytes(0)
        struct.pack_into("<Q", self.mem, TSS + 4, RSP0)
        struct.pack_into("<Q", self.mem, TSS + 0x24 + 8, IST2)
        cs = layout.SEL_USER_CODE if cpl == 3 else layout.SEL_KERNEL_CODE
        ss = layout.SEL_USER_DATA if cpl == 3 else layout.SEL_KERNEL_DATA
        self.state = Interrupted(ss, rsp, rflags, cs, cpl)
        self.entered = None

    def set_gate(self, vector: int, raw: bytes) -> None:
        self.mem[IDT + 16 * vector:IDT + 16 * vector + 16] = raw

    def read(self, address, size):
        if address + size > len(self.mem):
            raise DeliveryFailed("outside")
        return bytes(self.mem[address:address + size])

    def write(self, address, data):
        self.read(address, len(data))
        self.mem[address:address + len(data)] = data

    def tables(self):
        return (IDT, 256 * 16 - 1), (GDT, 55), TSS

    def interrupted(self):
        return self.state

    def enter(self, handler, rsp, rflags, cs_selector, cs, cpl, null_ss):
        self.entered = dict(handler=handler, rsp=rsp, rflags=rflags, cs=cs_selector, cpl=cpl,
                            null_ss=null_ss)

    def frame(self, words: int) -> tuple[int, ...]:
        return struct.unpack_from(f"<{words}Q", self.mem, self.entered["rsp"])


def test_same_privilege_frame_on_the_current_stack_aligned():
    # 6.14.2: the stack is aligned to 16 bytes, then SS, RSP, RFLAGS, CS, RIP, error code.
    cpu = Cpu(rsp=0x8008)
    cpu.set_gate(14, gate(0x123456789A))
    done = deliver(cpu, 14, return_ip=0x1111, error_code=0x6)
    assert (done.vector, done.handler, done.cpl) == (14, 0x123456789A, 0)
    assert cpu.entered["rsp"] == 0x8000 - 48 and not cpu.entered["null_ss"]
    assert cpu.frame(6) == (0x6, 0x1111, 0x08, 0x202 | RFLAGS_TF, 0x8008, 0x10)


def test_flags_interrupt_gate_clears_if_trap_gate_keeps_it():
    # 6.12.1.3: both clear TF, NT, RF, VM; an interrupt gate also clears IF.
    for type_, if_after in ((GATE_INTERRUPT, 0), (GATE_TRAP, RFLAGS_IF)):
        cpu = Cpu(rflags=0x202 | RFLAGS_TF | RFLAGS_RF)
        cpu.set_gate(3, gate(0x5000, type_))
        deliver(cpu, 3, 0x1111)
        assert cpu.entered["rflags"] == 0x2 | if_after


def test_privilege_change_uses_rsp0_and_a_null_ss():
    cpu = Cpu(cpl=3, rsp=0x7777)
    cpu.set_gate(13, gate(0x5000))
    done = deliver(cpu, 13, 0x2222, error_code=0)
    assert done.cpl == 0 and cpu.entered["null_ss"] and cpu.entered["cs"] == 0x08
    assert cpu.entered["rsp"] == RSP0 - 48
    assert cpu.frame(6)[2:] == (0x23, 0x202 | RFLAGS_TF, 0x7777, 0x1B)  # ring 3 CS .. SS


def test_ist_stack_wins_even_without_a_privilege_change():
    cpu = Cpu()
    cpu.set_gate(2, gate(0x5000, ist=2))
    deliver(cpu, 2, 0x3333)
    assert cpu.entered["rsp"] == IST2 - 40


def test_int_n_through_a_lower_dpl_gate_is_gp_at_the_int():
    # INT n (SDM vol. 2A): gate DPL < CPL -> #GP(vector * 8 + 2 | EXT=0), RIP of the INT.
    cpu = Cpu(cpl=3)
    cpu.set_gate(0x81, gate(0x6000, dpl=0))
    cpu.set_gate(VECTOR_GP, gate(0x7000))
    done = deliver(cpu, 0x81, return_ip=0x4002, software_ip=0x4000)
    assert (done.vector, done.handler, done.error_code) == (VECTOR_GP, 0x7000, 0x81 * 8 + 2)
    assert cpu.frame(2) == (0x81 * 8 + 2, 0x4000)
    cpu.set_gate(0x80, gate(0x6100, dpl=3))
    assert deliver(cpu, 0x80, 0x4002, software_ip=0x4000).handler == 0x6100


def test_a_missing_gate_is_np_an_odd_gate_gp_with_the_idt_error_code():
    # SDM 6.13: error code = vector * 8 | IDT (bit 1) | EXT (bit 0, set for exceptions and
    # external events, clear for INT n).
    for raw, fault in ((gate(0x5000, present=False), 11), (gate(0x5000, type_=0xC), 13)):
        cpu = Cpu()
        cpu.set_gate(6, raw)
        cpu.set_gate(fault, gate(0x7700))
        done = deliver(cpu, 6, 0x1000)  # #UD is benign: its gate's fault is delivered
        assert (done.vector, done.error_code, done.handler) == (fault, 6 * 8 | 3, 0x7700)
    cpu = Cpu()
    cpu.set_gate(11, gate(0x7700))
    cpu.set_gate(0x90, gate(0x5000, present=False))
    assert deliver(cpu, 0x90, 0x1002, software_ip=0x1000).error_code == 0x90 * 8 | 2


def test_int_n_checks_the_gate_type_then_its_dpl_then_present():
    # SDM vol. 2 INT n, IA-32e mode: a descriptor of no interrupt/trap type (a zero gate) is
    # #GP before anything else; a software interrupt through a lower DPL is #GP before P is
    # looked at; only then #NP (QEMU target/i386 do_interrupt64 in the same order).
    for raw, cpl, fault in ((bytes(16), 0, VECTOR_GP),
                            (gate(0x5000, dpl=0, present=False), 3, VECTOR_GP),
                            (gate(0x5000, dpl=3, present=False), 3, VECTOR_NP)):
        cpu = Cpu(cpl=cpl)
        cpu.set_gate(0x91, raw)
        cpu.set_gate(fault, gate(0x7700))
        done = deliver(cpu, 0x91, 0x1002, software_ip=0x1000)
        assert (done.vector, done.error_code, done.handler) == (fault, 0x91 * 8 | 2, 0x7700)


def test_a_gate_encodes_to_the_sdm_layout_and_back():
    # SDM figure 6-8: offset 15:0, selector, IST, type | DPL << 5 | P << 7, offset 31:16, 63:32
    raw = gate(0x1122_3344_5566_7788, GATE_TRAP, dpl=3, ist=2, selector=0x10)
    assert raw == bytes.fromhex("8877 1000 02 ef 6655 44332211 00000000".replace(" ", ""))
    assert Gate.decode(raw) == Gate(0x1122_3344_5566_7788, 0x10, 2, GATE_TRAP, 3, True)


def test_a_contributory_fault_on_a_fault_is_df_and_then_a_shutdown():
    # SDM table 6-5: #GP whose gate is zero raises #GP, contributory on contributory: #DF.
    cpu = Cpu()
    cpu.set_gate(8, gate(0x8800))
    done = deliver(cpu, 13, 0x1000, error_code=0)
    assert (done.vector, done.error_code, done.handler) == (8, 0, 0x8800)
    with pytest.raises(DeliveryFailed, match="vector 14: not a 64-bit.*then.*shutdown"):
        deliver(Cpu(), 14, 0x1000, error_code=2)  # #PF, then #GP -> #DF, then no #DF gate
    assert handler_of(Cpu(), 14) is None


def test_a_gate_selector_outside_the_gdt_fails_with_the_reason():
    cpu = Cpu()
    cpu.set_gate(6, gate(0x5000, selector=0x1000))
    with pytest.raises(DeliveryFailed, match="outside the GDT"):
        deliver(cpu, 6, 0x1000)


def test_guest_abi_gdt_decodes_as_its_segments():
    gdt = layout.gdt_bytes(0)
    code = SegmentDescriptor.decode(gdt[8:16])
    assert code.is_long_code and code.dpl == 0 and code.limit == 0xFFFFFFFF
    user = SegmentDescriptor.decode(gdt[0x20:0x28])
    assert user.is_long_code and user.dpl == 3
    tss = SegmentDescriptor.decode(gdt[0x28:0x38])
    assert (tss.s, tss.base) == (0, layout.tss_address(0))
    assert Gate.decode(gate(0xFFFF_8000_1234_5678, dpl=3, ist=5)) == Gate(
        0xFFFF_8000_1234_5678, 0x08, 5, GATE_INTERRUPT, 3, True)
