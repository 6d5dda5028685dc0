"""Tiny guests for the software backend tests, encoded with iced-x86's BlockEncoder.

Asm is a two-pass assembler: pass 1 lays out the code with every label at 0 to learn the
addresses (all branch forms are rel32 and immediates imm64, so sizes do not depend on the
values), pass 2 encodes with the real addresses. Data lives on the page after the code.
"""

from __future__ import annotations

import struct

from iced_x86 import BlockEncoder, Code, Encoder, Instruction, MemoryOperand
from iced_x86 import Register as R

from vlbr.backends.base import IMAGE_BASE, PORT_CONSOLE, PORT_EXIT, PORT_YIELD
from vlbr.backends.image import GuestImage

CODE_PAGES = 4
DATA = IMAGE_BASE + CODE_PAGES * 0x1000  # scratch data page the tests read back
IDT = DATA + 0x800
IDTR = DATA + 0x7F0


def mem(address: int) -> MemoryOperand:
    return MemoryOperand(R.NONE, displ=address, displ_size=4)


class Asm:
    def __init__(self, base: int = IMAGE_BASE):
        self.base = base
        self.ops = []  # callables: labels dict -> Instruction, or ("label", name)
        self.idt: dict[int, tuple[str, int]] = {}  # vector -> (handler label, dpl)
        self.data: dict[int, bytes] = {}

    # -- building ---------------------------------------------------------------------------
    def label(self, name):
        self.ops.append(("label", name))

    def emit(self, make):
        self.ops.append(make if callable(make) else (lambda _l, i=make: i))

    def raw(self, code, *args, kinds=None):
        """One instruction; kinds names its operands: r register, i immediate, m memory."""
        kinds = kinds or _default_kinds(args)
        factory = "create" + "".join("_" + _KIND[k] for k in kinds)
        self.emit(lambda _l: getattr(Instruction, factory)(code, *args))

    def mov(self, reg, value):
        self.emit(lambda l: Instruction.create_reg_u64(
            Code.MOV_R64_IMM64, reg, l.get(value, 0) if isinstance(value, str) else value))

    def branch(self, code, target):
        self.emit(lambda l: Instruction.create_branch(code, l.get(target, 0)))

    def jmp(self, target):
        self.branch(Code.JMP_REL32_64, target)

    def call(self, target):
        self.branch(Code.CALL_REL32_64, target)

    def ret(self):
        self.raw(Code.RETNQ)

    def putc(self, text: str):
        for ch in text:
            self.raw(Code.MOV_R8_IMM8, R.AL, ord(ch), kinds="ri")
            self.raw(Code.OUT_IMM8_AL, PORT_CONSOLE, R.AL, kinds="ir")

    def exit(self, status=None):
        if status is not None:
            self.raw(Code.MOV_R32_IMM32, R.EAX, status, kinds="ri")
        self.raw(Code.MOV_R32_IMM32, R.EDX, PORT_EXIT, kinds="ri")
        self.raw(Code.OUT_DX_EAX, R.DX, R.EAX, kinds="rr")
        self.label(f"_hang{len(self.ops)}")
        self.raw(Code.HLT)

    def yield_(self):
        self.raw(Code.MOV_R32_IMM32, R.EDX, PORT_YIELD, kinds="ri")
        self.raw(Code.OUT_DX_AL, R.DX, R.AL, kinds="rr")

    def wrmsr(self, msr, value, label=None):
        self.raw(Code.MOV_R32_IMM32, R.ECX, msr, kinds="ri")
        self.raw(Code.MOV_R32_IMM32, R.EAX, value & 0xFFFFFFFF, kinds="ri")
        self.raw(Code.MOV_R32_IMM32, R.EDX, value >> 32, kinds="ri")
        if label:
            self.label(label)
        self.raw(Code.WRMSR)

    def rdmsr(self, msr, label=None):
        self.raw(Code.MOV_R32_IMM32, R.ECX, msr, kinds="ri")
        if label:
            self.label(label)
        self.raw(Code.RDMSR)

    def store(self, offset, reg=R.RAX):
        self.raw(Code.MOV_RM64_R64, mem(DATA + offset), reg, kinds="mr")

    def lidt(self):
        self.raw(Code.LIDT_M1664, mem(IDTR), kinds="m")

    def handler(self, vector, label, dpl=0):
        self.idt[vector] = (label, dpl)

    # -- output -----------------------------------------------------------------------------
    def _instructions(self, labels):
        out, names = [], []
        for op in self.ops:
            if isinstance(op, tuple):
                names.append(op[1])
            else:
                out.append((op(labels), names))
                names = []
        return out, names

    def assemble(self, name="test") -> GuestImage:
        labels: dict[str, int] = {}
        items, tail = self._instructions({})
        ip, enc = self.base, Encoder(64)
        for insn, names in items:
            for n in names:
                if n in labels:
                    raise ValueError(f"label {n!r} defined twice")
                labels[n] = ip
            ip += enc.encode(insn, ip)
        for n in tail:
            if n in labels:
                raise ValueError(f"label {n!r} defined twice")
            labels[n] = ip
        items, _ = self._instructions(labels)
        block = BlockEncoder(64, False)
        for insn, _ in items:
            block.add(insn)
        code = block.encode(self.base)
        assert len(code) == ip - self.base <= CODE_PAGES * 0x1000
        data = bytearray(0x1000)
        for vector, (label, dpl) in self.idt.items():
            target = labels[label]
            gate = struct.pack("<HHBBHII", target & 0xFFFF, 0x08, 0, 0x8E | dpl << 5,
                               (target >> 16) & 0xFFFF, target >> 32, 0)
            data[0x800 + vector * 16: 0x800 + vector * 16 + 16] = gate
        data[0x7F0:0x7FA] = struct.pack("<HQ", 256 * 16 - 1, IDT)
        for offset, blob in self.data.items():
            data[offset:offset + len(blob)] = blob
        image = code.ljust(CODE_PAGES * 0x1000, b"\x90") + bytes(data)
        return GuestImage(image, self.base, self.base, labels, name)


_KIND = {"r": "reg", "i": "u32", "m": "mem", "I": "i32"}


def _default_kinds(args) -> str:
    if args:
        raise ValueError("say kinds= for instructions with operands")
    return ""
