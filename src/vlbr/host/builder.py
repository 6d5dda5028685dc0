"""Accumulates CPUID rows per logical CPU while a reader walks a source, rejecting conflicts."""

from __future__ import annotations

from vlbr.arch.cpuid import MASK32, CpuidTable, Registers
from vlbr.arch.xsave import XsaveAreaTooLarge, XsaveLayout
from vlbr.errors import CpuidFormatError

from .cpus import LogicalCpu


class CpusBuilder:
    """Rows of each logical CPU, in order; a reader reports every row with its line."""

    def __init__(self, source: str):
        self.source = source
        self._cpus: dict[int, dict[tuple[int, int], Registers]] = {}
        self.current: int | None = None
        # One past the highest CPU number, and per (CPU, leaf) subleaf, so reading stays linear.
        self._next_index = 0
        self._next_sub: dict[tuple[int, int], int] = {}
        self._lines: dict[tuple[int, int, int], int | None] = {}  # (CPU, leaf, subleaf) -> line

    def error(self, line: int | None, problem: str) -> CpuidFormatError:
        return CpuidFormatError(self.source, line, problem)

    def start_cpu(self, index: int, line: int | None) -> None:
        if index in self._cpus:
            raise self.error(line, f"logical CPU {index} appears twice")
        if not 0 <= index <= MASK32:
            raise self.error(line, f"logical CPU number {index} out of range")
        self._cpus[index] = {}
        self.current = index
        self._next_index = max(self._next_index, index + 1)

    def next_index(self) -> int:
        return self._next_index

    def next_subleaf(self, leaf: int) -> int:
        """One past the highest subleaf of leaf in the current CPU (0 for a new leaf)."""
        self.rows()
        return self._next_sub.get((self.current, leaf), 0)

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
        self._lines[(self.current, leaf, subleaf)] = line
        key = (self.current, leaf)
        self._next_sub[key] = max(self._next_sub.get(key, 0), subleaf + 1)

    def build(self) -> list[LogicalCpu]:
        cpus = [LogicalCpu(i, CpuidTable(rows)) for i, rows in self._cpus.items() if rows]
        if not cpus:
            raise self.error(None, "no CPUID data found")
        for cpu in cpus:
            self._check_derived_fields(cpu)
        return cpus

    def _check_derived_fields(self, cpu: LogicalCpu) -> None:
        # Sizes vlbr derives from the dump (KVM's CPUID.(0xD,1):EBX) must fit a register.
        try:
            XsaveLayout.check_fits(cpu.table)
        except XsaveAreaTooLarge as err:
            line = self._lines.get((cpu.index, 0xD, err.component))
            raise self.error(line, f"CPUID (0xd, {err.component:#x}) of logical CPU "
                                   f"{cpu.index}: {err}") from None
