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
import dataclasses
from dataclasses import dataclass

import numpy as np
from iced_x86 import Code, EncodingKind, Instruction, Mnemonic, Register
from unicorn import UC_ERR_FETCH_PROT, UC_HOOK_BLOCK, UC_HOOK_INTR, Uc, UcError
from unicorn import x86_const as X

from vlbr.arch.x86 import MAX_INSN, MSR_EFER, XFEATURES_LEGACY
from vlbr.backends import branches
from vlbr.backends.base import RAM_SIZE
from vlbr.backends.layout import TSS_TYPE_AVAILABLE
from vlbr.backends.kvm.xsaves import KvmXstate
from vlbr.backends.software import native, uc_registers
from vlbr.backends.software.backend import scratch_privilege_switch
from vlbr.backends.software.codewatch import (PAGE, TO_FALLTHROUGH, CodeWatch,
                                              candidate_starts, pattern_offsets)
from vlbr.backends.software.fpu import UnicornLegacy
from vlbr.backends.software.ring_branches import ring_branches
from vlbr.backends.software.uc_cpu import shared_memory_cpu
from vlbr.backends.software.privilege import (DESC_A, DESC_B, DESC_DPL_SHIFT, DESC_G, DESC_L,
                                              DESC_P, DESC_S, R_DS, R_ES, R_FS, R_GS,
                                              PrivilegeSwitch, SegmentCache)
from vlbr.host import kvm as k
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
                   0x6C, 0x6D, 0x6E, 0x6F, 0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF,
                   0xC4, 0xC5, 0x62])  # the last three: VEX and EVEX in 64-bit mode
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
    if insn.encoding != EncodingKind.LEGACY:  # AVX state beyond XMM is KVM's alone
        return True
    if insn.code in MOV_TO_SREG or insn.code in MOV_CR_DR:
        return True
    if insn.mnemonic == Mnemonic.POP and insn.op0_register in (Register.FS, Register.GS):
        return True
    cls = branches.classify(insn)
    # far transfers change CPL/CS; a conditional to its own fall-through needs the flags
    return cls is not None and (cls.is_far or branches.needs_flags(insn, cls))


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


