"""A guest program as the backends load it: a flat image, where it goes, its entry, symbols and
code ranges (built by vlbr.guest, or encoded by tests and probes)."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from vlbr.errors import VlbrError


class GuestImageError(VlbrError):
    """A guest image was asked for something it does not have (e.g. an unknown symbol)."""


@dataclass(frozen=True)
class GuestImage:
    data: bytes
    load_address: int
    entry: int
    symbols: dict[str, int] = field(default_factory=dict)
    name: str = "guest"
    # Executable sections as (start, end) guest addresses; empty: unknown, all of the image.
    code: tuple[tuple[int, int], ...] = ()

    @property
    def end(self) -> int:
        return self.load_address + len(self.data)

    def address(self, symbol: str) -> int:
        try:
            return self.symbols[symbol]
        except KeyError:
            raise GuestImageError(f"guest {self.name!r} has no symbol {symbol!r}") from None

    def code_ranges(self) -> tuple[tuple[int, int], ...]:
        """Where instructions are: the executable sections, else the whole image."""
        return self.code or ((self.load_address, self.end),)

    def contains(self, address: int) -> bool:
        return self.load_address <= address < self.end

    def with_u64(self, symbol: str, value: int) -> "GuestImage":
        """A copy with the 64-bit variable at `symbol` set to value (e.g. vlbr_lbr_ctl)."""
        if not 0 <= value < 1 << 64:
            raise GuestImageError(f"{value!r} does not fit the 64-bit variable {symbol}")
        offset = self.address(symbol) - self.load_address
        if not 0 <= offset <= len(self.data) - 8:
            raise GuestImageError(f"symbol {symbol} at {self.address(symbol):#x} is outside the image")
        data = bytearray(self.data)
        data[offset:offset + 8] = struct.pack("<Q", value)
        return GuestImage(bytes(data), self.load_address, self.entry, dict(self.symbols), self.name,
                          self.code)

    def read_cstring(self, symbol: str) -> str:
        """The NUL-terminated string at `symbol` (ASCII)."""
        offset = self.address(symbol) - self.load_address
        end = self.data.find(b"\0", offset)
        if not 0 <= offset < len(self.data) or end < 0:
            raise GuestImageError(f"symbol {symbol} is not a string inside the image")
        return self.data[offset:end].decode("ascii")

    def read_u64(self, symbol: str) -> int:
        offset = self.address(symbol) - self.load_address
        return struct.unpack_from("<Q", self.data, offset)[0]

    def symbolize(self, address: int) -> str | None:
        """'name+0xoff' for the nearest symbol at or below address inside the image, else None
        (names sharing an address are joined with '/')."""
        if not self.contains(address):
            return None
        table = self._sorted_symbols()
        i = bisect.bisect_right(table, (address, "\uffff")) - 1
        if i < 0:
            return None
        base, name = table[i]
        return name if base == address else f"{name}+{address - base:#x}"

    def _sorted_symbols(self) -> list[tuple[int, str]]:
        # Labels sharing an address (kl_top and kl_call) are shown together: "kl_call/kl_top".
        cached = self.__dict__.get("_symtab")
        if cached is None:
            by_address: dict[int, list[str]] = {}
            for name, addr in self.symbols.items():
                if self.contains(addr) and not name.startswith("__"):
                    by_address.setdefault(addr, []).append(name)
            cached = sorted((addr, "/".join(sorted(names))) for addr, names in by_address.items())
            object.__setattr__(self, "_symtab", cached)
        return cached
