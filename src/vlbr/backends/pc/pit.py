"""Channel 0 of the 8254 interval timer (ports 0x40/0x43), in virtual time: what Linux's
i8253 clockevent uses (arch/x86/kernel/i8253.c, drivers/clocksource/i8253.c): mode 0
and 4 (one-shot: Linux's one-shot mode is 4, software-triggered strobe), modes 2 and 3
(periodic), lobyte/hibyte access, the counter-latch command.
Its output is IRQ 0; the other channels and the gate/speaker port are not modelled."""

from __future__ import annotations

from dataclasses import dataclass

CHANNEL0, MODE_PORT = 0x40, 0x43
PORTS = (CHANNEL0, MODE_PORT)
PIT_HZ = 1_193_182
MODE_ONE_SHOT, MODE_RATE, MODE_SQUARE = 0, 2, 3
PERIODIC = (MODE_RATE, MODE_SQUARE)
ACCESS_LATCH, ACCESS_LOBYTE, ACCESS_HIBYTE, ACCESS_WORD = 0, 1, 2, 3


@dataclass
class Pit:
    """Channel 0; `tick` arguments are PIT_HZ periods of the machine's virtual time."""

    mode: int = MODE_ONE_SHOT
    access: int = ACCESS_WORD
    reload: int = 0x10000
    armed_at: int | None = None  # the tick the current count started at; None: not counting
    fired: bool = False  # mode 0 fires once per count written
    _low_next: bool = True
    _partial: int = 0
    _latched: list | None = None

    def out(self, port: int, value: int, tick: int) -> None:
        if port == MODE_PORT:
            self._mode(value, tick)
        elif port == CHANNEL0:
            self._write_count(value & 0xFF, tick)

    def _mode(self, value: int, tick: int) -> None:
        if value >> 6:  # channels 1, 2 and the read-back command are not modelled
            return
        access = (value >> 4) & 3
        if access == ACCESS_LATCH:
            count = self.count(tick)
            self._latched = [count & 0xFF, count >> 8 & 0xFF]
            return
        mode = (value >> 1) & 7
        self.mode = mode & 3 if mode >= 6 else mode  # 6 and 7 alias 2 and 3
        self.access, self.armed_at, self._low_next = access, None, True

    def _write_count(self, byte: int, tick: int) -> None:
        if self.access == ACCESS_WORD and self._low_next:
            self._partial, self._low_next = byte, False
            return
        if self.access == ACCESS_WORD:
            value = self._partial | byte << 8
            self._low_next = True
        else:
            value = byte << 8 if self.access == ACCESS_HIBYTE else byte
        self.reload = value or 0x10000  # a count of 0 means 65536
        self.armed_at, self.fired = tick, False

    def read(self, port: int, tick: int) -> int:
        if port != CHANNEL0:
            return 0xFF
        if self._latched:
            return self._latched.pop(0)
        return self.count(tick) & 0xFF

    def count(self, tick: int) -> int:
        if self.armed_at is None:
            return self.reload & 0xFFFF
        elapsed = tick - self.armed_at
        if self.mode not in PERIODIC:
            return max(self.reload - elapsed, 0) & 0xFFFF
        return (self.reload - elapsed % self.reload) & 0xFFFF

    def next_fire(self) -> int | None:
        """The tick of the next rising edge of the output, or None."""
        if self.armed_at is None or (self.mode not in PERIODIC and self.fired):
            return None
        return self.armed_at + self.reload

    def advance(self, tick: int) -> int:
        """Move to `tick`; the number of interrupts (rising edges) in between."""
        edges = 0
        while (due := self.next_fire()) is not None and due <= tick:
            edges += 1
            if self.mode not in PERIODIC:
                self.fired = True
            else:
                self.armed_at = due
        return edges
