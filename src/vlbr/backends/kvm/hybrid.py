"""Recording at emulator speed: while LBREn is set, the vCPU runs on unicorn over the same
guest RAM and registers, its branches logged by the native block ring (software/native).

A stretch starts from the single-step path's state (runner.py) and ends *before* any
instruction unicorn must not perform for KVM (`stops_before`: MSRs, CPUID, port I/O, far
transfers, events, control and descriptor registers, XSAVE family, ...), at any exception
unicorn raises, or at the step budget; the registers then go back to KVM, which single-steps
that instruction as the step path always did (recording its branch, delivering its fault),
and the next stretch follows. Every such instruction is found before it runs by a code hook
at each byte where it may start in executable pages (software/codewatch.py), so unicorn only
ever runs plain user-mode-like code. A stretch keeps one CPL (far transfers end it), which
is the CPL of all its branches. The ring holds blocks (start, size); the branches between
consecutive blocks are classified by backends.branches exactly as the software backend does.
"""

from __future__ import annotations

import copy
import ctypes
import functools
from dataclasses import dataclass

from iced_x86 import Code, Instruction, Mnemonic, Register
from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_PROT, UC_HOOK_BLOCK, UC_HOOK_INTR, UC_MODE_64,
                     UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import x86_const as X

from vlbr.arch.x86 import MSR_EFER, RFLAGS_TF, XFEATURES_LEGACY
from vlbr.backends import branches, layout
from vlbr.backends.base import IMAGE_BASE, RAM_SIZE
from vlbr.backends.image import GuestImage
from vlbr.backends.kvm.usermode import GPRS
from vlbr.backends.kvm.xsaves import KvmLegacy
from vlbr.backends.software import native
from vlbr.backends.software.backend import enter_long_mode, load_guest
from vlbr.backends.software.codewatch import (PAGE, TO_FALLTHROUGH, CodeWatch,
                                              candidate_starts, pattern_offsets)
from vlbr.backends.software.fpu import UnicornLegacy
from vlbr.backends.software.privilege import (DESC_A, DESC_B, DESC_DPL_SHIFT, DESC_G, DESC_L,
                                              DESC_P, DESC_S, R_DS, R_ES, R_FS, R_GS,
                                              PrivilegeSwitch, SegmentCache)
from vlbr.vcpu.lbr import Branch

NO_END = (1 << 64) - 1
RING = 1 << 21  # blocks one piece of a stretch may log (its instruction count is bounded)

# What unicorn must leave to KVM, by mnemonic (privileged, I/O, events, MSRs, time, XSAVE
# family, segment and descriptor loads; UD0-2 so that KVM raises the #UD itself).
STOP_MNEMONICS = frozenset(getattr(Mnemonic, name) for name in """
    HLT INT INT3 INTO INT1 IRET IRETD IRETQ CLI STI POPF POPFQ POPFD IN OUT INSB INSW INSD
    OUTSB OUTSW OUTSD RETF SLDT STR LLDT LTR VERR VERW SGDT SIDT LGDT LIDT SMSW LMSW INVLPG
    INVPCID SWAPGS RDTSC RDTSCP RDPMC RDPID XGETBV XSETBV MONITOR MWAIT VMCALL CLAC STAC
    SYSCALL SYSRET SYSRETQ SYSENTER SYSEXIT SYSEXITQ CLTS INVD WBINVD WRMSR RDMSR GETSEC
    CPUID LSS LFS LGS FXSAVE FXSAVE64 FXRSTOR FXRSTOR64 XSAVE XSAVE64 XRSTOR XRSTOR64
    XSAVEOPT XSAVEOPT64 XSAVEC XSAVEC64 XSAVES XSAVES64 XRSTORS XRSTORS64 WRFSBASE WRGSBASE
    LAR LSL VMREAD VMWRITE RDRAND RDSEED UD0 UD1 UD2""".split())
MOV_TO_SREG = frozenset([Code.MOV_SREG_R32M16, Code.MOV_SREG_R64M16, Code.MOV_SREG_RM16])
MOV_CR_DR = frozenset([Code.MOV_R64_CR, Code.MOV_CR_R64, Code.MOV_R64_DR, Code.MOV_DR_R64])

