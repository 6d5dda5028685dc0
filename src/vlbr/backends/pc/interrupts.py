"""Which interrupt the PC machine's CPU takes at an instruction boundary: NMIs (a PMI through
LVTPC in NMI mode), the local APIC's fixed vectors, and the 8259A pair's request through the
APIC's virtual wire (the order and rules of lapic.py's docstring, SDM Vol. 3A 6.7, 6.9,
11.5.1). The timers behind them, the 8254 and the APIC timer, run in virtual time here too."""

from __future__ import annotations

from vlbr.arch.x86 import VECTOR_NMI

from .clock import NEVER
from .lapic import LocalApic
from .pic import DualPic
from .pit import PIT_HZ, Pit

INSTRUCTIONS_PER_SECOND = 1_000_000_000  # virtual time: one instruction is one nanosecond
PIT_IRQ = 0


def pit_tick(now: int) -> int:
    """The 8254's tick at `now` instructions."""
    return now * PIT_HZ // INSTRUCTIONS_PER_SECOND


def instructions_at(tick: int) -> int:
    """The first instruction count at which the 8254 has reached `tick`."""
    return -(-tick * INSTRUCTIONS_PER_SECOND // PIT_HZ)


class PcInterrupts:
    """The PIC pair, the PIT, the local APIC and the NMI line of one CPU."""

    def __init__(self):
        self.pic, self.pit, self.lapic = DualPic(), Pit(), LocalApic()
        self.nmi = False  # an NMI is waiting
        self.nmi_blocked = False  # an NMI handler runs: no NMI until its IRET (SDM 6.7.1)

    # -- time --------------------------------------------------------------------------------
    def next_timer(self, now: int) -> int:
        """The instruction count of the next timer expiry (NEVER: none armed)."""
        due = self.pit.next_fire()
        pit = NEVER if due is None else instructions_at(due)
        apic = self.lapic.next_timer(now)
        return pit if apic is None else min(pit, apic)

    def advance(self, now: int) -> None:
        if self.pit.advance(pit_tick(now)):  # several edges collapse in the IRR bit
            self.pic.raise_irq(PIT_IRQ)
        self.lapic.advance(now)

    # -- sources -----------------------------------------------------------------------------
    def performance_interrupt(self) -> None:
        """A PMU overflow's PMI, through LVTPC as the guest programmed it."""
        if self.lapic.performance_interrupt() == "nmi":
            self.nmi = True

    def iret(self) -> None:
        self.nmi_blocked = False

    def _pic_request(self) -> bool:
        return self.lapic.passes_pic_intr() and self.pic.pending()

    def waiting(self) -> bool:
        """Something would interrupt the CPU once IF (or the NMI block) allows."""
        self.nmi = self.nmi or self.lapic.take_nmi()
        return self.nmi or self.lapic.pending_vector() is not None or self._pic_request()

    def take(self, interrupts_enabled: bool) -> int | None:
        """The vector to deliver now (acknowledged at its source), or None."""
        self.nmi = self.nmi or self.lapic.take_nmi()
        if self.nmi and not self.nmi_blocked:
            self.nmi, self.nmi_blocked = False, True
            return VECTOR_NMI
        if not interrupts_enabled:
            return None
        if self.lapic.pending_vector() is not None:
            return self.lapic.acknowledge()
        if self._pic_request():
            return self.pic.acknowledge()
        return None
