"""Tiny guests for the KVM backend tests, encoded with iced-x86's BlockEncoder.

`Asm` collects instructions, resolves labels (iced's convention: a branch targets the label id
that a later instruction carries as its ip) and reports every label's final address, so tests
compare recorded branches with addresses the encoder itself produced.
"""

from __future__ import annotations

from iced_x86 import BlockEncoder, Code, Decoder, Instruction, MemoryOperand, Register as R

from vlbr.backends.image import GuestImage

IMAGE_BASE = 0x100000


def Image(data: bytes, load_address: int = IMAGE_BASE, entry: int = IMAGE_BASE,
          symbols: dict[str, int] | None = None) -> GuestImage:
    """A vlbr.guest GuestImage of iced-encoded code."""
    return GuestImage(bytes(data), load_address, entry, dict(symbols or {}), "asm")


class Asm:
    def __init__(self) -> None:
        self.code: list[Instruction] = []
        self._labels: dict[str, int] = {}
        self._pending: list[str] = []
        self._owner: dict[int, str] = {}
        self._placed: list[tuple[str, int]] = []  # (label, instruction index)

    # --- labels ---------------------------------------------------------------------------
    def _id(self, name: str) -> int:
        return self._labels.setdefault(name, 0x1000 + len(self._labels))

    def label(self, name: str) -> "Asm":
        self._pending.append(name)
        return self

    def emit(self, instr: Instruction) -> "Asm":
        if self._pending:
            instr.ip = self._id(self._pending[0])
            for name in self._pending:
                self._labels[name] = instr.ip
                self._placed.append((name, len(self.code)))
            self._pending.clear()
        self.code.append(instr)
        return self

    def branch(self, code: Code, target: str) -> "Asm":
        return self.emit(Instruction.create_branch(code, self._id(target)))

    # --- a few instructions ---------------------------------------------------------------
    def mov(self, reg, imm: int) -> "Asm":
        return self.emit(Instruction.create_reg_u64(Code.MOV_R64_IMM64, reg, imm))

    def out_byte(self, port: int, value: int) -> "Asm":
        self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EAX, value))
        return self.emit(Instruction.create_u32_reg(Code.OUT_IMM8_AL, port, R.AL))

    def print(self, text: str) -> "Asm":
        for ch in text.encode():
            self.out_byte(0xE9, ch)
        return self

    def exit(self, status_reg=None, status: int = 0) -> "Asm":
        if status_reg is None:
            self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EAX, status))
        elif status_reg != R.EAX:
            self.emit(Instruction.create_reg_reg(Code.MOV_R32_RM32, R.EAX, status_reg))
        self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EDX, 0xF4))
        return self.emit(Instruction.create_reg_reg(Code.OUT_DX_EAX, R.DX, R.EAX))

    def yield_(self) -> "Asm":
        return self.out_byte(0xF5, 0)

    def op(self, code: Code) -> "Asm":
        return self.emit(Instruction.create(code))

    def rdmsr(self, msr: int) -> "Asm":
        self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.ECX, msr))
        return self.op(Code.RDMSR)

    def wrmsr(self, msr: int, value: int) -> "Asm":
        self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.ECX, msr))
        self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EAX, value & 0xFFFFFFFF))
        self.emit(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EDX, value >> 32))
        return self.op(Code.WRMSR)

    def print_hex(self, reg) -> "Asm":
        """Print a 64-bit register as 16 hex digits (clobbers RAX, RBX, RDX, R8)."""
        n = len(self.code)
        self.emit(Instruction.create_reg_reg(Code.MOV_R64_RM64, R.RDX, reg))
        self.mov(R.R8, 16)
        self.label(f"hex{n}")
        self.emit(Instruction.create_reg_u32(Code.ROL_RM64_IMM8, R.RDX, 4))
        self.emit(Instruction.create_reg_reg(Code.MOV_R64_RM64, R.RBX, R.RDX))
        self.emit(Instruction.create_reg_u32(Code.AND_RM64_IMM8, R.RBX, 0xF))
        self.emit(Instruction.create_reg_u32(Code.CMP_RM64_IMM8, R.RBX, 10))
        self.branch(Code.JB_REL8_64, f"digit{n}")
        self.emit(Instruction.create_reg_u32(Code.ADD_RM64_IMM8, R.RBX, ord("a") - 10 - ord("0")))
        self.label(f"digit{n}")
        self.emit(Instruction.create_reg_u32(Code.ADD_RM64_IMM8, R.RBX, ord("0")))
        self.emit(Instruction.create_reg_reg(Code.MOV_R32_RM32, R.EAX, R.EBX))
        self.emit(Instruction.create_u32_reg(Code.OUT_IMM8_AL, 0xE9, R.AL))
        self.emit(Instruction.create_reg(Code.DEC_RM64, R.R8))
        self.branch(Code.JNE_REL8_64, f"hex{n}")
        return self

    def lidt(self, address: int | None = None) -> "Asm":
        self.mov(R.RAX, IDTR_ADDRESS if address is None else address)
        return self.emit(Instruction.create_mem(Code.LIDT_M1664, MemoryOperand(R.RAX)))

    # --- encoding -------------------------------------------------------------------------
    def assemble(self, base: int = IMAGE_BASE) -> tuple[bytes, dict[str, int]]:
        encoder = BlockEncoder(64)
        encoder.add_many(self.code)
        data = encoder.encode(base)
        decoded = list(Decoder(64, data, ip=base))
        assert len(decoded) == len(self.code)
        return data, {name: decoded[i].ip for name, i in self._placed}


