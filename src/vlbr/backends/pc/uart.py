"""COM1, a 16550A UART at 0x3F8 on IRQ 4, as Linux's 8250 driver probes and drives it
(drivers/tty/serial/8250/8250_port.c autoconfig(): the IER scratch test, the MCR loopback
test, FIFO detection through IIR[7:6]). Transmission is instant: THR is always empty, and
with IER.ETBEI set every write to THR raises the THRE interrupt again. Nothing is received."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

BASE = 0x3F8
PORTS = tuple(range(BASE, BASE + 8))
IRQ = 4
RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
IER_ETBEI = 0x02  # transmitter holding register empty interrupt
IIR_NONE, IIR_THRE = 0x01, 0x02
IIR_FIFOS = 0xC0
FCR_ENABLE = 0x01
LSR_THRE, LSR_TEMT = 0x20, 0x40
MCR_LOOP = 0x10


def _loopback_msr(mcr: int) -> int:
    """MSR[7:4] in loopback: DCD = OUT2, RI = OUT1, DSR = DTR, CTS = RTS (16550A data sheet)."""
    return ((mcr & 0x08) << 4 | (mcr & 0x04) << 4 | (mcr & 0x01) << 5 | (mcr & 0x02) << 3)


@dataclass
class Uart:
    transmit: Callable[[int], None]
    raise_irq: Callable[[], None]
    ier: int = 0
    lcr: int = 0
    mcr: int = 0
    scr: int = 0
    divisor: int = 1
    fifos: bool = False
    thre_pending: bool = False

    def out(self, port: int, value: int) -> None:
        reg = port - BASE
        if self.lcr & LCR_DLAB and reg in (RBR_THR, IER):
            shift = 0 if reg == RBR_THR else 8
            self.divisor = (self.divisor & ~(0xFF << shift)) | value << shift
        elif reg == RBR_THR:
            if not self.mcr & MCR_LOOP:
                self.transmit(value)
            self._thr_empty()
        elif reg == IER:
            was = self.ier & IER_ETBEI
            self.ier = value & 0x0F
            if self.ier & IER_ETBEI and not was:
                self._thr_empty()
        elif reg == IIR_FCR:
            self.fifos = bool(value & FCR_ENABLE)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self.mcr = value & 0x1F
        elif reg == SCR:
            self.scr = value

    def _thr_empty(self) -> None:
        self.thre_pending = bool(self.ier & IER_ETBEI)
        if self.thre_pending:
            self.raise_irq()

    def read(self, port: int) -> int:
        reg = port - BASE
        if self.lcr & LCR_DLAB and reg in (RBR_THR, IER):
            return (self.divisor >> (0 if reg == RBR_THR else 8)) & 0xFF
        if reg == IER:
            return self.ier
        if reg == IIR_FCR:
            return self._iir()
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            return LSR_THRE | LSR_TEMT
        if reg == MSR:
            return _loopback_msr(self.mcr) if self.mcr & MCR_LOOP else 0xB0  # DCD|DSR|CTS
        if reg == SCR:
            return self.scr
        return 0  # RBR: nothing received

    def _iir(self) -> int:
        fifos = IIR_FIFOS if self.fifos else 0
        if self.thre_pending and self.ier & IER_ETBEI:
            self.thre_pending = False  # reading IIR that reports THRE clears it
            return fifos | IIR_THRE
        return fifos | IIR_NONE
