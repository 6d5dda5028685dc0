"""A Linux guest on the unicorn CPU: RAM, the boot plan, the PC devices Linux needs (COM1,
the 8259A pair, the 8254's channel 0, the local APIC) in virtual time (instructions retired,
see clock.py); vlbr's CPUID, exceptions, NMIs, external interrupts and SYSCALL, which unicorn
does not perform, and the trapped instructions of kernel_instructions.py; recording while
LBREn is set (recorder.py). A run ends at its time limit, at a HLT with interrupts off
(Linux's halt), or when delivery fails (a CPU would shut down). docs/design.md has the loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from unicorn import (UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64,
                     Uc, UcError)
from iced_x86 import Decoder, Mnemonic
from unicorn import x86_const as X

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.msrs import BranchType, LbrCtl
from vlbr.arch.x86 import (MAX_INSN, MSR_EFER, RFLAGS_IF, VECTOR_DB, VECTOR_GP, VECTOR_PF,
                           VECTOR_UD, VECTORS_WITH_ERROR_CODE)
from vlbr.policy.runtime_cpuid import runtime_cpuid
from vlbr.backends.branches import EVENT, FAR
from vlbr.vcpu import Branch, GeneralProtection, InvalidOpcode
from vlbr.vcpu.perfmon_msrs import PerfmonMsrs
from vlbr.backends.base import CONSOLE_LIMIT, StopReason
from vlbr.backends.software.interrupts import DeliveryFailed, InterruptDelivery
from vlbr.backends.software.privilege import (PrivilegeSwitch, enter_syscall, flat_code64,
                                              flat_data)
from vlbr.x86.operands import UnsupportedOperand
from vlbr.x86.paging import PageFault, read_linear, write_linear
from vlbr.x86.xstate import UnmodelledXstate

from . import lapic as lapic_page
from . import pic as pic_ports
from . import pit as pit_ports
from . import uart as uart_ports
from .interrupts import PcInterrupts, pit_tick
from .ground_truth import GroundTruth
from .kernel_instructions import PERFORMED, XSTATE_MNEMONICS, KernelInstructions
from .recorder import BranchRecorder
from .clock import NEVER, InstructionClock, Stop
from .cpu_model import guest_cpuid
from .kernel_sites import trap_sites
from .msrs import PcMsrs
from .loader import BootPlan

HLT = 0xF4
INTERRUPT_POLL = 1000  # instructions between looks at a pending interrupt while IF is clear
PAGE = 0x1000
PRIVILEGE_RETURNS = frozenset([Mnemonic.IRET, Mnemonic.IRETD, Mnemonic.IRETQ,
                               Mnemonic.SYSRETQ, Mnemonic.SYSRET])
TRAPPED = PERFORMED - XSTATE_MNEMONICS  # XSAVES/XRSTORS are QEMU's #UD, not trap sites
_GPRS_ABCD = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)
SLICE = 50_000_000  # instructions per emu_start at most, so the wall-clock check runs


@dataclass
class LinuxRun:
    console: bytearray = field(default_factory=bytearray)
    stop_reason: str = ""
    stop_detail: str = ""
    seconds: float = 0.0
    exceptions: int = 0
    instructions: int = 0  # virtual time at the end of the run


class LinearDelivery(InterruptDelivery):
    """Event delivery whose IDT, GDT, TSS and stack accesses are linear (through paging)."""

    def _phys(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))

    def _paging(self) -> tuple[int, int]:
        return self.uc.reg_read(X.UC_X86_REG_CR3), self.uc.reg_read(X.UC_X86_REG_CR0)

    def linear_read(self, address: int, size: int) -> bytes:
        """Supervisor read through the guest's page tables (PageFault as the CPU's #PF)."""
        return read_linear(self._phys, *self._paging(), address, size)

    def linear_write(self, address: int, data: bytes) -> None:
        write_linear(self._phys, self.uc.mem_write, *self._paging(), address, data)

    def read(self, address: int, size: int) -> bytes:
        try:
            return self.linear_read(address, size)
        except (PageFault, UcError) as err:
            raise DeliveryFailed(f"cannot read {size} bytes at {address:#x}: {err}") from None

    def write(self, address: int, data: bytes) -> None:
        try:
            self.linear_write(address, data)
        except (PageFault, UcError) as err:
            raise DeliveryFailed(f"cannot push the frame at {address:#x}: {err}") from None