# Opcode bytes where a stop may begin (prefixes are added by candidate_starts); data that only
# looks like one costs a decode when it runs as an instruction, never a stop.
_ONE_BYTE = bytes([0xF4, 0xCC, 0xCD, 0xCE, 0xF1, 0xCF, 0xFA, 0xFB, 0x9D, 0x8E, 0xCA, 0xCB,
                   0x6C, 0x6D, 0x6E, 0x6F, 0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF])
_TWO_BYTE = bytes([0x00, 0x01, 0x02, 0x03, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x20, 0x21,
                   0x22, 0x23, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37, 0x78, 0x79, 0xA1,
                   0xA2, 0xA9, 0xAE, 0xB2, 0xB4, 0xB5, 0xB9, 0xC7, 0xFF])
STOP_PATTERNS = (*(bytes([b]) for b in _ONE_BYTE), *(bytes([0x0F, b]) for b in _TWO_BYTE),
                 *TO_FALLTHROUGH)
FAR_INDIRECT = 0xFF  # FF /3 call far, FF /5 jmp far


def stops_before(insn: Instruction) -> bool:
    """True for an instruction the hybrid hands to KVM instead of running it on unicorn."""
    if insn.code == Code.INVALID or insn.mnemonic in STOP_MNEMONICS:
        return True
    if insn.code in MOV_TO_SREG or insn.code in MOV_CR_DR:
        return True
    if insn.mnemonic == Mnemonic.POP and insn.op0_register in (Register.FS, Register.GS):
        return True
    cls = branches.classify(insn)
    # far transfers change CPL/CS; a conditional to its own fall-through needs the flags
    return cls is not None and (cls.is_far or cls.conditional
                                and insn.near_branch_target == insn.next_ip)


def stop_starts(data: bytes, base: int) -> set[int]:
    """Every address in data (at base) where a stop may start (CodeWatch's `starts`)."""
    offsets = pattern_offsets(data, STOP_PATTERNS)
    i = data.find(bytes([FAR_INDIRECT]))
    while 0 <= i < len(data) - 1:
        modrm = data[i + 1]
        if modrm >> 6 != 3 and (modrm >> 3) & 7 in (3, 5):
            offsets.append(i)
        i = data.find(bytes([FAR_INDIRECT]), i + 1)
    return candidate_starts(data, base, offsets)


def segment_cache(seg) -> SegmentCache:
    """A kvm_segment as QEMU caches it (flags: the descriptor's high dword, SDM 3.4.5)."""
    if seg.unusable:
        return SegmentCache(seg.selector, seg.base, seg.limit, seg.dpl << DESC_DPL_SHIFT)
    flags = (seg.type * DESC_A | seg.dpl << DESC_DPL_SHIFT | (DESC_S if seg.s else 0)
             | (DESC_P if seg.present else 0) | (DESC_L if seg.l else 0)
             | (DESC_B if seg.db else 0) | (DESC_G if seg.g else 0))
    return SegmentCache(seg.selector, seg.base, seg.limit, flags)


@functools.cache
def _privilege_layout() -> PrivilegeSwitch:
    """The CPUX86State offsets, located once on a scratch Guest ABI machine (the probes run
    code and need the ABI's GDT, which a guest's own RAM may no longer hold)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_HASWELL)
    load_guest(uc, GuestImage(b"\xf4", IMAGE_BASE, IMAGE_BASE), 1)
    enter_long_mode(uc, layout.entry_state(0, 1, IMAGE_BASE))
    return PrivilegeSwitch(uc)


def privilege_switch(uc: Uc) -> PrivilegeSwitch:
    switch = copy.copy(_privilege_layout())
    switch.uc = uc
    switch.exception_delivered()
    return switch


class PythonBlockLog:
    """The native block ring's interface with a Python UC_HOOK_BLOCK (where gcc is missing)."""

    def __init__(self, uc: Uc, capacity: int):
        self.uc, self.capacity = uc, capacity
        self.entries: list[tuple[int, int]] = []
        self.handle = uc.hook_add(UC_HOOK_BLOCK, self._on_block)

    def _on_block(self, uc, address, size, user_data) -> None:
        self.entries.append((address, size))

    @property
    def count(self) -> int:
        return len(self.entries)

    def blocks(self, lo: int, hi: int) -> list[tuple[int, int]]:
        return self.entries[lo:hi]

    def reset(self) -> None:
        self.entries = []


