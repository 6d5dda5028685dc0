"""Find every address where an instruction unicorn cannot route to vlbr may start.

unicorn runs RDMSR/WRMSR through QEMU (unknown MSRs read 0, no #GP) and has no XSAVES
component 15; it cannot hook them. We put a one-address code hook on every byte offset where
such an instruction could begin, and keep that true as memory changes:

* guest RAM starts non-executable; the first fetch from a page faults (UC_HOOK_MEM_FETCH_PROT),
  we scan the page and make it executable. So no page runs before it was scanned.
* the scan is byte-granular, not a linear disassembly: every occurrence of the opcode bytes
  (0F 32, 0F 30, 0F C7 /3 or /5 with a memory operand, 0F 01 D1) at any offset, and every
  start reachable through a run of legacy/REX prefixes before it, gets a hook. Data that
  looks like an opcode costs one decode in the hook (iced-x86 says it is something else).
* every guest store to an executable page (plus 16 bytes either side, for instructions
  straddling a page edge) goes through UC_HOOK_MEM_WRITE before it lands; we rescan the
  bytes as they will be, so self-modifying code gains hooks before QEMU retranslates it.
* stores the backend makes itself (exception frames, XSAVES) go through host_write().
* the same scan puts a no-op code hook after every byte that may be an OUT/OUTS, so a port
  hook's emu_stop takes effect right after the OUT (see _OUT_LENGTHS).
"""

from __future__ import annotations

from typing import Callable

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_WRITE, UC_PROT_ALL, Uc

from vlbr.arch.x86 import MAX_INSN

PAGE = 0x1000
EDGE = 16  # bytes beyond a page an instruction starting on it can reach
PREFIXES = frozenset([0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3,
                      *range(0x40, 0x50)])
_SIMPLE = (b"\x0f\x32", b"\x0f\x30", b"\x0f\x01\xd1")  # rdmsr, wrmsr, xsetbv
# OUT (imm8 port, DX port) and OUTS opcodes with the bytes to the next instruction. The
# port hooks stop the CPU on some ports, but QEMU only looks for a stop before a block or
# after a code hook: a code hook on whatever follows makes the stop land right after it.
_OUT_LENGTHS = {0xE6: 2, 0xE7: 2, 0xEE: 1, 0xEF: 1, 0x6E: 1, 0x6F: 1}
# Conditional branches to their own fall-through (Jcc rel8/rel32, LOOPcc, JrCXZ with a zero
# displacement): only the flags tell whether one was taken, which a logged block address
# cannot, so the native recorder decides them at a hook.
TO_FALLTHROUGH = (*(bytes([op, 0]) for op in range(0x70, 0x80)),
                   *(bytes([op, 0]) for op in range(0xE0, 0xE4)),
                   *(bytes([0x0F, op, 0, 0, 0, 0]) for op in range(0x80, 0x90)))


def _opcode_offsets(data: bytes) -> list[int]:
    """Offsets in data where rdmsr/wrmsr/xsetbv/xsaves/xrstors opcode bytes begin, and
    conditional branches to their own fall-through."""
    found = pattern_offsets(data, (*_SIMPLE, *TO_FALLTHROUGH))
    i = data.find(b"\x0f\xc7")
    while i >= 0:
        if i + 2 < len(data):
            modrm = data[i + 2]
            if modrm >> 6 != 3 and (modrm >> 3) & 7 in (3, 5):  # xrstors /3, xsaves /5
                found.append(i)
        i = data.find(b"\x0f\xc7", i + 1)
    return found


def pattern_offsets(data: bytes, patterns) -> list[int]:
    """Offsets in data where any of the byte patterns begins."""
    found = []
    for pattern in patterns:
        i = data.find(pattern)
        while i >= 0:
            found.append(i)
            i = data.find(pattern, i + 1)
    return found


def after_outs(data: bytes, base: int) -> set[int]:
    """Every address right after something that may be an OUT/OUTS, given data at base."""
    opcodes = [bytes([op]) for op in _OUT_LENGTHS]
    return {base + i + _OUT_LENGTHS[data[i]] for i in pattern_offsets(data, opcodes)}