def kvm_segment_of(cache: SegmentCache):
    """The kvm_segment of a segment register as QEMU caches it (segment_cache's inverse)."""
    f = cache.flags
    return k.kvm_segment(base=cache.base, limit=cache.limit, selector=cache.selector,
                         type=(f // DESC_A) & 0xF, present=int(bool(f & DESC_P)),
                         dpl=(f >> DESC_DPL_SHIFT) & 3, db=int(bool(f & DESC_B)),
                         s=int(bool(f & DESC_S)), l=int(bool(f & DESC_L)),
                         g=int(bool(f & DESC_G)), unusable=int(not f & DESC_P))


DATA_SEGMENTS = ((R_DS, "ds"), (R_ES, "es"), (R_FS, "fs"), (R_GS, "gs"))


def store_data_segments(privilege: PrivilegeSwitch, sregs) -> None:
    """unicorn's DS, ES, FS and GS into a kvm_sregs (the caller sets it)."""
    for seg, name in DATA_SEGMENTS:
        setattr(sregs, name, kvm_segment_of(privilege.read(seg)))


def tr_cache(seg) -> SegmentCache:
    """TR as QEMU caches it after LTR: the descriptor read before the busy bit was set, so
    of type 9 (its I/O permission check wants that type)."""
    cache = segment_cache(seg)
    flags = (cache.flags & ~(0xF * DESC_A)) | TSS_TYPE_AVAILABLE * DESC_A
    return SegmentCache(cache.selector, cache.base, cache.limit, flags)


def load_system(uc: Uc, privilege: PrivilegeSwitch, sregs, cs: SegmentCache,
                ss: SegmentCache) -> None:
    """The vCPU's control, descriptor-table and segment registers into unicorn, with CS and
    SS (and so CPL) as given: what 64-bit code at any CPL needs to run as KVM would run it."""
    uc.reg_write(X.UC_X86_REG_GDTR, (0, sregs.gdt.base, sregs.gdt.limit, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, sregs.idt.base, sregs.idt.limit, 0))
    tr = tr_cache(sregs.tr)
    uc.reg_write(X.UC_X86_REG_TR, (tr.selector, tr.base, tr.limit, tr.flags))
    uc.reg_write(X.UC_X86_REG_CR3, sregs.cr3)  # also flushes unicorn's TLB
    uc.reg_write(X.UC_X86_REG_CR4, sregs.cr4)
    uc.msr_write(MSR_EFER, sregs.efer)
    uc.reg_write(X.UC_X86_REG_CR0, sregs.cr0)
    privilege.write_segments({seg: segment_cache(getattr(sregs, name))
                              for seg, name in DATA_SEGMENTS})
    privilege.load(cs, ss)


class LegacySync:
    """x87/SSE between KVM's XSAVE image and one unicorn CPU, copied only where changed
    (that CPU holds what this last gave it or took from it)."""

    def __init__(self, vcpu, table):
        self.kvm = KvmXstate(vcpu, table)  # its layout comes from the guest CPUID
        self.legacy = None

    def to_unicorn(self, uc: Uc) -> None:
        legacy = self.kvm.read_legacy()
        if legacy != self.legacy:
            UnicornLegacy(uc).write_legacy(legacy, XFEATURES_LEGACY)
            self.legacy = legacy

    def to_kvm(self, uc: Uc) -> None:
        # QEMU's MXCSR_MASK is its own, not state (fpu.py): keep KVM's
        legacy = dataclasses.replace(UnicornLegacy(uc).read_legacy(),
                                     mxcsr_mask=self.legacy.mxcsr_mask)
        if legacy != self.legacy:
            self.kvm.write_legacy(legacy, XFEATURES_LEGACY)
            self.legacy = legacy


def privilege_switch(uc: Uc) -> PrivilegeSwitch:
    """A PrivilegeSwitch for `uc`, its layout found on a scratch machine (a guest's own RAM
    may no longer hold the Guest ABI's GDT the probes need)."""
    switch = copy.copy(scratch_privilege_switch())
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

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n entries as the native ring holds them (starts, sizes)."""
        starts, sizes = zip(*self.entries[:n])
        return np.array(starts, np.uint64), np.array(sizes, np.uint32)

    def reset(self) -> None:
        self.entries = []


class NativeBlockLog:
    """native.NativeBlockRecorder logging every block (emu_start's count bounds a piece, not
    the recorder's byte budget), with the count PythonBlockLog has."""

    def __init__(self, lib, uc: Uc, capacity: int):
        self.recorder = native.NativeBlockRecorder(lib, uc, capacity)
        self.recorder.record = True
        self.recorder.arm(NO_END)
        self.capacity = capacity
        self.blocks = self.recorder.blocks

    @property
    def count(self) -> int:
        return self.recorder.ring.count

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.recorder.addresses[:n], self.recorder.sizes[:n]

    def reset(self) -> None:
        self.recorder.reset()
        self.recorder.resume()


class CodeStops:
    """A CodeWatch (software/codewatch.py) of `stop_starts` over KVM's memory, kept current
    across the stores KVM, or vlbr for it, makes while unicorn is not running."""

    def __init__(self, uc: Uc, memory, on_candidate, on_change, add_fence=None):
        self.uc, self.memory, self.on_change = uc, memory, on_change
        self.watch = CodeWatch(uc, RAM_SIZE, on_candidate, on_change, add_fence=add_fence,
                               starts=stop_starts)
        self.snapshots: dict[int, bytes] = {}  # executable page -> its bytes as scanned

    def refresh(self) -> None:
        """Rescan executable pages whose bytes changed and drop their translations."""
        for page, seen in self.snapshots.items():
            now = bytes(self.memory[page:page + PAGE])
            if now != seen:  # as a store made for the guest: rescanned, translations dropped
                self.watch.host_write(page, now)
                self.snapshots[page] = now

    def fetch_fault(self) -> int | None:
        return self.watch.take_fetch_fault()

    def executable(self, address: int) -> bool:
        """Scan the page at address and let it run; False outside guest RAM."""
        if not self.watch.make_executable(address):
            return False
        page = address & ~(PAGE - 1)
        self.snapshots.setdefault(page, bytes(self.memory[page:page + PAGE]))
        return True


class BranchLog:
    """The blocks one unicorn CPU ran (the native ring, else a Python hook) and the branches
    between them (backends.branches, as the software backend drains its ring)."""

    def __init__(self, uc: Uc, memory, ring: int | None = None):
        self.memory = memory
        ring = ring or RING  # read at run time: tests shrink it to cross many pieces
        lib = native.load()
        self.log = NativeBlockLog(lib, uc, ring) if lib is not None else PythonBlockLog(uc, ring)
        self.recorder = "native" if lib is not None else "python"
        # CodeWatch's no-op hooks after OUTs: native ones where the ring is (a Python hook
        # that happens to sit in a hot loop costs a callback per pass)
        self.add_fence = self.log.recorder.add_fence if lib is not None else None
        self.tails: dict[tuple[int, int], tuple] = {}
        self.cpl = 0
        self.blocks = self.retired = 0

    @property
    def count(self) -> int:
        return self.log.count

    @property
    def seen(self) -> int:
        """Blocks logged so far, drained or not."""
        return self.blocks + self.log.count

    def room(self) -> int:
        """Instructions unicorn may run before the ring could fill (a block each, at most,
        plus the next block it logs before a count stop)."""
        return self.log.capacity - self.log.count - 2

    def drain(self, model, prev=None):
        """The logged blocks' branches into the model, `prev` the block before the first;
        returns the last block, which has not ended (a stop, a fault, or the count, which
        logs the next block before it stops)."""
        log = self.log
        n = log.count
        if not n:
            return prev
        self.blocks += n
        last = log.blocks(n - 1, n)[0]
        if model.filters.call_stack:  # every branch counts: the pops may expose old pushes
            found = ring_branches(self._tail, *log.arrays(n), prev)
            log.reset()
            self.retired += len(found.from_ips)
            model.record_batch(found.from_ips, found.to_ips, found.kinds,
                               np.full(len(found.from_ips), self.cpl), is_return=found.is_return)
            return last
        found = branches.newest_branches(log.blocks, n, prev, model.depth,
                                         model.filters.kind_ok, self._branch)
        log.reset()
        for branch in found:
            if branch is not None:
                self.retired += 1
                model.retire_branch(branch)
        return last

    def code_changed(self) -> None:
        self.tails.clear()

    def _tail(self, block: tuple[int, int]):
        tail = self.tails.get(block)
        if tail is None:
            start, size = block
            tail = self.tails[block] = branches.decode_tail(
                bytes(self.memory[start:start + size]), start)
        return tail

    def _branch(self, block: tuple[int, int], address: int) -> Branch | None:
        return branches.branch_between(*self._tail(block), address, self.cpl)


@dataclass
class HybridStop:
    """How a stretch ended: "before" an instruction for KVM (or an exception at it), "budget"
    (the instructions allowed ran), or "kicked" (stopped from outside)."""

    kind: str
    rip: int
    instructions: int  # run on unicorn (a lower bound where a hook ended the stretch)


class HybridCpu:
    """One unicorn CPU over a runner's guest RAM; run() is one recording stretch."""

    def __init__(self, memory, model, ring: int | None = None):
        self.memory, self.model = memory, model
        self.uc = uc = shared_memory_cpu(memory)
        self.privilege = privilege_switch(uc)
        self.branches = BranchLog(uc, memory, ring)
        self.code = CodeStops(uc, memory, self._on_candidate, self._code_changed,
                              self.branches.add_fence)
        self.recorder = self.branches.recorder
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.decoded: dict[int, tuple[bytes, bool]] = {}
        self.stopped_at: int | None = None
        self.legacy: LegacySync | None = None  # x87/SSE, once a stretch has run
        self.stretches = self.retired = self.retired_before = 0

    @property
    def blocks(self) -> int:
        return self.branches.blocks

    # --- hooks ----------------------------------------------------------------------------
    def _on_candidate(self, uc, address, size, user_data) -> None:
        if self.stops_at(address):
            self.stopped_at = address
            uc.emu_stop()

    def stops_at(self, address: int) -> bool:
        """Whether the instruction at `address` is one for KVM (cached per address)."""
        raw = bytes(self.memory[address:address + MAX_INSN])
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
        self.branches.code_changed()
        self.decoded.clear()

    # --- state in and out -----------------------------------------------------------------
    def load(self, vcpu, regs, sregs) -> None:
        """The vCPU's registers into unicorn: what 64-bit code at any CPL needs to run."""
        load_system(self.uc, self.privilege, sregs, segment_cache(sregs.cs),
                    segment_cache(sregs.ss))
        self.branches.cpl = sregs.cs.selector & 3
        uc_registers.load(self.uc, regs)
        if self.legacy is None:
            self.legacy = LegacySync(vcpu, self.model.config.table)
        self.legacy.to_unicorn(self.uc)

    def store(self, vcpu, regs) -> None:
        """unicorn's registers back into the vCPU (`regs` is updated and set)."""
        uc_registers.store(self.uc, regs)
        vcpu.set_regs(regs)
        self.legacy.to_kvm(self.uc)

    # --- one stretch ----------------------------------------------------------------------
    def run(self, limit: int, kicked) -> HybridStop:
        """Run from the loaded state for at most `limit` instructions, retiring branches into
        the model; the registers stay in unicorn for store()."""
        uc, log = self.uc, self.branches
        self.stretches += 1
        self.retired_before = log.retired
        self.code.refresh()
        spent, prev = 0, None  # prev: the block the next drain pairs first
        while True:
            self.stopped_at = None
            count = min(limit - spent, log.room())
            before = log.seen
            try:
                uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP), NO_END, count=count)
                error = None
            except UcError as err:
                error = err
            fault = self.code.fetch_fault()
            if error is not None and error.errno == UC_ERR_FETCH_PROT and fault is not None:
                self.privilege.exception_delivered()
                spent += log.seen - before
                prev = log.drain(self.model, prev)  # its last block branched to `fault`
                if self.code.executable(fault) and spent < limit:
                    continue
                return self._end("before", fault, spent, prev)
            here = uc.reg_read(X.UC_X86_REG_RIP) if self.stopped_at is None else self.stopped_at
            ran = spent + log.seen - before
            if self.stopped_at is not None or error is not None or kicked():
                self.privilege.exception_delivered()
                return self._end("kicked" if kicked() else "before", here, ran, prev)
            if self.stops_at(here):  # unicorn ended quietly at an invalid opcode
                return self._end("before", here, ran, prev)
            spent += count
            log.drain(self.model, prev)  # a count stop: its last block starts the next piece
            prev = None
            if spent >= limit:
                return self._end("budget", here, spent, None)

    def _end(self, kind: str, rip: int, spent: int, prev) -> HybridStop:
        self.uc.reg_write(X.UC_X86_REG_RIP, rip)
        self.branches.drain(self.model, prev)
        self.retired = self.branches.retired - self.retired_before
        return HybridStop(kind, rip, spent)