class NativeBlockLog:
    """native.NativeBlockRecorder, installed for good, with the count PythonBlockLog has."""

    def __init__(self, lib, uc: Uc, capacity: int):
        self.recorder = native.NativeBlockRecorder(lib, uc, capacity)
        self.recorder.install()
        self.capacity = capacity
        self.blocks = self.recorder.blocks

    @property
    def count(self) -> int:
        return self.recorder.ring.count

    def reset(self) -> None:
        self.recorder.reset()


@dataclass
class HybridStop:
    """How a stretch ended: "before" an instruction for KVM (or an exception at it), "budget"
    (the instructions allowed ran), or "kicked" (stopped from outside)."""

    kind: str
    rip: int
    instructions: int  # run on unicorn (a lower bound where a hook ended the stretch)


class HybridCpu:
    """One unicorn CPU over a runner's guest RAM; run() is one recording stretch."""

    def __init__(self, memory, model, ring: int = RING):
        self.memory, self.model = memory, model
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(X.UC_CPU_X86_HASWELL)
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        uc.mem_map_ptr(0, RAM_SIZE, UC_PROT_READ | UC_PROT_WRITE, address)  # X once scanned
        self.privilege = privilege_switch(uc)
        self.watch = CodeWatch(uc, RAM_SIZE, self._on_candidate, self._code_changed,
                               starts=stop_starts)
        lib = native.load()
        self.log = NativeBlockLog(lib, uc, ring) if lib is not None else PythonBlockLog(uc, ring)
        self.recorder = "native" if lib is not None else "python"
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.snapshots: dict[int, bytes] = {}  # executable page -> its bytes as scanned
        self.tails: dict[tuple[int, int], tuple] = {}
        self.decoded: dict[int, tuple[bytes, bool]] = {}
        self.stopped_at: int | None = None
        self.legacy = None  # the x87/SSE state unicorn holds, as loaded
        self.cpl = 0
        self.stretches = self.blocks = self.retired = 0

    # --- hooks ----------------------------------------------------------------------------
    def _on_candidate(self, uc, address, size, user_data) -> None:
        if self.stops_at(address):
            self.stopped_at = address
            uc.emu_stop()

    def stops_at(self, address: int) -> bool:
        """Whether the instruction at `address` is one for KVM (cached per address)."""
        raw = bytes(self.memory[address:address + branches.MAX_INSTRUCTION_LENGTH])
        cached = self.decoded.get(address)
        if cached is None or not raw.startswith(cached[0]):
            insn = branches.decode(raw, address)
            cached = self.decoded[address] = (raw[:insn.len], stops_before(insn))
        return cached[1]

    def _on_interrupt(self, uc, intno, user_data) -> None:
        # a fault: RIP is still the faulting instruction, which KVM will run and fault on
        self.stopped_at = uc.reg_read(X.UC_X86_REG_RIP)
        uc.emu_stop()

    def _code_changed(self) -> None:
        self.tails.clear()

    # --- state in and out -----------------------------------------------------------------
    def load(self, vcpu, regs, sregs) -> None:
        """The vCPU's registers into unicorn: what 64-bit code at any CPL needs to run."""
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, sregs.gdt.base, sregs.gdt.limit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, sregs.idt.base, sregs.idt.limit, 0))
        uc.reg_write(X.UC_X86_REG_CR3, sregs.cr3)  # also flushes unicorn's TLB
        uc.reg_write(X.UC_X86_REG_CR4, sregs.cr4)
        uc.msr_write(MSR_EFER, sregs.efer)
        uc.reg_write(X.UC_X86_REG_CR0, sregs.cr0)
        self.privilege.write_segments({R_DS: segment_cache(sregs.ds), R_ES: segment_cache(sregs.es),
                                       R_FS: segment_cache(sregs.fs), R_GS: segment_cache(sregs.gs)})
        self.privilege.load(segment_cache(sregs.cs), segment_cache(sregs.ss))
        self.cpl = sregs.cs.selector & 3
        for name, reg in GPRS:
            uc.reg_write(reg, getattr(regs, name))
        uc.reg_write(X.UC_X86_REG_RSP, regs.rsp)
        uc.reg_write(X.UC_X86_REG_RFLAGS, regs.rflags & ~RFLAGS_TF)
        uc.reg_write(X.UC_X86_REG_RIP, regs.rip)
        legacy = KvmLegacy(vcpu).read_legacy()
        if legacy != self.legacy:
            UnicornLegacy(uc).write_legacy(legacy, XFEATURES_LEGACY)
            self.legacy = legacy

    def store(self, vcpu, regs) -> None:
        """unicorn's registers back into the vCPU (`regs` is updated and set)."""
        uc = self.uc
        for name, reg in GPRS:
            setattr(regs, name, uc.reg_read(reg))
        regs.rsp = uc.reg_read(X.UC_X86_REG_RSP)
        regs.rflags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        regs.rip = uc.reg_read(X.UC_X86_REG_RIP)
        vcpu.set_regs(regs)
        legacy = UnicornLegacy(uc).read_legacy()
        if legacy != self.legacy:
            KvmLegacy(vcpu).write_legacy(legacy, XFEATURES_LEGACY)
            self.legacy = legacy

    # --- code KVM may have changed --------------------------------------------------------
    def _refresh_code(self) -> None:
        """Executable pages KVM (or vlbr on its behalf) wrote since the last stretch: rescan
        them and drop their translations."""
        for page, seen in self.snapshots.items():
            now = bytes(self.memory[page:page + PAGE])
            if now != seen:  # as a store made for the guest: rescanned, translations dropped
                self.watch.host_write(page, now)
                self.snapshots[page] = now
                self.decoded.clear()

    def _executable(self, address: int) -> bool:
        if not self.watch.make_executable(address):
            return False
        page = address & ~(PAGE - 1)
        self.snapshots.setdefault(page, bytes(self.memory[page:page + PAGE]))
        return True

    # --- one stretch ----------------------------------------------------------------------
    def run(self, limit: int, kicked) -> HybridStop:
        """Run from the loaded state for at most `limit` instructions, retiring branches into
        the model; the registers stay in unicorn for store()."""
        uc, log = self.uc, self.log
        self.stretches += 1
        self.retired = 0  # branches retired into the model by this stretch
        self._refresh_code()
        spent = 0
        log.reset()
        while True:
            self.stopped_at = None
            count = min(limit - spent, log.capacity - log.count - 2)
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            before = log.count
            try:
                uc.emu_start(rip, NO_END, count=count)
                error = None
            except UcError as err:
                error = err
            fault = self.watch.take_fetch_fault()
            if error is not None and error.errno == UC_ERR_FETCH_PROT and fault is not None:
                self.privilege.exception_delivered()
                spent += log.count - before
                if self._executable(fault) and spent < limit:
                    continue  # the ring goes on: its last block branched to `fault`
                return self._end("before", fault, spent)
            if self.stopped_at is not None or error is not None or kicked():
                self.privilege.exception_delivered()
                here = uc.reg_read(X.UC_X86_REG_RIP) if self.stopped_at is None else self.stopped_at
                return self._end("kicked" if kicked() else "before", here,
                                 spent + log.count - before)
            here = uc.reg_read(X.UC_X86_REG_RIP)
            if self.stops_at(here):  # unicorn ended quietly at an invalid opcode
                return self._end("before", here, spent + log.count - before)
            spent += count
            self._drain()
            if spent >= limit:
                return self._end("budget", here, spent)

    def _end(self, kind: str, rip: int, spent: int) -> HybridStop:
        self.uc.reg_write(X.UC_X86_REG_RIP, rip)
        self._drain()
        return HybridStop(kind, rip, spent)

    # --- the ring into the model ----------------------------------------------------------
    def _drain(self) -> None:
        """The logged blocks' branches into the model; the last block never ended (its tail
        did not run: a stop, a fault, or the count, which logs the next block first)."""
        log, model = self.log, self.model
        n = log.count
        self.blocks += n
        if n > 1:
            if model.filters.call_stack:
                found = branches.paired_branches(log.blocks(0, n), None, self._branch)
            else:
                found = branches.newest_branches(log.blocks, n, None, model.depth,
                                                 model.filters.kind_ok, self._branch)
            for branch in found:
                if branch is not None:
                    self.retired += 1
                    model.retire_branch(branch)
        log.reset()

    def _branch(self, block: tuple[int, int], address: int) -> Branch | None:
        tail = self.tails.get(block)
        if tail is None:
            start, size = block
            tail = self.tails[block] = branches.decode_tail(
                bytes(self.memory[start:start + size]), start)
        return branches.branch_between(*tail, address, self.cpl)