def candidate_starts(data: bytes, base: int, offsets: list[int] | None = None) -> set[int]:
    """Every address where an instruction whose opcode is at one of `offsets` (by default
    the routed instructions') could start, prefixes included, given data at base."""
    starts = set()
    for i in _opcode_offsets(data) if offsets is None else offsets:
        starts.add(base + i)
        k = i
        while k > 0 and i - k < MAX_INSN - 2 and data[k - 1] in PREFIXES:
            k -= 1
            starts.add(base + k)
    return starts


class CodeWatch:
    """Keeps a code hook on every possible start of a routed instruction in executed memory."""

    def __init__(self, uc: Uc, ram_size: int, on_code: Callable, on_change: Callable[[], None],
                 add_fence: Callable[[int], None] | None = None,
                 starts: Callable[[bytes, int], set[int]] = candidate_starts):
        """uc's RAM must be mapped without UC_PROT_EXEC: pages gain it here, once scanned.
        add_fence(address) puts a no-op code hook there (default: a Python one);
        `starts(data, base)`: the addresses to hook (by default the routed instructions')."""
        self.uc = uc
        self.starts = starts
        self.add_fence = add_fence or (lambda a: uc.hook_add(UC_HOOK_CODE, _fence, None, a, a))
        self.ram_size = ram_size
        self.on_code = on_code  # the UC_HOOK_CODE callback for candidate addresses
        self.on_change = on_change  # called when executable bytes change (decode caches)
        self.hooked: set[int] = set()
        self.fences: set[int] = set()  # no-op code hooks after OUTs (see _OUT_LENGTHS)
        self.executable: set[int] = set()
        self.fetch_fault: int | None = None
        uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._fetch_prot)

    def _fetch_prot(self, uc, access, address, size, value, user_data) -> bool:
        self.fetch_fault = address
        return False  # stop; the run loop calls make_executable() outside the hook

    def take_fetch_fault(self) -> int | None:
        address, self.fetch_fault = self.fetch_fault, None
        return address

    def make_executable(self, address: int) -> bool:
        """Scan the page holding address and let it run; False when it is not guest RAM."""
        page = address & ~(PAGE - 1)
        if not 0 <= page < self.ram_size:
            return False
        if page in self.executable:
            return True
        lo, hi = max(0, page - EDGE), min(self.ram_size, page + PAGE + EDGE)
        self._hook_all(bytes(self.uc.mem_read(lo, hi - lo)), lo)
        self.uc.hook_add(UC_HOOK_MEM_WRITE, self._guest_write, None, lo, hi - 1)
        self.uc.mem_protect(page, PAGE, UC_PROT_ALL)
        self.executable.add(page)
        return True

    def _hook_all(self, data: bytes, base: int) -> None:
        for address in self.starts(data, base) - self.hooked:
            self.uc.hook_add(UC_HOOK_CODE, self.on_code, None, address, address)
            self.hooked.add(address)
        for address in after_outs(data, base) - self.fences:
            self.add_fence(address)
            self.fences.add(address)

    def _rescan(self, address: int, new: bytes) -> None:
        """Hook candidates in the bytes around [address, address+len(new)) once new is there."""
        lo = max(0, address - MAX_INSN)
        hi = min(self.ram_size, address + len(new) + MAX_INSN)
        window = bytearray(self.uc.mem_read(lo, hi - lo))
        start = address - lo
        window[start:start + len(new)] = new[:hi - address]
        self._hook_all(bytes(window), lo)
        self.on_change()

    def _guest_write(self, uc, access, address, size, value, user_data) -> None:
        self._rescan(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def touches_code(self, address: int, length: int) -> bool:
        first = max(0, address - EDGE) & ~(PAGE - 1)
        return any(p in self.executable for p in range(first, address + length + EDGE, PAGE))

    def host_write(self, address: int, data: bytes) -> None:
        """A store made by the backend on the guest's behalf (frames, XSAVES areas)."""
        if self.touches_code(address, len(data)):
            self._rescan(address, data)
            self.uc.mem_write(address, data)
            self.uc.ctl_remove_cache(address, address + len(data))
        else:
            self.uc.mem_write(address, data)


def _fence(uc, address, size, user_data) -> None:
    """Nothing: QEMU checks for a stop request after every code hook."""