class PcMachine:
    """One vCPU booting a kernel from a BootPlan, with COM1, the PICs and the PIT."""

    def __init__(self, plan: BootPlan, ram_size: int, console_limit: int = CONSOLE_LIMIT,
                 native_clock: bool = True, cpuid: CpuidTable | None = None,
                 on_console: Callable[[bytes], None] | None = None, ground_truth: bool = False):
        self.console_limit = console_limit
        self.on_console = on_console  # called with each slice's new console bytes
        self.cpuid = cpuid if cpuid is not None else guest_cpuid()
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, ram_size)
        self.privilege = PrivilegeSwitch(uc)  # probes on scratch RAM before the guest is loaded
        self.delivery = LinearDelivery(uc, self.privilege, None)
        for address, data in plan.writes:
            uc.mem_write(address, data)
        self._enter(plan)
        self.run_state = LinuxRun()
        self.event: tuple | None = None
        self.stop_cr2: int | None = None  # the guest's CR2 when a Python hook stopped it
        self.clock = InstructionClock(uc, native_clock,
                                      trap_sites(plan.kernel) if plan.kernel else set())
        self._counted = 0  # virtual time the PMU has been told about
        self._returning_at: int | None = None  # an IRET/SYSRET the next slice runs alone
        self._halted = False  # in HLT, waiting for an interrupt
        self._devices()
        self._models(ground_truth)
        self._hooks()

    def _devices(self) -> None:
        self.irq = PcInterrupts()
        self.pic, self.pit, self.lapic = self.irq.pic, self.irq.pit, self.irq.lapic
        self.uart = uart_ports.Uart(self._transmit, lambda: self.pic.raise_irq(uart_ports.IRQ))
        self.ports = self._port_map()
        self.uc.mmio_map(lapic_page.BASE_ADDRESS, lapic_page.PAGE_SIZE, self._apic_read, None,
                         self._apic_write, None)

    def _models(self, ground_truth: bool) -> None:
        self.perfmon = PerfmonMsrs.from_cpuid(self.cpuid)
        self.lbr, self.pmu = self.perfmon.lbr, self.perfmon.pmu
        self.msrs = PcMsrs(self.uc, self.perfmon, lambda: self.clock.now, self.lapic)
        self.truth = GroundTruth(self.lbr.config) if ground_truth else None
        self.recorder = BranchRecorder(self.uc, self.lbr, self.delivery.linear_read, self.truth)
        self.kernel = KernelInstructions(self.uc, self.cpuid, self.perfmon, self.msrs,
                                         self.delivery.linear_read, self.delivery.linear_write,
                                         self.truth)

    def _hooks(self) -> None:
        uc = self.uc
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
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

    def _port_map(self) -> dict:
        """port -> (write(value), read()) of the device decoding it."""
        ports = {}
        for port in uart_ports.PORTS:
            ports[port] = (lambda v, p=port: self.uart.out(p, v), lambda p=port: self.uart.read(p))
        for port in pic_ports.PORTS:
            ports[port] = (lambda v, p=port: self.pic.out(p, v), lambda p=port: self.pic.read(p))
        for port in pit_ports.PORTS:
            ports[port] = (lambda v, p=port: self.pit.out(p, v, pit_tick(self.clock.now)),
                           lambda p=port: self.pit.read(p, pit_tick(self.clock.now)))
        return ports

    def _apic_read(self, uc, offset, size, user_data) -> int:
        return self.lapic.read(offset & ~3, self.clock.now)

    def _apic_write(self, uc, offset, size, value, user_data) -> None:
        self.lapic.write(offset & ~3, value & 0xFFFFFFFF, self.clock.now)
        if self.irq.waiting():  # an EOI, TPR write or self IPI may release a request
            self.clock.stop_now()

    def _update_timers(self) -> None:
        self.irq.advance(self.clock.now)

    # -- hooks: note and stop; the loop acts outside unicorn ----------------------------------
    def _transmit(self, byte: int) -> None:
        if len(self.run_state.console) >= self.console_limit:
            self._stop(StopReason.CONSOLE_LIMIT, f"over {self.console_limit} bytes of console")
            self._stop_cpu()
            return
        self.run_state.console.append(byte)

    def _on_out(self, uc, port, size, value, user_data) -> None:
        device = self.ports.get(port)
        if device is None:
            return
        waiting = self.irq.waiting()
        device[0](value & 0xFF)
        if self.irq.waiting() and not waiting:
            self.clock.stop_now()  # stop before the next instruction to deliver it

    def _on_in(self, uc, port, size, user_data) -> int:
        device = self.ports.get(port)
        if device is None:
            return (1 << (8 * size)) - 1  # nothing decodes the port: the bus floats high
        return device[1]()

    def _on_cpuid(self, uc, user_data) -> int:
        regs = runtime_cpuid(self.cpuid, uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF,
                             uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF, apic_id=0,
                             cr4=uc.reg_read(X.UC_X86_REG_CR4), xcr0=self.kernel.xcr0,
                             xss=self.lbr.xss)
        for reg, value in zip(_GPRS_ABCD, regs.as_tuple()):
            uc.reg_write(reg, value)
        return 1  # skip QEMU's own CPUID

    def _on_syscall(self, uc, user_data) -> None:
        self.event = ("syscall", uc.reg_read(X.UC_X86_REG_RIP))
        self._stop_cpu()

    def _on_interrupt(self, uc, intno, user_data) -> None:
        error_code, software = self.privilege.last_exception()
        if not software:
            self.clock.unretire()  # a fault: the instruction did not retire
        self.event = ("vector", intno, error_code)
        self._stop_cpu()  # with a #PF's address in CR2

    def _stop_cpu(self) -> None:
        self.stop_cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
        self.uc.emu_stop()

    def _restore_cr2(self) -> None:
        """Every emu_stop leaves unicorn's CR2 at -2: put back the guest's as the hook that
        stopped saw it (a #PF's address, or what the guest last wrote), else a #PF handler
        that a slice stop interrupted before its read_cr2() reads -2 (an emu_start that
        ends in an error keeps CR2)."""
        cr2 = self.stop_cr2 if self.stop_cr2 is not None else self.clock.cr2_at_stop
        if cr2 is not None:
            self.uc.reg_write(X.UC_X86_REG_CR2, cr2)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, timeout: float, until: bytes | None = None) -> LinuxRun:
        """Run until the time limit, a console line containing `until`, or a stop."""
        state, start = self.run_state, time.monotonic()
        while not state.stop_reason:
            if time.monotonic() - start >= timeout:
                self._stop(StopReason.TIMEOUT, f"no power-off within {timeout:g} s")
                break
            shown = len(state.console)
            self._slice()
            if self.on_console is not None and len(state.console) > shown:
                self.on_console(bytes(state.console[shown:]))
            if until is not None and until in state.console:
                self._stop(StopReason.EXIT, f"the console printed {until.decode()!r}")
        state.seconds = time.monotonic() - start
        state.instructions = self.clock.now
        return state

    def _slice(self) -> None:
        if self._halted:
            self._halt()
            return
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        self.event, self.stop_cr2 = None, None
        # At an instruction boundary no delivery is in progress; a fault unicorn raised after
        # an emu_stop leaves QEMU's old_exception set, and the next #PF becomes a silent
        # triple fault (emu_start returns at once, no hook called).
        self.privilege.exception_delivered()
        cpl = self._cpl()
        returning, self._returning_at = self._returning_at, None
        budget = 1 if returning is not None else SLICE
        self.clock.arm(min(self._deadline(cpl), self.clock.now + budget))
        self.recorder.starting(cpl, self.uc.reg_read(X.UC_X86_REG_CR3))
        error = None
        try:
            self.uc.emu_start(rip, -1)  # no timeout: unicorn would start a thread per call
        except UcError as err:
            error = err
        self._restore_cr2()
        self._count(cpl)
        self._update_timers()
        self.recorder.interrupted()  # the slice stopped mid-block: no branch to the next one
        if returning is None and self._cpl() != cpl:  # what the PMU and recorder rely on
            self._stop(StopReason.ERROR, f"CPL changed inside the slice from {rip:#x} "
                       f"(to {self.uc.reg_read(X.UC_X86_REG_RIP):#x})")
            return
        if returning is not None and error is None and self.event is None:
            if self.uc.reg_read(X.UC_X86_REG_RIP) == returning:
                self._returning_at = returning  # a deadline came first: it runs next slice
            else:
                self._returned(returning)
        if error is not None and error.errno == UC_ERR_INSN_INVALID:
            self._invalid(self.uc.reg_read(X.UC_X86_REG_RIP))  # XSAVES/XRSTORS/RDPMC or #UD
        elif error is not None:
            self._stop(StopReason.ERROR, f"unicorn: {error} at {rip:#x}")
        elif self.event is not None:
            self._handle(self.event)
        elif self.clock.stopped == Stop.TRAP:
            self._trap(self.clock.trapped_at)
        elif self.clock.stopped == Stop.NONE and self._at_hlt():
            self._halt()
            return
        if not self.run_state.stop_reason:
            self._interrupt()
        self.recorder.sync()  # an MSR write, XRSTORS or PMI may have changed LBREn

    # -- the instructions vlbr performs -------------------------------------------------------
    def _trap(self, address: int) -> None:
        try:
            insn = Decoder(64, self._code_bytes(address), ip=address).decode()
        except DeliveryFailed:
            self.clock.run_through(address)  # let unicorn raise the fetch fault
            return
        if insn.mnemonic in PRIVILEGE_RETURNS:
            self._privilege_return(insn)
        elif insn.mnemonic == Mnemonic.XSETBV:
            self.kernel.xsetbv()
            self.clock.run_through(insn.ip)  # QEMU performs it
        elif insn.mnemonic in TRAPPED:
            self._perform(insn)
        else:
            self.clock.run_through(address)  # opcode bytes inside another instruction

    def _perform(self, insn) -> None:
        """vlbr performs `insn` (kernel_instructions.py): it retires, or its fault is
        delivered."""
        try:
            self.kernel.perform(insn)
        except GeneralProtection:
            self._deliver(VECTOR_GP, insn.ip, 0)
        except InvalidOpcode:
            self._deliver(VECTOR_UD, insn.ip, None)
        except PageFault as fault:
            self.uc.reg_write(X.UC_X86_REG_CR2, fault.linear)
            self._deliver(VECTOR_PF, insn.ip, fault.error_code)
        except (UnmodelledXstate, UnsupportedOperand) as err:
            self._stop(StopReason.UNSUPPORTED, f"{insn} at {insn.ip:#x}: {err}")
        else:
            self.uc.reg_write(X.UC_X86_REG_RIP, insn.next_ip)
            self.clock.advance(1)

    def _code_bytes(self, address: int) -> bytes:
        page_left = PAGE - (address & (PAGE - 1))
        data = self.delivery.read(address, min(MAX_INSN, page_left))
        if page_left < MAX_INSN:
            try:
                data += self.delivery.read(address + page_left, MAX_INSN - page_left)
            except DeliveryFailed:
                pass
        return data

    def _privilege_return(self, insn) -> None:
        """IRET/SYSRET may change CPL: the slice ended before it, the next one is just the
        instruction (QEMU performs it), so every slice runs at one CPL."""
        self.clock.run_through(insn.ip)
        self._returning_at = insn.ip
        if insn.mnemonic != Mnemonic.SYSRETQ and insn.mnemonic != Mnemonic.SYSRET:
            self.irq.iret()  # IRET ends NMI blocking (SDM 6.7.1)

    def _returned(self, at: int) -> None:
        """The IRET/SYSRET at `at` retired: a far branch (type OTHER), its CPL the target's.
        The slice that ran it ended at the target, so the block hook could not pair them."""
        to = self.uc.reg_read(X.UC_X86_REG_RIP)
        self.recorder.retire(Branch(at, to, FAR.kind, self._cpl()))

    def _invalid(self, rip: int) -> None:
        """QEMU's #UD: XSAVES/XRSTORS (TCG has none) are vlbr's to perform; INT1 is #DB."""
        self.clock.unretire()
        try:
            insn = Decoder(64, self._code_bytes(rip), ip=rip).decode()
        except DeliveryFailed:
            self._deliver(VECTOR_UD, rip, None)
            return
        if insn.mnemonic in XSTATE_MNEMONICS:
            self._perform(insn)
        elif insn.mnemonic == Mnemonic.RDPMC:  # QEMU's TCG has no RDPMC: #UD
            self.clock.advance(1)
            self._trap(rip)
        elif insn.mnemonic == Mnemonic.INT1:
            self._deliver(VECTOR_DB, insn.next_ip, None)
        else:
            self._deliver(VECTOR_UD, rip, None)

    def _cpl(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3

    def _count(self, cpl: int) -> None:
        """Tell the PMU what retired since it last heard: a slice runs at one CPL (every CPL
        change is vlbr's delivery or a trapped IRET/SYSRET, so it ends a slice)."""
        self.pmu.retire(self.clock.now - self._counted, cpl)
        self._counted = self.clock.now
        if self.pmu.take_pmi():
            self.irq.performance_interrupt()
            if self.truth is not None and self.lbr.lbr_ctl & LbrCtl.LBREN:
                self.truth.pmi(self.lbr.depth, self.uc.reg_read(X.UC_X86_REG_RIP),
                               self.clock.now, self.lbr.records())

    def _deadline(self, cpl: int) -> int:
        if self.irq.waiting():
            return self.clock.now + INTERRUPT_POLL  # until IF (or the NMI block) allows it
        overflow = self.pmu.instructions_until_overflow(cpl)
        timer = self.irq.next_timer(self.clock.now)
        return timer if overflow is None else min(timer, self.clock.now + overflow)

    def _interrupts_enabled(self) -> bool:
        return bool(self.uc.reg_read(X.UC_X86_REG_RFLAGS) & RFLAGS_IF)

    def _interrupt(self) -> None:
        """At an instruction boundary: take an NMI, or an interrupt if IF allows."""
        vector = self.irq.take(self._interrupts_enabled())
        if vector is not None:
            self._deliver(vector, self.uc.reg_read(X.UC_X86_REG_RIP), None)

    def _halt(self) -> None:
        """HLT: sleep in virtual time until an interrupt can wake the CPU, or stop for good
        (with IF clear only an NMI could). One timer expiry per call: the run loop checks its
        time limit between them."""
        self._halted = False
        vector = self.irq.take(self._interrupts_enabled())
        if vector is not None:
            self._deliver(vector, self.uc.reg_read(X.UC_X86_REG_RIP), None)
            return
        wake = self.irq.next_timer(self.clock.now)
        if not self._interrupts_enabled() and not self.irq.waiting():
            self._stop(StopReason.HALTED, "HLT with interrupts disabled (the guest halted)")
        elif wake == NEVER:
            self._stop(StopReason.HALTED, "HLT with no timer armed to wake the CPU")
        else:
            self.clock.advance(max(wake - self.clock.now, 0))
            self._counted = self.clock.now  # halted: the counted events are unhalted ones
            self._update_timers()
            self._halted = True

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
        _, vector, error_code = event
        self.run_state.exceptions += 1
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        self._deliver(vector, rip, error_code if vector in VECTORS_WITH_ERROR_CODE else None)

    def _deliver(self, vector: int, rip: int, error_code: int | None) -> None:
        try:
            _, handler, cpl = self.delivery.deliver(vector, rip, error_code)
        except DeliveryFailed as err:
            self._stop(StopReason.SHUTDOWN, f"vector {vector} at {rip:#x}: {err}")
            return
        self.recorder.exception(Branch(rip, handler, BranchType.OTHER, cpl))

    def _syscall(self, rip: int) -> None:
        entry = enter_syscall(self.uc, self.privilege, rip)
        if entry is None:  # EFER.SCE clear: #UD
            self._deliver(VECTOR_UD, rip, None)
            return
        self.recorder.retire(Branch(rip, entry.rip, EVENT.kind, 0))

    def _stop(self, reason: StopReason, detail: str) -> None:
        self.run_state.stop_reason, self.run_state.stop_detail = str(reason), detail
