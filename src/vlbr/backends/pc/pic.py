"""The two cascaded 8259A interrupt controllers of a PC, as far as Linux drives them
(arch/x86/kernel/i8259.c): ICW1-4 initialisation, the mask (OCW1), specific and
non-specific EOI (OCW2), IRR/ISR reads (OCW3), edge-triggered inputs, fixed priority."""

from __future__ import annotations

from dataclasses import dataclass

MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA = 0x20, 0x21, 0xA0, 0xA1
PORTS = (MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA)
CASCADE_IRQ = 2
ICW1_INIT = 0x10
ICW1_NEEDS_ICW4 = 0x01
ICW1_SINGLE = 0x02
OCW3 = 0x08  # bit 3 set, bit 4 clear: OCW3 (bit 4 set would be ICW1)
OCW3_READ_ISR = 0x03
OCW3_READ_IRR = 0x02
OCW2_EOI = 0x20
OCW2_SPECIFIC = 0x40


@dataclass
class I8259:
    """One 8259A: eight edge-triggered inputs."""

    vector_base: int = 0
    imr: int = 0xFF
    irr: int = 0
    isr: int = 0
    read_isr: bool = False
    icw_step: int = 0  # ICWs still expected after ICW1: 0 when initialised
    needs_icw4: bool = False
    single: bool = False

    def command(self, value: int) -> None:
        if value & ICW1_INIT:
            self.imr = self.irr = self.isr = 0
            self.needs_icw4, self.single = bool(value & ICW1_NEEDS_ICW4), bool(value & ICW1_SINGLE)
            self.icw_step, self.read_isr = 2, False
        elif value & OCW3:
            if value & OCW3_READ_IRR == OCW3_READ_IRR:
                self.read_isr = value & OCW3_READ_ISR == OCW3_READ_ISR
        elif value & OCW2_EOI:
            if value & OCW2_SPECIFIC:
                self.isr &= ~(1 << (value & 7))
            elif self.isr:
                self.isr &= self.isr - 1  # the highest-priority (lowest) bit in service

    def data(self, value: int) -> None:
        if self.icw_step == 2:
            self.vector_base = value & 0xF8
            self.icw_step = 4 if self.single else 3
            if self.single and not self.needs_icw4:
                self.icw_step = 0
        elif self.icw_step == 3:
            self.icw_step = 4 if self.needs_icw4 else 0
        elif self.icw_step == 4:
            self.icw_step = 0
        else:
            self.imr = value & 0xFF

    def read_command(self) -> int:
        return self.isr if self.read_isr else self.irr

    def raise_edge(self, irq: int) -> None:
        self.irr |= 1 << irq

    def pending(self) -> int | None:
        """The input that would interrupt now (fixed priority: lower numbers first)."""
        requests = self.irr & ~self.imr
        for irq in range(8):
            if self.isr & (1 << irq):
                return None  # an equal or higher priority input is in service
            if requests & (1 << irq):
                return irq
        return None

    def acknowledge(self, irq: int) -> None:
        self.irr &= ~(1 << irq)
        self.isr |= 1 << irq


class DualPic:
    """Master and slave 8259A, the slave on the master's input 2."""

    def __init__(self):
        self.master, self.slave = I8259(), I8259()

    def out(self, port: int, value: int) -> None:
        chip = self.master if port in (MASTER_CMD, MASTER_DATA) else self.slave
        (chip.command if port in (MASTER_CMD, SLAVE_CMD) else chip.data)(value)

    def read(self, port: int) -> int:
        chip = self.master if port in (MASTER_CMD, MASTER_DATA) else self.slave
        return chip.read_command() if port in (MASTER_CMD, SLAVE_CMD) else chip.imr

    def raise_irq(self, irq: int) -> None:
        if irq < 8:
            self.master.raise_edge(irq)
        else:
            self.slave.raise_edge(irq - 8)
            self.master.raise_edge(CASCADE_IRQ)

    def pending(self) -> bool:
        return self._next() is not None

    def _next(self) -> tuple[I8259, int] | None:
        irq = self.master.pending()
        if irq is None:
            return None
        if irq == CASCADE_IRQ:
            slave_irq = self.slave.pending()
            if slave_irq is None:
                return None
            return self.slave, slave_irq
        return self.master, irq

    def acknowledge(self) -> int | None:
        """INTA: the vector of the highest-priority pending input, now in service."""
        found = self._next()
        if found is None:
            return None
        chip, irq = found
        chip.acknowledge(irq)
        if chip is self.slave:
            self.master.acknowledge(CASCADE_IRQ)
            if self.slave.irr:  # the cascade line stays up for the slave's other requests
                self.master.raise_edge(CASCADE_IRQ)
        return chip.vector_base + irq
