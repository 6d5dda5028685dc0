"""The guest's instructions as KVM's memory slot holds them: bounded reads and a decode cache."""

from __future__ import annotations

from dataclasses import dataclass

from iced_x86 import Instruction

from vlbr.arch.x86 import MAX_INSN
from vlbr.backends import branches
from vlbr.backends.base import RAM_SIZE


@dataclass
class Step:
    """An instruction about to execute, decoded before it runs, with its branch class."""

    insn: Instruction
    cls: branches.BranchClass | None


class GuestCode:
    """Reads and decodes one machine's guest RAM (a decoded instruction is reused while its
    bytes are unchanged, so code the guest rewrites is decoded again)."""

    def __init__(self, memory):
        self.memory = memory
        self._decoded: dict[int, tuple[bytes, Step]] = {}

    def read(self, address: int, size: int) -> bytes:
        """Up to `size` bytes at `address`, fewer where RAM ends, none outside it."""
        if not 0 <= address < RAM_SIZE:
            return b""
        return self.memory[address:min(address + size, RAM_SIZE)]

    def decode(self, rip: int) -> Step:
        """The instruction at `rip`."""
        raw = self.read(rip, MAX_INSN)
        cached = self._decoded.get(rip)
        if cached is not None and raw.startswith(cached[0]):
            return cached[1]
        insn = branches.decode(raw, rip)
        step = Step(insn, branches.classify(insn))
        self._decoded[rip] = (raw[:insn.len], step)
        return step
