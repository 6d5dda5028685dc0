"""Virtual time for the PC machine: instructions retired, counted by a code hook that stops
the CPU before the instruction that would pass a deadline (timers and counters fire at an
exact count, so a boot is reproducible) and before any instruction at a trap address (the
sites vlbr must perform itself: unicorn has no RDMSR/RDTSC hook). The hook is native
(insn_clock.c) where gcc is available; the pure-Python hook is the fallback and the tests'
reference."""

from __future__ import annotations

import ctypes
import enum

from unicorn import UC_HOOK_CODE, Uc
from unicorn import x86_const as X

from vlbr.backends.software import native

NEVER = (1 << 64) - 1


class ClockState(ctypes.Structure):
    _fields_ = [("retired", ctypes.c_uint64), ("deadline", ctypes.c_uint64),
                ("stopped", ctypes.c_uint64), ("emu_stop", ctypes.c_void_p),
                ("trap_base", ctypes.c_uint64), ("trap_span", ctypes.c_uint64),
                ("trap_bits", ctypes.c_void_p), ("trapped_at", ctypes.c_uint64),
                ("skip", ctypes.c_uint64), ("reg_read", ctypes.c_void_p),
                ("cr2_regid", ctypes.c_int64), ("cr2", ctypes.c_uint64)]


class Stop(enum.IntEnum):
    NONE = 0
    DEADLINE = 1
    TRAP = 2


class InstructionClock:
    """Counts the instructions a unicorn CPU retires; stops at a deadline or a trap address."""

    def __init__(self, uc: Uc, use_native: bool = True, traps: set[int] = frozenset()):
        from unicorn.unicorn_py3 import unicorn as binding
        self.uc = uc
        self.traps = frozenset(traps)
        base = min(self.traps, default=0)
        span = max(self.traps, default=-1) - base + 1
        self._bits = (ctypes.c_uint8 * max(1, (span + 7) // 8))()
        for address in self.traps:
            offset = address - base
            self._bits[offset >> 3] |= 1 << (offset & 7)
        stop = ctypes.cast(binding.uclib.uc_emu_stop, ctypes.c_void_p).value
        reg_read = ctypes.cast(binding.uclib.uc_reg_read, ctypes.c_void_p).value
        self.state = ClockState(0, NEVER, 0, stop, base, span,
                                ctypes.cast(self._bits, ctypes.c_void_p).value, 0, 0, reg_read,
                                X.UC_X86_REG_CR2, 0)
        lib = native.load("insn_clock") if use_native else None
        self.native = lib is not None
        if self.native:
            self._callback = ctypes.cast(lib.vlbr_insn_hook, ctypes.c_void_p)
            native.add_hook(uc, UC_HOOK_CODE, self._callback, ctypes.byref(self.state))
        else:
            uc.hook_add(UC_HOOK_CODE, self._python_hook)

    def _python_hook(self, uc, address, size, user_data) -> None:
        s = self.state
        if s.retired >= s.deadline:
            self._stop(Stop.DEADLINE)
            return
        if address == s.skip:
            s.skip = 0
        elif address in self.traps:
            s.trapped_at = address
            self._stop(Stop.TRAP)
            return
        s.retired += 1

    def _stop(self, why: Stop) -> None:
        self.state.stopped, self.state.cr2 = why, self.uc.reg_read(X.UC_X86_REG_CR2)
        self.uc.emu_stop()

    @property
    def now(self) -> int:
        return self.state.retired

    def advance(self, instructions: int) -> None:
        """Count instructions vlbr performed, or virtual time a halted CPU slept."""
        self.state.retired += instructions

    def unretire(self) -> None:
        """The last counted instruction faulted: it did not retire."""
        self.state.retired -= 1

    def arm(self, deadline: int) -> None:
        """Stop before the instruction that would make `now` exceed `deadline`."""
        self.state.deadline, self.state.stopped = max(deadline, self.state.retired), Stop.NONE

    def stop_now(self) -> None:
        """Stop before the next instruction (a device raised an interrupt)."""
        self.state.deadline = self.state.retired

    def run_through(self, address: int) -> None:
        """Let the instruction at a trap address run once (it was not one vlbr performs)."""
        self.state.skip = address

    @property
    def stopped(self) -> Stop:
        return Stop(self.state.stopped)

    @property
    def cr2_at_stop(self) -> int | None:
        """The guest's CR2 when the clock stopped the CPU (a stop leaves unicorn's at -2)."""
        return None if self.state.stopped == Stop.NONE else self.state.cr2

    @property
    def trapped_at(self) -> int:
        return self.state.trapped_at
