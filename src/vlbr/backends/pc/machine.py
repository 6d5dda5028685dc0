"""A Linux guest on the unicorn CPU: RAM, the boot plan, a COM1 that only transmits, and
exceptions and SYSCALL performed by vlbr (unicorn stops on both instead of doing them).

Not yet here (issue 11): MSR routing to the Arch LBR model, vlbr's CPUID, XSAVES, a timer or
interrupt controller, and power-off; a run ends at its time limit, at a HLT with nothing to
wake it, or when delivery fails (a CPU would shut down)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from vlbr.arch.x86 import MSR_EFER, VECTOR_UD, VECTORS_WITH_ERROR_CODE
from vlbr.backends.base import CONSOLE_LIMIT, StopReason
from vlbr.backends.software.interrupts import DeliveryFailed, InterruptDelivery
from vlbr.backends.software.privilege import (PrivilegeSwitch, enter_syscall, flat_code64,
                                              flat_data)
from vlbr.x86.paging import read_linear, write_linear

from .loader import BootPlan

COM1, COM1_LSR = 0x3F8, 0x3FD
LSR_IDLE = 0x60  # transmitter holding register and shift register empty
HLT = 0xF4
SLICE_US = 1_000_000  # emu_start's own limit per slice, so the wall-clock check runs


@dataclass
class LinuxRun:
    console: bytearray = field(default_factory=bytearray)
    stop_reason: str = ""
    stop_detail: str = ""
    seconds: float = 0.0
    exceptions: int = 0


class LinearDelivery(InterruptDelivery):
    """Event delivery whose IDT, GDT, TSS and stack accesses are linear (through paging)."""

    def _phys(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))

    def _paging(self) -> tuple[int, int]:
        return self.uc.reg_read(X.UC_X86_REG_CR3), self.uc.reg_read(X.UC_X86_REG_CR0)

    def read(self, address: int, size: int) -> bytes:
        try:
            return read_linear(self._phys, *self._paging(), address, size)
        except Exception as err:
            raise DeliveryFailed(f"cannot read {size} bytes at {address:#x}: {err}") from None

    def write(self, address: int, data: bytes) -> None:
        try:
            write_linear(self._phys, self.uc.mem_write, *self._paging(), address, data)
        except Exception as err:
            raise DeliveryFailed(f"cannot push the frame at {address:#x}: {err}") from None


class PcMachine:
    """One vCPU booting a kernel from a BootPlan."""

    def __init__(self, plan: BootPlan, ram_size: int, console_limit: int = CONSOLE_LIMIT):
        self.console_limit = console_limit
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, ram_size)
        self.privilege = PrivilegeSwitch(uc)  # probes on scratch RAM before the guest is loaded
        self.delivery = LinearDelivery(uc, self.privilege, None)
        for address, data in plan.writes:
            uc.mem_write(address, data)
        self._enter(plan)
        self.run_state = LinuxRun()
        self.event: tuple | None = None
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)

    def _enter(self, plan: BootPlan) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, plan.gdt[0], plan.gdt[1], 0))
        uc.reg_write(X.UC_X86_REG_CR3, plan.cr3)
        uc.reg_write(X.UC_X86_REG_CR4, plan.cr4)
        uc.msr_write(MSR_EFER, plan.efer)
        uc.reg_write(X.UC_X86_REG_CR0, plan.cr0)
        self.privilege.load(flat_code64(plan.cs, 0), flat_data(plan.ds, 0))
        uc.reg_write(X.UC_X86_REG_RSI, plan.rsi)
        uc.reg_write(X.UC_X86_REG_RIP, plan.entry)

    # -- hooks: note and stop; the loop acts outside unicorn ----------------------------------
    def _on_out(self, uc, port, size, value, user_data) -> None:
        if port != COM1:
            return
        if len(self.run_state.console) >= self.console_limit:
            self._stop(StopReason.CONSOLE_LIMIT, f"over {self.console_limit} bytes of console")
            uc.emu_stop()
            return
        self.run_state.console.append(value & 0xFF)

    def _on_in(self, uc, port, size, user_data) -> int:
        if port == COM1_LSR:
            return LSR_IDLE
        return (1 << (8 * size)) - 1  # nothing decodes the port: the bus floats high

    def _on_syscall(self, uc, user_data) -> None:
        self.event = ("syscall", uc.reg_read(X.UC_X86_REG_RIP))
        uc.emu_stop()

    def _on_interrupt(self, uc, intno, user_data) -> None:
        error_code, _ = self.privilege.last_exception()
        self.event = ("vector", intno, uc.reg_read(X.UC_X86_REG_CR2), error_code)
        uc.emu_stop()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, timeout: float, until: bytes | None = None) -> LinuxRun:
        """Run until the time limit, a console line containing `until`, or a stop."""
        state, start = self.run_state, time.monotonic()
        while not state.stop_reason:
            if time.monotonic() - start >= timeout:
                self._stop(StopReason.TIMEOUT, f"no power-off within {timeout:g} s")
                break
            self._slice()
            if until is not None and until in state.console:
                self._stop(StopReason.EXIT, f"the console printed {until.decode()!r}")
        state.seconds = time.monotonic() - start
        return state

    def _slice(self) -> None:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        self.event = None
        # At an instruction boundary no delivery is in progress; a fault unicorn raised after
        # an emu_stop leaves QEMU's old_exception set, and the next #PF becomes a silent
        # triple fault (emu_start returns at once, no hook called).
        self.privilege.exception_delivered()
        began = time.monotonic()
        try:
            self.uc.emu_start(rip, -1, timeout=SLICE_US)
        except UcError as err:
            self._stop(StopReason.ERROR, f"unicorn: {err} at {rip:#x}")
            return
        early = time.monotonic() - began < SLICE_US / 1e6  # not stopped by the slice's limit
        if self.event is not None:
            self._handle(self.event)
        elif early and self._at_hlt():
            self._stop(StopReason.HALTED, "HLT with no timer or interrupt to wake the CPU")

    def _at_hlt(self) -> bool:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        try:
            return self.delivery.read(rip - 1, 1)[0] == HLT
        except DeliveryFailed:
            return False

    def _handle(self, event: tuple) -> None:
        if event[0] == "syscall":
            self._syscall(event[1])
            return
        _, vector, cr2, error_code = event
        self.run_state.exceptions += 1
        self.uc.reg_write(X.UC_X86_REG_CR2, cr2)  # unicorn reads it wrong once stopped
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        self._deliver(vector, rip, error_code if vector in VECTORS_WITH_ERROR_CODE else None)

    def _deliver(self, vector: int, rip: int, error_code: int | None) -> None:
        try:
            self.delivery.deliver(vector, rip, error_code)
        except DeliveryFailed as err:
            self._stop(StopReason.SHUTDOWN, f"vector {vector} at {rip:#x}: {err}")

    def _syscall(self, rip: int) -> None:
        if enter_syscall(self.uc, self.privilege, rip) is None:  # EFER.SCE clear: #UD
            self._deliver(VECTOR_UD, rip, None)

    def _stop(self, reason: StopReason, detail: str) -> None:
        self.run_state.stop_reason, self.run_state.stop_detail = str(reason), detail