def idt_bytes(handlers: dict[int, int], vectors: int = 32) -> bytes:
    """A 64-bit IDT: interrupt gates (type 0xE, DPL0, selector 0x08) for each vector given."""
    out = bytearray(16 * vectors)
    for vector, offset in handlers.items():
        low = ((offset & 0xFFFF) | 0x08 << 16 | 0x8E << 40 | ((offset >> 16) & 0xFFFF) << 48)
        out[16 * vector:16 * vector + 16] = low.to_bytes(8, "little") + (offset >> 32).to_bytes(
            8, "little")
    return bytes(out)


def image(main: Asm, handlers: dict[int, Asm] | None = None, data: dict[int, bytes] | None = None
          ) -> Image:
    """Main code at 0x100000, handler n at 0x101000 + n*0x100, an IDT at 0x103000 (lidt'ed by
    the guest if it wants it), extra data at the given offsets from the base."""
    blob = bytearray(0x4000)
    code, symbols = main.assemble(IMAGE_BASE)
    assert len(code) < 0x1000
    blob[: len(code)] = code
    gates = {}
    for vector, asm in (handlers or {}).items():
        at = IMAGE_BASE + 0x1000 + vector * 0x100
        hcode, hsyms = asm.assemble(at)
        blob[at - IMAGE_BASE: at - IMAGE_BASE + len(hcode)] = hcode
        gates[vector] = at
        symbols.update({f"{name}": addr for name, addr in hsyms.items()})
        symbols[f"handler{vector}"] = at
    blob[0x3000:0x3000 + 512] = idt_bytes(gates)
    blob[0x3200:0x3200 + 10] = IDT_LIMIT.to_bytes(2, "little") + IDT_ADDRESS.to_bytes(8, "little")
    symbols["idt"] = IDT_ADDRESS
    for offset, raw in (data or {}).items():
        blob[offset:offset + len(raw)] = raw
    return Image(bytes(blob), symbols=symbols)


IDT_ADDRESS = IMAGE_BASE + 0x3000
IDT_LIMIT = 32 * 16 - 1
IDTR_ADDRESS = IMAGE_BASE + 0x3200  # the pseudo-descriptor `lidt` reads


def gate(offset: int, dpl: int = 0) -> bytes:
    """A 64-bit interrupt gate to kernel code 0x08."""
    low = ((offset & 0xFFFF) | 0x08 << 16 | (0x8E | dpl << 5) << 40 | ((offset >> 16) & 0xFFFF) << 48)
    return low.to_bytes(8, "little") + (offset >> 32).to_bytes(8, "little")


USER_CODE = IMAGE_BASE + 0x2000
USER_STACK = 0x600000
RETURN_VECTOR = 0x80


def ring3_image(kernel_prologue: Asm, user: Asm, back: Asm, fault: Asm) -> Image:
    """Kernel: prologue, then IRETQ to `user` at CPL3 (CS 0x23, SS 0x1B); `user` returns with
    INT 0x80 (a DPL3 gate) to `back`; #UD/#GP/#PF go to `fault`. Symbols of each part kept."""
    a = kernel_prologue
    a.mov(R.RAX, IMAGE_BASE + 0x4000).emit(Instruction.create_mem(Code.LIDT_M1664, MemoryOperand(R.RAX)))
    for value in (0x1B, USER_STACK, 0x2, 0x23, USER_CODE):
        a.mov(R.RAX, value).emit(Instruction.create_reg(Code.PUSH_R64, R.RAX))
    a.label("iretq").op(Code.IRETQ)
    blob = bytearray(0x4010)
    symbols = {}
    for at, part in ((IMAGE_BASE, a), (USER_CODE, user), (IMAGE_BASE + 0x2800, back),
                     (IMAGE_BASE + 0x2A00, fault)):
        code, syms = part.assemble(at)
        blob[at - IMAGE_BASE:at - IMAGE_BASE + len(code)] = code
        symbols.update(syms)
    idt = bytearray(256 * 16)
    idt[RETURN_VECTOR * 16:RETURN_VECTOR * 16 + 16] = gate(IMAGE_BASE + 0x2800, dpl=3)
    for vector in (6, 13, 14):
        idt[vector * 16:vector * 16 + 16] = gate(IMAGE_BASE + 0x2A00)
    blob[0x3000:0x4000] = idt[:0x1000]
    blob[0x4000:0x400A] = (4095).to_bytes(2, "little") + (IMAGE_BASE + 0x3000).to_bytes(8, "little")
    symbols.update(user_code=USER_CODE, back=IMAGE_BASE + 0x2800, fault=IMAGE_BASE + 0x2A00)
    return Image(bytes(blob), symbols=symbols)
