"""Deliver an exception or interrupt through the guest's own IDT, as a 64-bit CPU does.

unicorn stops on exceptions instead of delivering them; this does the delivery (SDM Vol. 3A
6.14 "Exception and interrupt handling in 64-bit mode"): read the 16-byte gate, pick the
stack (TSS.RSP0 on a privilege change, TSS.ISTn when the gate names one), align it to 16,
push SS, RSP, RFLAGS, CS, RIP and the error code, clear TF/NT/RF (and IF for an interrupt
gate), load CS from the GDT and jump to the handler.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_GDTR, UC_X86_REG_IDTR,
                               UC_X86_REG_RFLAGS, UC_X86_REG_RIP, UC_X86_REG_RSP,
                               UC_X86_REG_SS, UC_X86_REG_TR)

from vlbr.arch.x86 import RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM, VECTOR_GP
from vlbr.errors import VlbrError

from .privilege import DESC_L, DESC_P, DESC_S, PrivilegeSwitch, SegmentCache, null_stack

GATE_INTERRUPT, GATE_TRAP = 0xE, 0xF
TSS_RSP0, TSS_IST1 = 4, 0x24


class DeliveryFailed(VlbrError):
    """The guest cannot take an exception (bad IDT or stack): a real CPU would shut down."""


@dataclass(frozen=True)
class Gate:
    offset: int
    selector: int
    ist: int
    type: int
    dpl: int
    present: bool

    @classmethod
    def unpack(cls, raw: bytes) -> "Gate":
        lo, sel, ist, attr, mid, hi, _ = struct.unpack("<HHBBHII", raw)
        return cls(lo | mid << 16 | hi << 32, sel, ist & 7, attr & 0xF, (attr >> 5) & 3,
                   bool(attr & 0x80))


class InterruptDelivery:
    """Delivers vectors on one unicorn CPU; memory stores go through the code watch."""

    def __init__(self, uc, privilege: PrivilegeSwitch, write):
        self.uc = uc
        self.privilege = privilege
        self.write = write  # (address, bytes) -> None, for stores that may hit code pages

    def _read(self, address: int, size: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(address, size))
        except Exception:
            raise DeliveryFailed(f"cannot read {size} bytes at {address:#x}") from None

    def gate(self, vector: int) -> Gate:
        _, base, limit, _ = self.uc.reg_read(UC_X86_REG_IDTR)
        if vector * 16 + 15 > limit:
            raise DeliveryFailed(f"vector {vector} is beyond the IDT limit {limit:#x}")
        return Gate.unpack(self._read(base + vector * 16, 16))

    def code_segment(self, selector: int) -> SegmentCache:
        _, base, limit, _ = self.uc.reg_read(UC_X86_REG_GDTR)
        if selector & ~7 == 0 or (selector | 7) > limit:
            raise DeliveryFailed(f"gate selector {selector:#x} outside the GDT (limit {limit:#x})")
        seg = SegmentCache.from_descriptor(selector & ~3, self._read(base + (selector & ~7), 8))
        if not seg.flags & DESC_P or not seg.flags & DESC_S or not seg.flags & (1 << 11):
            raise DeliveryFailed(f"gate selector {selector:#x} is not a present code segment")
        if not seg.flags & DESC_L:
            raise DeliveryFailed(f"gate selector {selector:#x} is not 64-bit code")
        return seg

    def deliver(self, vector: int, return_ip: int, error_code: int | None = None,
                software_ip: int | None = None) -> tuple[int, int, int]:
        """Enter the handler of vector; returns (vector delivered, handler address, its CPL).

        software_ip: the address of the INT n / INT3 / INTO that raised it; these check the
        gate's DPL against CPL and raise #GP(vector*8+2) at that address instead (SDM INT n).
        """
        cpl = self.uc.reg_read(UC_X86_REG_CS) & 3
        gate = self.gate(vector)
        if software_ip is not None and gate.dpl < cpl:
            return self.deliver(VECTOR_GP, software_ip, vector * 8 + 2)
        if not gate.present or gate.type not in (GATE_INTERRUPT, GATE_TRAP):
            raise DeliveryFailed(f"IDT vector {vector}: gate not present or not a 64-bit "
                                 f"interrupt/trap gate (type {gate.type:#x})")
        cs = self.code_segment(gate.selector)
        new_cpl = cs.dpl
        if new_cpl > cpl:
            raise DeliveryFailed(f"IDT vector {vector}: handler DPL {new_cpl} above CPL {cpl}")
        _, tss_base, _, _ = self.uc.reg_read(UC_X86_REG_TR)
        rsp = self.uc.reg_read(UC_X86_REG_RSP)
        if gate.ist:
            rsp, = struct.unpack("<Q", self._read(tss_base + TSS_IST1 + 8 * (gate.ist - 1), 8))
        elif new_cpl < cpl:
            rsp, = struct.unpack("<Q", self._read(tss_base + TSS_RSP0 + 8 * new_cpl, 8))
        old_rsp = self.uc.reg_read(UC_X86_REG_RSP)
        rflags = self.uc.reg_read(UC_X86_REG_RFLAGS)
        words = [self.uc.reg_read(UC_X86_REG_SS), old_rsp, rflags,
                 self.uc.reg_read(UC_X86_REG_CS), return_ip]
        if error_code is not None:
            words.append(error_code)
        rsp = (rsp & ~0xF) - 8 * len(words)
        frame = struct.pack(f"<{len(words)}Q", *reversed(words))
        try:
            self.write(rsp, frame)
        except Exception:
            raise DeliveryFailed(f"cannot push the exception frame at {rsp:#x}") from None
        new_flags = rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
        if gate.type == GATE_INTERRUPT:
            new_flags &= ~RFLAGS_IF
        if new_cpl != cpl or gate.selector & ~3 != self.uc.reg_read(UC_X86_REG_CS) & ~3:
            ss = null_stack(new_cpl) if new_cpl != cpl else self.privilege.read(2)
            self.privilege.load(cs, ss)
        self.uc.reg_write(UC_X86_REG_RSP, rsp)
        self.uc.reg_write(UC_X86_REG_RFLAGS, new_flags)
        self.uc.reg_write(UC_X86_REG_RIP, gate.offset)
        self.privilege.exception_delivered()
        return vector, gate.offset, new_cpl
