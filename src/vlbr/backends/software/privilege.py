"""Load CPL and the CS/SS hidden state into unicorn, which its 64-bit register API cannot do.

unicorn 2's reg_write of CS/SS in 64-bit mode stores only the selector: the descriptor
cache and the CPL (QEMU's hflags) stay as they were, so a software-delivered interrupt or
SYSCALL from ring 3 could not enter ring 0. QEMU keeps both in CPUX86State, which
uc_context_save copies verbatim; we patch that copy and restore it. The offsets are QEMU's
struct layout (regs[16], eip, eflags, cc_dst, cc_src, cc_src2, cc_op, df, hflags, hflags2,
segs[6] of {u32 selector; u64 base; u32 limit; u32 flags}); they are located and checked
against the live CPU at start-up, so a different unicorn build fails loudly, not silently.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import Uc
from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_R11, UC_X86_REG_RAX,
                               UC_X86_REG_RCX, UC_X86_REG_RFLAGS, UC_X86_REG_RIP,
                               UC_X86_REG_SS)

from vlbr.arch.x86 import MSR_EFER, MSR_FMASK, MSR_LSTAR, MSR_STAR
from vlbr.backends.base import BackendUnavailable
from vlbr.x86.syscall import SyscallEntry, syscall_entry

R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)
HF_CPL_MASK = 0x3
HF_SS32_MASK = 1 << 5
HF_PE_MASK = 1 << 7
HF_LMA_MASK = 1 << 14
HF_CS64_MASK = 1 << 15

# QEMU's descriptor flags word is the descriptor's high dword (SDM 3.4.5).
DESC_A = 1 << 8
DESC_W = 1 << 9  # data: writable; code: readable
DESC_CS = 1 << 11
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23

_EIP_OFFSET = 16 * 8
_HFLAGS_OFFSET = _EIP_OFFSET + 5 * 8 + 2 * 4  # eip, eflags, cc_dst, cc_src, cc_src2; cc_op, df
_SEGS_OFFSET = _HFLAGS_OFFSET + 8
_SEG = struct.Struct("<I4xQII")
_MAGIC = 0x5EC0_DE0F_C0FF_EE11


def _int_at(data: bytes, offset: int) -> int:
    return struct.unpack_from("<i", data, offset)[0]


@dataclass(frozen=True)
class SegmentCache:
    """A segment register as QEMU caches it."""

    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self) -> int:
        return (self.flags >> DESC_DPL_SHIFT) & 3


def flat_code64(selector: int, dpl: int) -> SegmentCache:
    """The CS that SYSCALL loads (SDM SYSCALL: fixed flat 64-bit code, not read from the GDT)."""
    flags = DESC_G | DESC_P | DESC_S | DESC_CS | DESC_W | DESC_A | DESC_L | dpl << DESC_DPL_SHIFT
    return SegmentCache(selector, 0, 0xFFFFFFFF, flags)


def flat_data(selector: int, dpl: int) -> SegmentCache:
    flags = DESC_G | DESC_B | DESC_P | DESC_S | DESC_W | DESC_A | dpl << DESC_DPL_SHIFT
    return SegmentCache(selector, 0, 0xFFFFFFFF, flags)


def null_stack(cpl: int) -> SegmentCache:
    """SS after a 64-bit interrupt that changes privilege: NULL selector with RPL = new CPL."""
    return SegmentCache(cpl, 0, 0, cpl << DESC_DPL_SHIFT)


class PrivilegeSwitch:
    """Patches CPL, CS and SS of a unicorn x86-64 CPU through its saved context."""

    def __init__(self, uc: Uc, scratch: int = 0x8000):
        self.uc = uc
        self.regs_offset = self._locate()
        self._check()
        self.old_exception_offset = self._locate_old_exception(scratch)
        self.error_code_offset, self.is_int_offset = self._locate_exception_fields(scratch)
        self.exception_delivered()

    def _locate_old_exception(self, scratch: int) -> int:
        """Find env->old_exception, which QEMU's do_interrupt resets and unicorn never does.

        QEMU turns a contributory fault (#DE, #TS..#GP) into #DF when old_exception holds a
        contributory vector; without the reset every QEMU-raised #GP after the first would
        arrive as #DF. A DIV by zero on scratch bytes (restored afterwards) moves the field
        from -1 to 0; a second one then reports #DF (8); with -1 written back, #DE (0) again.
        """
        word = _int_at
        divide = b"\x31\xc9\xf7\xf1\xf4"  # xor ecx,ecx; div ecx; hlt
        found = None
        before = self._state()
        first, after = self._probe(scratch, divide)
        candidates = [o for o in range(_SEGS_OFFSET, len(after) - 4, 4)
                      if word(before, o) == -1 and word(after, o) == 0]
        second, after = self._probe(scratch, divide)
        if first == [0] and second == [8]:
            for offset in candidates:
                if word(after, offset) != 8:
                    continue
                self._poke(offset, struct.pack("<i", -1))
                third, _ = self._probe(scratch, divide)
                if third == [0]:
                    found = offset
                    break
        if found is None:
            raise BackendUnavailable("unicorn context layout: env->old_exception not found")
        self._poke(found, struct.pack("<i", -1))
        return found

    def _state(self) -> bytes:
        """The raw CPUX86State bytes from the register file on."""
        ctx, address = self._raw()
        return ctypes.string_at(address + self.regs_offset, ctx.size - self.regs_offset)

    def _probe(self, scratch: int, code: bytes) -> tuple[list[int], bytes]:
        """Run code on scratch bytes; the vectors QEMU raised and the CPU state afterwards."""
        from unicorn import UC_HOOK_INTR
        from unicorn.x86_const import UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RFLAGS
        uc = self.uc
        saved_code = bytes(uc.mem_read(scratch, 16))
        saved = {r: uc.reg_read(r) for r in (UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX,
                                              UC_X86_REG_RFLAGS, UC_X86_REG_RIP)}
        seen: list[int] = []

        def on_interrupt(uc, intno, user_data):
            seen.append(intno)
            uc.emu_stop()

        hook = uc.hook_add(UC_HOOK_INTR, on_interrupt)
        try:
            uc.mem_write(scratch, code)
            uc.emu_start(scratch, scratch + len(code) - 1)
            state = self._state()
        finally:
            uc.hook_del(hook)
            uc.mem_write(scratch, saved_code)
            uc.ctl_remove_cache(scratch, scratch + 16)
            for reg, value in saved.items():
                uc.reg_write(reg, value)
        return seen, state

    def _locate_exception_fields(self, scratch: int) -> tuple[int, int]:
        """Find env->error_code and env->exception_is_int (adjacent ints in CPUX86State).

        MOV DS with selector 0x38 (beyond the 7-entry Guest ABI GDT) raises #GP(0x38);
        INT 0x80 raises vector 0x80 with exception_is_int = 1 and error code 0."""
        gp, after_gp = self._probe(scratch, b"\xb8\x38\x00\x00\x00\x8e\xd8\xf4")
        self.exception_delivered()
        soft, after_int = self._probe(scratch, b"\xcd\x80\xf4")
        word = _int_at
        if gp == [13] and soft == [0x80]:
            for offset in range(_SEGS_OFFSET, len(after_gp) - 8, 4):
                if (word(after_gp, offset), word(after_gp, offset + 4)) == (0x38, 0) and \
                        (word(after_int, offset), word(after_int, offset + 4)) == (0, 1):
                    return offset, offset + 4
        raise BackendUnavailable("unicorn context layout: env->error_code/exception_is_int not found")

    def last_exception(self) -> tuple[int, bool]:
        """(error code, raised by INT n/INT3/INTO) of the exception QEMU raised last."""
        _, address = self._raw()
        base = address + self.regs_offset
        return struct.unpack("<ii", ctypes.string_at(base + self.error_code_offset, 8))

    def _poke(self, offset: int, data: bytes) -> None:
        ctx, address = self._raw()
        ctypes.memmove(address + self.regs_offset + offset, data, len(data))
        self.uc.context_restore(ctx)

    def exception_delivered(self) -> None:
        """What QEMU's do_interrupt does after a delivery: no exception is in progress."""
        self._poke(self.old_exception_offset, struct.pack("<i", -1))

    def _raw(self):
        ctx = self.uc.context_save()
        address = ctypes.cast(ctx.context, ctypes.c_void_p).value
        return ctx, address

    def _locate(self) -> int:
        rax = self.uc.reg_read(UC_X86_REG_RAX)
        self.uc.reg_write(UC_X86_REG_RAX, _MAGIC)
        ctx, address = self._raw()
        self.uc.reg_write(UC_X86_REG_RAX, rax)
        raw = ctypes.string_at(address, ctx.size + 256)
        where = raw.find(struct.pack("<Q", _MAGIC))
        if where < 0:
            raise BackendUnavailable("unicorn context layout: RAX not found in uc_context")
        return where

    def _check(self) -> None:
        """The located layout must agree with what the register API reports."""
        ctx, address = self._raw()
        base = address + self.regs_offset
        rip, = struct.unpack("<Q", ctypes.string_at(base + _EIP_OFFSET, 8))
        hflags, = struct.unpack("<I", ctypes.string_at(base + _HFLAGS_OFFSET, 4))
        cs = self.read(R_CS)
        ss = self.read(R_SS)
        problems = []
        if rip != self.uc.reg_read(UC_X86_REG_RIP):
            problems.append("eip offset")
        if cs.selector != self.uc.reg_read(UC_X86_REG_CS) or ss.selector != self.uc.reg_read(UC_X86_REG_SS):
            problems.append("segs offset")
        if hflags & (HF_PE_MASK | HF_LMA_MASK | HF_CS64_MASK) != (HF_PE_MASK | HF_LMA_MASK | HF_CS64_MASK):
            problems.append(f"hflags {hflags:#x} lacks PE|LMA|CS64 in long mode")
        if problems:
            raise BackendUnavailable("unicorn context layout differs from QEMU 5's CPUX86State: "
                                     + ", ".join(problems))

    def read(self, seg: int) -> SegmentCache:
        _, address = self._raw()
        raw = ctypes.string_at(address + self.regs_offset + _SEGS_OFFSET + seg * _SEG.size, _SEG.size)
        return SegmentCache(*_SEG.unpack(raw))

    def cpl(self) -> int:
        _, address = self._raw()
        hflags, = struct.unpack("<I", ctypes.string_at(address + self.regs_offset + _HFLAGS_OFFSET, 4))
        return hflags & HF_CPL_MASK

    def load(self, cs: SegmentCache, ss: SegmentCache) -> None:
        """Set CS, SS and CPL = CS.DPL as a far transfer in long mode does (64-bit CS only)."""
        if not cs.flags & DESC_L:
            raise ValueError(f"CS {cs.selector:#x} is not a 64-bit code segment")
        ctx, address = self._raw()
        base = address + self.regs_offset
        self._put_segments(base, {R_CS: cs, R_SS: ss})
        hflags, = struct.unpack("<I", ctypes.string_at(base + _HFLAGS_OFFSET, 4))
        hflags = (hflags & ~(HF_CPL_MASK | HF_SS32_MASK)) | cs.dpl
        if ss.flags & DESC_B:
            hflags |= HF_SS32_MASK
        ctypes.memmove(base + _HFLAGS_OFFSET, struct.pack("<I", hflags), 4)
        self.uc.context_restore(ctx)

    def write_segments(self, caches: dict[int, SegmentCache]) -> None:
        """Set data segment caches (R_DS, R_ES, R_FS, R_GS: selector, base, limit, flags) as
        they are, without the GDT lookup reg_write would make."""
        ctx, address = self._raw()
        self._put_segments(address + self.regs_offset, caches)
        self.uc.context_restore(ctx)

    @staticmethod
    def _put_segments(base: int, caches: dict[int, SegmentCache]) -> None:
        for seg, cache in caches.items():
            ctypes.memmove(base + _SEGS_OFFSET + seg * _SEG.size,
                           _SEG.pack(cache.selector, cache.base, cache.limit, cache.flags), _SEG.size)


def enter_syscall(uc: Uc, privilege: PrivilegeSwitch, rip: int) -> SyscallEntry | None:
    """Perform SYSCALL at rip (unicorn skips it): RCX/R11, CS/SS from STAR, RFLAGS, LSTAR.
    Returns the SyscallEntry, or None where it #UDs (EFER.SCE clear)."""
    entry = syscall_entry(rip, uc.reg_read(UC_X86_REG_RFLAGS),
                          *(uc.msr_read(m) for m in (MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_FMASK)))
    if entry is not None:
        uc.reg_write(UC_X86_REG_RCX, entry.rcx)
        uc.reg_write(UC_X86_REG_R11, entry.r11)
        privilege.load(flat_code64(entry.cs, 0), flat_data(entry.ss, 0))
        uc.reg_write(UC_X86_REG_RFLAGS, entry.rflags)
        uc.reg_write(UC_X86_REG_RIP, entry.rip)
    return entry
