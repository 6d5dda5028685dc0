"""The local APIC of the PC machine's one CPU in xAPIC mode, in virtual time (SDM Vol. 3A
chapter 11), as far as Linux drives it (arch/x86/kernel/apic/apic.c, arch/x86/events/core.c):
the register page of Table 11-1, the LVT (11.5.1), the timer in one-shot and periodic mode
(11.5.4), self IPIs through the ICR (11.6), IRR/ISR/TPR/PPR/EOI (11.8), the spurious vector
(11.9) and IA32_APIC_BASE (11.4.4). No unicorn here: the machine maps the page and calls us.

Choices, each where the SDM leaves room or the platform is simpler than a real one:
- Time is `now`, instructions retired; the bus clock is `ticks_per_instruction` bus clocks per
  instruction (1: a 1 GHz bus at the machine's one instruction per nanosecond, every count
  integral). Linux calibrates the timer against the PIT, so any rate at or above its
  1 MHz floor ("APIC frequency too slow" in calibrate_APIC_clock) works.
- TSC-deadline mode is not offered (CPUID.1:ECX[24] is clear): LVT timer bit 18 is reserved.
- x2APIC is not offered: setting IA32_APIC_BASE bit 10 #GPs; so does moving the page (the
  machine maps it at BASE_ADDRESS only; Linux never moves it).
- Clearing IA32_APIC_BASE.EN puts the APIC in its power-up state (SDM 11.4.7.1); while
  globally disabled the page reads 0 and ignores writes.
- Reserved offsets (and bytes 4-15 of each 16-byte register slot) read 0, ignore writes and
  log "illegal register address" in the ESR (SDM 11.5.3).
- Fixed interrupts sent to a software-disabled APIC are dropped (KVM's __apic_accept_irq);
  IRR and ISR contents are held (SDM 11.4.7.2). Only edge-triggered interrupts: TMR reads 0.
- Nothing drives the thermal entry or LINT1 (no sensor, no NMI button): they are storage.
  TPR is the register at 0x80 only; CR8 is not connected to it.

How the machine combines the APIC, the 8259A pair and NMIs at an instruction boundary:
1. NMI first, whatever IF says (unless an NMI handler runs, until its IRET): a PMI for which
   `performance_interrupt()` returned "nmi", or `take_nmi()` (a self NMI IPI): vector 2.
2. With IF set: `pending_vector()` is not None -> `acknowledge()` gives the vector to deliver.
3. Else, with IF set, `passes_pic_intr()` and the PIC has a request: the PIC's INTA vector.
   ExtINT bypasses the APIC's IRR, ISR and priority (SDM 11.5.1, 11.8.4): the guest EOIs
   it on the 8259A itself.
Stop the CPU at min(PIT, `next_timer(now)`), then `advance(now)`; after any APIC write,
`performance_interrupt()` or `raise_vector()`, stop at once if `pending_vector()` (or an NMI)
became deliverable (an EOI or a TPR write can release a held request). HLT wakes on the same
three sources. RDMSR/WRMSR of IA32_APIC_BASE (arch.x86) go to `rdmsr_base`/`wrmsr_base`
(a GeneralProtection is the guest's #GP); CPUID.1:EDX[9] announces the APIC.
`passes_pic_intr()` is true while the APIC is globally or software-disabled (as a PC in PIC
mode: early boot runs on the PIT through the 8259A) and, once enabled, exactly while
`lint0_extint()` (virtual wire through LINT0, what setup_local_APIC programs)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from vlbr.vcpu.faults import GeneralProtection

PAGE_SIZE = 0x1000
BASE_ADDRESS = 0xFEE00000
PHYSICAL_ADDRESS_BITS = 40  # the PC machine's CPUID.80000008H:EAX[7:0] (cpu_model.py)

# IA32_APIC_BASE (SDM Figure 11-5).
APIC_BASE_BSP, APIC_BASE_EXTD, APIC_BASE_ENABLE = 1 << 8, 1 << 10, 1 << 11
APIC_BASE_ADDRESS = ((1 << PHYSICAL_ADDRESS_BITS) - 1) & ~(PAGE_SIZE - 1)

# Register offsets (SDM Table 11-1).
ID, VERSION, TPR, APR, PPR, EOI = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0
RRD, LDR, DFR, SVR = 0xC0, 0xD0, 0xE0, 0xF0  # RRD: remote read, never used: reads 0
ISR_BASE, TMR_BASE, IRR_BASE = 0x100, 0x180, 0x200
VECTOR_WORDS = 8  # 256 bits as eight 32-bit registers, 0x10 apart
ESR, ICR_LOW, ICR_HIGH = 0x280, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE = 0x380, 0x390, 0x3E0
REGISTER_STRIDE = 0x10

APIC_VERSION = 0x14  # an integrated xAPIC (SDM 11.4.8)
MAX_LVT = 5  # six entries: timer, thermal, performance counter, LINT0, LINT1, error
VERSION_VALUE = APIC_VERSION | MAX_LVT << 16

# LVT fields (SDM Figure 11-8).
LVT_VECTOR = 0xFF
LVT_DELIVERY_MODE = 0x700
LVT_MASKED = 1 << 16
TIMER_PERIODIC = 1 << 17  # bits 18:17 = 01; 10 (TSC-deadline) is not offered
DM_FIXED, DM_LOWEST, DM_NMI, DM_EXTINT = 0x000, 0x100, 0x400, 0x700  # lowest: ICR only
# Writable bits per LVT entry: vector, delivery mode, polarity, trigger, mask, timer mode.
LVT_WRITABLE = {LVT_TIMER: LVT_VECTOR | LVT_MASKED | TIMER_PERIODIC,
                LVT_THERMAL: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
                LVT_PERF: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
                LVT_LINT0: LVT_VECTOR | LVT_DELIVERY_MODE | 1 << 13 | 1 << 15 | LVT_MASKED,
                LVT_LINT1: LVT_VECTOR | LVT_DELIVERY_MODE | 1 << 13 | 1 << 15 | LVT_MASKED,
                LVT_ERROR: LVT_VECTOR | LVT_MASKED}

SVR_VECTOR, SVR_ENABLE, SVR_FOCUS_DISABLED = 0xFF, 1 << 8, 1 << 9  # SDM Figure 11-23
LDR_WRITABLE = 0xFF000000
DFR_MODEL, DFR_ONES, DFR_FLAT = 0xF0000000, 0x0FFFFFFF, 0xF0000000
TIMER_DIVIDE_WRITABLE = 0xB  # bits 0, 1 and 3 (SDM Figure 11-10)

# ICR (SDM Figure 11-12).
ICR_LOW_WRITABLE = 0xFF | 0x700 | 1 << 11 | 1 << 14 | 1 << 15 | 3 << 18
ICR_LOGICAL = 1 << 11
ICR_SHORTHAND_SHIFT = 18
SHORT_NONE, SHORT_SELF, SHORT_ALL = 0, 1, 2  # 3: all but self
ICR_DEST_SHIFT = 24
BROADCAST = 0xFF

# ESR bits (SDM Figure 11-9).
ESR_SEND_ILLEGAL_VECTOR, ESR_RECEIVE_ILLEGAL_VECTOR, ESR_ILLEGAL_REGISTER = 1 << 5, 1 << 6, 1 << 7
FIRST_LEGAL_VECTOR = 16  # vectors 0-15 are illegal on the APIC (SDM 11.5.2)


def divisor(divide: int) -> int:
    """Timer divide configuration to divisor (SDM Figure 11-10): 2^(code+1), code 7 is 1."""
    code = (divide & 3) | (divide >> 1) & 4
    return 1 if code == 7 else 2 << code


def priority_class(vector: int) -> int:
    return vector >> 4


def highest(bits: int) -> int:
    """The highest vector set in a 256-bit register, 0 when none."""
    return bits.bit_length() - 1 if bits else 0


@dataclass
class Timer:
    """The count-down of SDM 11.5.4, as a function of `now`: `counts` ticks of the divided bus
    clock since `epoch` plus `offset` (what elapsed under an earlier divide), `fired`
    expiries already accounted for."""

    ticks_per_instruction: Fraction
    initial: int = 0
    divide: int = 0
    epoch: int = 0
    offset: int = 0
    fired: int = 0

    def _scale(self) -> Fraction:
        return self.ticks_per_instruction / divisor(self.divide)

    def counts(self, now: int) -> int:
        return self.offset + int((now - self.epoch) * self._scale())

    def start(self, initial: int, now: int) -> None:
        self.initial, self.epoch, self.offset, self.fired = initial, now, 0, 0

    def set_divide(self, divide: int, now: int) -> None:
        """Counting goes on at the new rate from `now` (the partial tick is dropped)."""
        self.offset, self.epoch, self.divide = self.counts(now), now, divide

    def current(self, now: int, periodic: bool) -> int:
        if not self.initial:
            return 0
        counts = self.counts(now)
        if periodic:
            return self.initial - counts % self.initial  # reloaded at each expiry
        return max(self.initial - counts, 0)

    def expiries(self, now: int, periodic: bool) -> int:
        if not self.initial:
            return 0
        due = self.counts(now) // self.initial
        return due if periodic else min(due, 1)

    def next_expiry(self, periodic: bool) -> int | None:
        """The first instruction count at which expiry `fired + 1` has happened."""
        if not self.initial or (not periodic and self.fired):
            return None
        ticks = (self.fired + 1) * self.initial - self.offset
        return self.epoch + -(-ticks // self._scale())  # ceil: counts() floors


class LocalApic:
    """One xAPIC; `now` arguments are instructions retired (the machine's virtual time)."""

    def __init__(self, apic_id: int = 0, ticks_per_instruction: Fraction | int = 1):
        if ticks_per_instruction <= 0:
            raise ValueError(f"the bus clock must run: {ticks_per_instruction}")
        self.apic_id = apic_id
        self.ticks_per_instruction = Fraction(ticks_per_instruction)
        self.base = BASE_ADDRESS | APIC_BASE_BSP | APIC_BASE_ENABLE
        self.nmi_pending = False
        self.tmr = 0  # only edge-triggered interrupts
        self._power_up()
        self._readers, self._writers = self._build_readers(), self._build_writers()

    def _power_up(self) -> None:
        """SDM 11.4.7.1: registers after power-up or reset."""
        self.id = self.apic_id << 24
        self.tpr = self.ldr = self.esr = self._errors = 0
        self.icr_low = self.icr_high = 0
        self.irr = self.isr = 0
        self.dfr = DFR_MODEL | DFR_ONES
        self.svr = SVR_VECTOR
        self.lvt = {offset: LVT_MASKED for offset in LVT_WRITABLE}
        self.timer = Timer(self.ticks_per_instruction)

    # -- state --------------------------------------------------------------------------------
    @property
    def hardware_enabled(self) -> bool:
        return bool(self.base & APIC_BASE_ENABLE)

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def periodic(self) -> bool:
        return bool(self.lvt[LVT_TIMER] & TIMER_PERIODIC)

    def _masked(self, offset: int) -> bool:
        return bool(self.lvt[offset] & LVT_MASKED)

    # -- IA32_APIC_BASE -----------------------------------------------------------------------
    def rdmsr_base(self) -> int:
        return self.base

    def wrmsr_base(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE: #GP on reserved bits, x2APIC, or another page address."""
        if value & APIC_BASE_EXTD:
            raise GeneralProtection(f"IA32_APIC_BASE {value:#x}: x2APIC is not offered")
        if value & ~(APIC_BASE_ADDRESS | APIC_BASE_BSP | APIC_BASE_ENABLE):
            raise GeneralProtection(f"IA32_APIC_BASE {value:#x}: reserved bits")
        if value & APIC_BASE_ADDRESS != BASE_ADDRESS:
            raise GeneralProtection(f"IA32_APIC_BASE {value:#x}: the page cannot move")
        if self.hardware_enabled and not value & APIC_BASE_ENABLE:
            self._power_up()
        self.base = value | APIC_BASE_BSP  # the one CPU is the bootstrap processor

    # -- the register page --------------------------------------------------------------------
    def read(self, offset: int, now: int) -> int:
        """A 32-bit read at `offset` in the page."""
        if not self.hardware_enabled:
            return 0
        reader = self._readers.get(offset)
        if reader is None:
            self._error(ESR_ILLEGAL_REGISTER)
            return 0
        return reader(now) & 0xFFFFFFFF

    def write(self, offset: int, value: int, now: int) -> None:
        """A 32-bit write at `offset` in the page."""
        if not self.hardware_enabled:
            return
        if offset in LVT_WRITABLE:
            self._write_lvt(offset, value, now)
            return
        writer = self._writers.get(offset)
        if writer is not None:
            writer(value & 0xFFFFFFFF, now)
        elif offset not in self._readers:
            self._error(ESR_ILLEGAL_REGISTER)
        # writes to read-only registers (version, APR, PPR, ISR/TMR/IRR, current count) do nothing

    def _build_readers(self) -> dict:
        regs = {ID: lambda now: self.id, VERSION: lambda now: VERSION_VALUE,
                TPR: lambda now: self.tpr, APR: lambda now: self.apr(), PPR: lambda now: self.ppr(),
                EOI: lambda now: 0, RRD: lambda now: 0, LDR: lambda now: self.ldr,
                DFR: lambda now: self.dfr, SVR: lambda now: self.svr, ESR: lambda now: self.esr,
                ICR_LOW: lambda now: self.icr_low, ICR_HIGH: lambda now: self.icr_high,
                TIMER_INITIAL: lambda now: self.timer.initial,
                TIMER_CURRENT: lambda now: self.timer.current(now, self.periodic),
                TIMER_DIVIDE: lambda now: self.timer.divide}
        regs.update({offset: lambda now, o=offset: self.lvt[o] for offset in LVT_WRITABLE})
        for base, name in ((ISR_BASE, "isr"), (TMR_BASE, "tmr"), (IRR_BASE, "irr")):
            for word in range(VECTOR_WORDS):
                regs[base + word * REGISTER_STRIDE] = (
                    lambda now, n=name, w=word: getattr(self, n) >> 32 * w)
        return regs

    def _build_writers(self) -> dict:
        return {ID: self._write_id, TPR: self._write_tpr, EOI: lambda v, now: self.eoi(),
                LDR: self._write_ldr, DFR: self._write_dfr, SVR: self._write_svr,
                ESR: self._write_esr, ICR_LOW: self._write_icr,
                ICR_HIGH: self._write_icr_high, TIMER_INITIAL: self._write_initial,
                TIMER_DIVIDE: self._write_divide}

    def _write_id(self, value: int, now: int) -> None:
        self.id = value & 0xFF000000  # writable on P6 and later xAPICs; model-specific (11.4.6)

    def _write_tpr(self, value: int, now: int) -> None:
        self.tpr = value & 0xFF

    def _write_ldr(self, value: int, now: int) -> None:
        self.ldr = value & LDR_WRITABLE

    def _write_dfr(self, value: int, now: int) -> None:
        self.dfr = value & DFR_MODEL | DFR_ONES

    def _write_svr(self, value: int, now: int) -> None:
        self.advance(now)
        self.svr = value & (SVR_VECTOR | SVR_ENABLE | SVR_FOCUS_DISABLED)
        if not self.software_enabled:  # SDM 11.4.7.2: every LVT masked
            for offset in self.lvt:
                self.lvt[offset] |= LVT_MASKED

    def _write_esr(self, value: int, now: int) -> None:
        """SDM 11.5.3: a write makes the errors logged since the last write readable."""
        self.esr, self._errors = self._errors, 0

    def _write_lvt(self, offset: int, value: int, now: int) -> None:
        if offset == LVT_TIMER:
            self.advance(now)  # expiries up to now happen under the old mask and mode
        if not self.software_enabled:
            value |= LVT_MASKED
        self.lvt[offset] = value & LVT_WRITABLE[offset]

    def _write_initial(self, value: int, now: int) -> None:
        self.advance(now)
        self.timer.start(value, now)  # 0 stops the timer

    def _write_divide(self, value: int, now: int) -> None:
        self.advance(now)
        self.timer.set_divide(value & TIMER_DIVIDE_WRITABLE, now)

    # -- interrupt acceptance and priority (SDM 11.8) -----------------------------------------
    def _error(self, bit: int) -> None:
        """Log an APIC error and signal it through the LVT error entry (SDM 11.5.3)."""
        self._errors |= bit
        if not self._masked(LVT_ERROR):
            self._accept(self.lvt[LVT_ERROR] & LVT_VECTOR, report=False)

    def _accept(self, vector: int, report: bool = True) -> None:
        if vector < FIRST_LEGAL_VECTOR:
            if report:
                self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return
        self.irr |= 1 << vector

    def raise_vector(self, vector: int) -> None:
        """A fixed, edge-triggered interrupt accepted into the IRR."""
        if self.hardware_enabled and self.software_enabled:
            self._accept(vector)

    def ppr(self) -> int:
        """SDM 11.8.3.1: TPR if its class is at least the highest in-service class, else that
        class."""
        isrv = highest(self.isr)
        if priority_class(self.tpr) >= priority_class(isrv):
            return self.tpr
        return isrv & 0xF0

    def apr(self) -> int:
        """SDM Figure 11-15's arbitration priority: TPR, or the highest of the three classes."""
        tpr, isrv, irrv = self.tpr, highest(self.isr), highest(self.irr)
        tpr_class = priority_class(tpr)
        if tpr_class >= priority_class(irrv) and tpr_class > priority_class(isrv):
            return tpr
        return max(tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)

    def pending_vector(self) -> int | None:
        """The IRR vector the CPU would take now: its class above PPR's (SDM 11.8.4)."""
        if not self.hardware_enabled or not self.irr:
            return None
        vector = highest(self.irr)
        if priority_class(vector) > priority_class(self.ppr()):
            return vector
        return None

    def acknowledge(self) -> int:
        """INTA: the highest deliverable IRR vector moves to ISR; the spurious vector when
        nothing is deliverable any more (SDM 11.9), which enters neither."""
        vector = self.pending_vector()
        if vector is None:
            return self.svr & SVR_VECTOR
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        return vector

    def eoi(self) -> None:
        """SDM 11.8.5: the highest-priority in-service interrupt is done."""
        if self.isr:
            self.isr &= ~(1 << highest(self.isr))

    # -- ICR: self IPIs (SDM 11.6) ------------------------------------------------------------
    def _write_icr_high(self, value: int, now: int) -> None:
        self.icr_high = value & 0xFF000000

    def _write_icr(self, value: int, now: int) -> None:
        """Send: delivery completes at once, so the delivery status (bit 12) reads idle."""
        self.icr_low = value & ICR_LOW_WRITABLE
        if self._ipi_reaches_self():
            self._self_ipi(self.icr_low)

    def _ipi_reaches_self(self) -> bool:
        shorthand = self.icr_low >> ICR_SHORTHAND_SHIFT & 3
        if shorthand != SHORT_NONE:
            return shorthand in (SHORT_SELF, SHORT_ALL)
        destination = self.icr_high >> ICR_DEST_SHIFT
        if destination == BROADCAST:
            return True
        if self.icr_low & ICR_LOGICAL:
            return self._logical_match(destination)
        return destination == self.id >> 24

    def _logical_match(self, destination: int) -> bool:
        """SDM 11.6.2.2: flat model, a bit in common; cluster model, same cluster and a bit."""
        logical = self.ldr >> 24
        if self.dfr & DFR_MODEL == DFR_FLAT:
            return bool(logical & destination)
        return logical >> 4 == destination >> 4 and bool(logical & destination & 0xF)

    def _self_ipi(self, icr: int) -> None:
        mode, vector = icr & LVT_DELIVERY_MODE, icr & LVT_VECTOR
        if mode in (DM_FIXED, DM_LOWEST):  # lowest priority among one CPU: this one
            if vector < FIRST_LEGAL_VECTOR:
                self._error(ESR_SEND_ILLEGAL_VECTOR)
            else:
                self.raise_vector(vector)
        elif mode == DM_NMI:
            self.nmi_pending = True
        # SMI, INIT and start-up: no SMM, and no other CPU to start

    def take_nmi(self) -> bool:
        """Whether a self NMI IPI is waiting; the machine delivers vector 2 and it is gone."""
        pending, self.nmi_pending = self.nmi_pending, False
        return pending

    # -- LVT sources --------------------------------------------------------------------------
    def next_timer(self, now: int) -> int | None:
        """The instruction count at which the next expiry that raises an interrupt happens:
        `now` when one is due that `advance` has not accounted for yet."""
        if not self.hardware_enabled or self._masked(LVT_TIMER):
            return None
        due = self.timer.next_expiry(self.periodic)
        return None if due is None else max(due, now)

    def advance(self, now: int) -> None:
        """Account for the timer's expiries up to `now`: each sets the LVT timer vector in IRR
        unless masked (several collapse into one IRR bit)."""
        due = self.timer.expiries(now, self.periodic)
        if due > self.timer.fired:
            self.timer.fired = due
            if not self._masked(LVT_TIMER):
                self._accept(self.lvt[LVT_TIMER] & LVT_VECTOR)

    def performance_interrupt(self) -> str | None:
        """A PMI through LVTPC: "fixed" (its vector is in IRR), "nmi" (the machine delivers
        vector 2) or None (masked, or a delivery mode not modelled). Delivery sets the mask
        bit (SDM 20.6.3); Linux's PMI handler clears it again (intel_pmu_handle_irq)."""
        entry = self.lvt[LVT_PERF]
        if not self.hardware_enabled or entry & LVT_MASKED:
            return None
        mode = entry & LVT_DELIVERY_MODE
        if mode not in (DM_FIXED, DM_NMI):
            return None
        self.lvt[LVT_PERF] = entry | LVT_MASKED
        if mode == DM_NMI:
            return "nmi"
        self._accept(entry & LVT_VECTOR)
        return "fixed"

    def lint0_extint(self) -> bool:
        """LINT0 programmed ExtINT and unmasked: the virtual wire to the 8259A (SDM 11.5.1)."""
        entry = self.lvt[LVT_LINT0]
        return (self.hardware_enabled and not entry & LVT_MASKED
                and entry & LVT_DELIVERY_MODE == DM_EXTINT)

    def passes_pic_intr(self) -> bool:
        """Whether the 8259A's INTR reaches the CPU (see the module docstring)."""
        if not self.hardware_enabled or not self.software_enabled:
            return True
        return self.lint0_extint()
