"""Exception and interrupt delivery on the unicorn CPU: the EventCpu that vlbr.x86.events
needs (unicorn stops on exceptions instead of delivering them). Stores go through the code
watch, CS/SS/CPL through the privilege switch (QEMU's segment caches)."""

from __future__ import annotations

from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_GDTR, UC_X86_REG_IDTR,
                               UC_X86_REG_RFLAGS, UC_X86_REG_RIP, UC_X86_REG_RSP,
                               UC_X86_REG_SS, UC_X86_REG_TR)

from vlbr.x86.descriptors import SegmentDescriptor
from vlbr.x86.events import DeliveryFailed, Interrupted, deliver

from .privilege import PrivilegeSwitch, SegmentCache, null_stack

__all__ = ["DeliveryFailed", "InterruptDelivery"]


class InterruptDelivery:
    """Delivers vectors on one unicorn CPU (an x86.events.EventCpu)."""

    def __init__(self, uc, privilege: PrivilegeSwitch, write):
        self.uc = uc
        self.privilege = privilege
        self._write = write  # (address, bytes) -> None, for stores that may hit code pages

    def read(self, address: int, size: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(address, size))
        except Exception:
            raise DeliveryFailed(f"cannot read {size} bytes at {address:#x}") from None

    def write(self, address: int, data: bytes) -> None:
        try:
            self._write(address, data)
        except Exception:
            raise DeliveryFailed(f"cannot push the exception frame at {address:#x}") from None

    def tables(self):
        _, idt_base, idt_limit, _ = self.uc.reg_read(UC_X86_REG_IDTR)
        _, gdt_base, gdt_limit, _ = self.uc.reg_read(UC_X86_REG_GDTR)
        _, tss_base, _, _ = self.uc.reg_read(UC_X86_REG_TR)
        return (idt_base, idt_limit), (gdt_base, gdt_limit), tss_base

    def interrupted(self) -> Interrupted:
        uc = self.uc
        cs = uc.reg_read(UC_X86_REG_CS)
        return Interrupted(uc.reg_read(UC_X86_REG_SS), uc.reg_read(UC_X86_REG_RSP),
                           uc.reg_read(UC_X86_REG_RFLAGS), cs, cs & 3)

    def enter(self, handler: int, rsp: int, rflags: int, cs_selector: int,
              cs: SegmentDescriptor, cpl: int, null_ss: bool) -> None:
        if null_ss or cs_selector & ~3 != self.uc.reg_read(UC_X86_REG_CS) & ~3:
            cache = SegmentCache(cs_selector, cs.base, cs.limit, cs.high)
            self.privilege.load(cache, null_stack(cpl) if null_ss else self.privilege.read(2))
        self.uc.reg_write(UC_X86_REG_RSP, rsp)
        self.uc.reg_write(UC_X86_REG_RFLAGS, rflags)
        self.uc.reg_write(UC_X86_REG_RIP, handler)

    def deliver(self, vector: int, return_ip: int, error_code: int | None = None,
                software_ip: int | None = None) -> tuple[int, int, int]:
        """Enter the handler of vector; returns (vector delivered, handler address, its CPL)."""
        done = deliver(self, vector, return_ip, error_code, software_ip)
        self.privilege.exception_delivered()
        return done.vector, done.handler, done.cpl
