"""Accumulates CPUID rows per logical CPU while a reader walks a source, rejecting conflicts."""

from __future__ import annotations

from vlbr.arch.cpuid import MASK32, CpuidTable, Registers
from vlbr.errors import CpuidFormatError

from .cpus import LogicalCpu


class CpusBuilder:
    """Rows of each logical CPU, in order; a reader reports every row with its line."""

    def __init__(self, source: str):
        self.source = source
        self._cpus: dict[int, dict[tuple[int, int], Registers]] = {}
        self.current: int | None = None

    def error(self, line: int | None, problem: str) -> CpuidFormatError:
        return CpuidFormatError(self.source, line, problem)

    def start_cpu(self, index: int, line: int | None) -> None:
        if index in self._cpus:
            raise self.error(line, f"logical CPU {index} appears twice")
        if not 0 <= index <= MASK32:
            raise self.error(line, f"logical CPU number {index} out of range")
        self._cpus[index] = {}
        self.current = index

    def next_index(self) -> int:
        return max(self._cpus, default=-1) + 1

    def rows(self) -> dict[tuple[int, int], Registers]:
        """The current CPU's rows (starting CPU 0 if the source named none)."""
        if self.current is None:
            self.start_cpu(self.next_index(), None)
        return self._cpus[self.current]

    def add(self, leaf: int, subleaf: int, regs: tuple[int, int, int, int], line: int | None) -> None:
        if not (0 <= leaf <= MASK32 and 0 <= subleaf <= MASK32):
            raise self.error(line, f"CPUID ({leaf:#x}, {subleaf:#x}) out of range")
        if not all(0 <= r <= MASK32 for r in regs):
            raise self.error(line, "register value wider than 32 bits")
        new = Registers(*regs)
        rows = self.rows()
        old = rows.get((leaf, subleaf))
        if old is not None and old != new:
            raise self.error(line, f"CPUID ({leaf:#x}, {subleaf:#x}) given twice with different "
                                   f"values ({old} then {new})")
        rows[(leaf, subleaf)] = new

    def build(self) -> list[LogicalCpu]:
        cpus = [LogicalCpu(i, CpuidTable(rows)) for i, rows in self._cpus.items() if rows]
        if not cpus:
            raise self.error(None, "no CPUID data found")
        return cpus
