"""An immutable CPUID table keyed by (leaf, subleaf), as CPUID answers it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

MASK32 = 0xFFFF_FFFF

# Leaves whose ECX input selects a subleaf (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
INDEXED_LEAVES = frozenset(
    {0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1A, 0x1B, 0x1D,
     0x1E, 0x1F, 0x20, 0x23, 0x24, 0x8000001D, 0x80000020, 0x80000026}
)


@dataclass(frozen=True, slots=True)
class Registers:
    """The four output registers of one CPUID query."""

    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0

    def __post_init__(self) -> None:
        for name in ("eax", "ebx", "ecx", "edx"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= MASK32:
                raise ValueError(f"{name}={value!r} is not a 32-bit register value")

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.eax, self.ebx, self.ecx, self.edx)

    def __str__(self) -> str:
        return "-".join(f"{r:08X}" for r in self.as_tuple())


ZERO = Registers()


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    """One (leaf, subleaf) row, shaped like struct kvm_cpuid_entry2."""

    function: int
    index: int
    regs: Registers

    @property
    def indexed(self) -> bool:
        return self.function in INDEXED_LEAVES


class CpuidTable(Mapping[tuple[int, int], Registers]):
    """CPUID answers for one logical CPU; missing leaves are absent, not zero."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Mapping[tuple[int, int], Registers] | Iterable[CpuidEntry] = ()):
        if isinstance(rows, Mapping):
            items = dict(rows)
        else:
            items = {(e.function, e.index): e.regs for e in rows}
        for (leaf, sub), regs in items.items():
            if not (0 <= leaf <= MASK32 and 0 <= sub <= MASK32):
                raise ValueError(f"CPUID key ({leaf:#x}, {sub:#x}) out of range")
            if not isinstance(regs, Registers):
                raise TypeError(f"CPUID ({leaf:#x}, {sub:#x}) value is not Registers")
        self._rows = dict(sorted(items.items()))

    def __getitem__(self, key: tuple[int, int]) -> Registers:
        return self._rows[key]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CpuidTable) and self._rows == other._rows

    def __hash__(self) -> int:
        return hash(tuple(self._rows.items()))

    def __repr__(self) -> str:
        return f"CpuidTable({len(self)} entries)"

    def query(self, leaf: int, subleaf: int = 0) -> Registers | None:
        """What CPUID returns for this input, or None when the source lacks it.

        A leaf that ignores ECX answers the same for every subleaf."""
        regs = self._rows.get((leaf, subleaf))
        if regs is None and leaf not in INDEXED_LEAVES:
            regs = self._rows.get((leaf, 0))
        return regs

    def regs(self, leaf: int, subleaf: int = 0) -> Registers:
        """Like query(), but a missing leaf reads as zeros."""
        return self.query(leaf, subleaf) or ZERO

    def entries(self) -> list[CpuidEntry]:
        return [CpuidEntry(leaf, sub, regs) for (leaf, sub), regs in self._rows.items()]

    def subleaves(self, leaf: int) -> list[int]:
        return [sub for (lf, sub) in self._rows if lf == leaf]

    def replace(self, changes: Mapping[tuple[int, int], Registers | None]) -> "CpuidTable":
        """A new table with rows set (or removed where the value is None)."""
        rows = dict(self._rows)
        for key, regs in changes.items():
            if regs is None:
                rows.pop(key, None)
            else:
                rows[key] = regs
        return CpuidTable(rows)

    @property
    def max_basic_leaf(self) -> int:
        return self.regs(0).eax

    @property
    def vendor(self) -> str:
        r = self.regs(0)
        raw = b"".join(v.to_bytes(4, "little") for v in (r.ebx, r.edx, r.ecx))
        return raw.decode("latin-1").rstrip("\0")

    @property
    def signature(self) -> "Signature":
        return Signature.decode(self.regs(1).eax)

    @property
    def brand(self) -> str:
        words = []
        for leaf in (0x80000002, 0x80000003, 0x80000004):
            r = self.query(leaf)
            if r is None:
                return ""
            words.extend(r.as_tuple())
        raw = b"".join(w.to_bytes(4, "little") for w in words)
        return raw.split(b"\0", 1)[0].decode("latin-1").strip()


@dataclass(frozen=True, slots=True)
class Signature:
    """Family, model and stepping from CPUID.1:EAX, with the extended fields folded in."""

    family: int
    model: int
    stepping: int

    @classmethod
    def decode(cls, eax: int) -> "Signature":
        base_family = (eax >> 8) & 0xF
        family = base_family + ((eax >> 20) & 0xFF) if base_family == 0xF else base_family
        model = (eax >> 4) & 0xF
        if base_family in (0x6, 0xF):
            model |= ((eax >> 16) & 0xF) << 4
        return cls(family, model, eax & 0xF)

    def __str__(self) -> str:
        return f"family {self.family:#x} model {self.model:#x} stepping {self.stepping}"
