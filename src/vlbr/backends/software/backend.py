"""Backend "software": guests run on unicorn (QEMU TCG) with vlbr's Arch LBR model.

One unicorn CPU, one saved context per vCPU, switched on yield/exit (the model's put()/load()
follow each switch). What unicorn cannot do the backend does itself:
- RDMSR/WRMSR/XSAVES/XRSTORS/XSETBV: code hooks at every possible start (codewatch.py);
  Arch LBR MSRs go to the model, a short list of MSRs QEMU implements to QEMU, others #GP.
- CPUID from MachineConfig.cpuid (UC_HOOK_INSN), with KVM's runtime fix-ups (OSXSAVE,
  XSAVE sizes for the current XCR0/XSS).
- exceptions, INT n, INT1 and SYSCALL: delivered by us through the guest IDT / LSTAR
  (interrupts.py, privilege.py); recorded as OTHER branches (exceptions also set LER).
- budgets: max_steps bounds each uninterrupted stretch and max_exits the number of stretches
  (a stretch ends at every emulated instruction, exception, page scan or vCPU switch); the
  timeout is a watchdog thread's emu_stop (backends.watch). A block hook (the recording
  one, else the native one) counts a stretch's block bytes and stops it before a block once
  they reach max_steps * MAX_INSN, after recording the branch into it: at least max_steps
  instructions ran (none is longer), at most about 15 times as many. unicorn's
  emu_start count costs a hook per instruction, so it counts only where no block hook runs
  (no native library and LBREn clear). Reaching a budget ends the run with
  stats["stopped"] = "max_steps" (or the watch's reason) and each vCPU's stop.
- port stops: QEMU notices an emu_stop only before a block or after a code hook, so
  CodeWatch puts a no-op code hook after every OUT: a stopping port write (exit, yield,
  console limit) ends the stretch right after the OUT.
- branches: while the model records, a UC_HOOK_BLOCK looks at the last instruction of the
  block that just ran (branches.py); a conditional is recorded only when taken. The native
  hook (native/block_ring.c) stays installed for the run: it logs blocks only while the
  model records with every CPL, else it only counts the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import functools

import iced_x86
import numpy as np
from iced_x86 import Mnemonic, OpKind
from unicorn import (UC_ERR_FETCH_PROT, UC_ERR_INSN_INVALID, UC_HOOK_BLOCK, UC_HOOK_INSN,
                     UC_HOOK_INTR, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import x86_const as X

from vlbr.arch.x86 import (CR4_OSXSAVE, EXCEPTION_NAMES, MAX_INSN, MSR_EFER, MSR_FMASK,
                           MSR_LSTAR, MSR_STAR, RFLAGS_TF, VECTORS_WITH_ERROR_CODE, VECTOR_DB,
                           VECTOR_GP, VECTOR_UD, XFEATURE_AVX, XFEATURE_SSE, XFEATURE_X87,
                           XFEATURES_LEGACY)
from vlbr.arch.xsave import XsaveLayout
from vlbr.backends import layout
from vlbr.backends.base import (IMAGE_BASE, PORT_CONSOLE, PORT_EXIT, PORT_YIELD, RAM_SIZE,
                                BackendUnavailable, MachineConfig, RunResult, StopReason,
                                VcpuStop)
from vlbr.backends.watch import INTERRUPTED, TIMEOUT, RunWatch
from vlbr.backends.branches import (EVENT, branch_between, classify, decode_tail,
                                    newest_branches, taken_before)
from vlbr.backends.image import GuestImage
from vlbr.errors import VlbrError
from vlbr.policy.runtime_cpuid import runtime_cpuid
from vlbr.vcpu import ArchLbrVcpu, Branch, GeneralProtection, InvalidOpcode
from vlbr.x86.operands import UnsupportedOperand
from vlbr.x86.legacy_xstate import LegacyState
from vlbr.x86.xstate import UnmodelledXstate

from . import native
from .codewatch import CodeWatch
from .fpu import UnicornLegacy, uc_xrstors, uc_xsaves
from .interrupts import DeliveryFailed, InterruptDelivery
from .privilege import PrivilegeSwitch, enter_syscall
from .ring_branches import ring_branches
from .uc_cpu import x86_64_cpu
from .uc_operands import operand_address

# MSRs QEMU implements and the Guest ABI lets a guest use; any other non-LBR MSR #GPs, as
# on a CPU without it (QEMU itself would read 0 and ignore writes).
QEMU_MSRS = frozenset([0x10, 0x1B, 0x174, 0x175, 0x176, 0x277, MSR_EFER, MSR_STAR, MSR_LSTAR,
                       0xC0000083, MSR_FMASK, 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103])
NO_END = 0xFFFF_FFFF_FFFF_FFFF
RAM_REGION = 256 << 10
NATIVE_RING = 1 << 18  # blocks logged natively before the ring is drained mid-stretch
_QUIET_STOPS = frozenset([Mnemonic.INT1, Mnemonic.UD0, Mnemonic.UD1, Mnemonic.UD2])



class SoftwareBackendError(VlbrError):
    """The guest did something the software backend does not emulate; the message says what."""


@dataclass
class VcpuRun:
    index: int
    model: ArchLbrVcpu
    context: object = None
    console: list[str] = field(default_factory=list)
    exit_status: int | None = None
    done: bool = False
    error: str | None = None
    stop: VcpuStop | None = None
    xcr0: int = XFEATURE_X87 | XFEATURE_SSE
    last_block: tuple[int, int] | None = None  # the block that ran last, while recording


class _Stop:
    """Why emu_start returned, set by a hook before it called emu_stop()."""

    NONE, EMULATE, EXIT, YIELD, SYSCALL, INTERRUPT, CONSOLE_FULL, BUDGET = range(8)


def enter_long_mode(uc: Uc, e: layout.VcpuEntry) -> None:
    """Load a Guest ABI entry state into a fresh unicorn CPU (segment caches come from the GDT)."""
    uc.reg_write(X.UC_X86_REG_GDTR, (0, e.gdt.base, e.gdt.limit, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, e.idt.base, e.idt.limit, 0))
    uc.reg_write(X.UC_X86_REG_CR3, e.cr3)
    uc.reg_write(X.UC_X86_REG_CR4, e.cr4)
    uc.msr_write(MSR_EFER, e.efer)
    uc.reg_write(X.UC_X86_REG_CR0, e.cr0)
    uc.reg_write(X.UC_X86_REG_TR, (e.tr.selector, e.tr.base, e.tr.limit, e.tr.access_rights << 8))
    for reg, seg in ((X.UC_X86_REG_CS, e.cs), (X.UC_X86_REG_SS, e.ss), (X.UC_X86_REG_DS, e.ds),
                     (X.UC_X86_REG_ES, e.es), (X.UC_X86_REG_FS, e.fs), (X.UC_X86_REG_GS, e.gs)):
        uc.reg_write(reg, seg.selector)
    for reg, value in ((X.UC_X86_REG_RSP, e.rsp), (X.UC_X86_REG_RDI, e.rdi),
                       (X.UC_X86_REG_RSI, e.rsi), (X.UC_X86_REG_RFLAGS, e.rflags),
                       (X.UC_X86_REG_RIP, e.rip)):
        uc.reg_write(reg, value)
    # unicorn starts FCW and MXCSR at 0 with every x87 register valid; KVM's vCPU (and a CPU
    # after FNINIT) has x87 and SSE in their initial configuration (FCW 0x37F, MXCSR 0x1F80).
    UnicornLegacy(uc).write_legacy(LegacyState(), XFEATURES_LEGACY)
    set_xcr0(uc, e.xcr0)


def set_xcr0(uc: Uc, value: int) -> None:
    """XCR0 through a real XSETBV (unicorn 2.1 has no XCR0 register): a 6-byte stub run
    on scratch bytes that are restored afterwards, before the guest runs."""
    scratch = 0x8000
    saved = bytes(uc.mem_read(scratch, 16))
    rip, rax, rcx, rdx = (uc.reg_read(r) for r in (X.UC_X86_REG_RIP, X.UC_X86_REG_RAX,
                                                    X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))
    uc.mem_write(scratch, b"\x31\xc9\x0f\x01\xd1\xf4")  # xor ecx,ecx; xsetbv; hlt
    uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
    uc.emu_start(scratch, scratch + 5)
    uc.mem_write(scratch, saved)
    uc.ctl_remove_cache(scratch, scratch + 16)
    for reg, v in ((X.UC_X86_REG_RAX, rax), (X.UC_X86_REG_RCX, rcx), (X.UC_X86_REG_RDX, rdx),
                   (X.UC_X86_REG_RIP, rip)):
        uc.reg_write(reg, v)


def load_guest(uc: Uc, image, vcpus: int, executable: bool = True) -> None:
    """Map the Guest ABI RAM with its low memory (page tables, GDTs, TSSs) and the image.

    RAM is mapped in 256 KiB regions: changing one page's protection then copies 256 KiB
    (unicorn splits the region), not all 8 MiB."""
    perms = UC_PROT_ALL if executable else UC_PROT_READ | UC_PROT_WRITE
    for address in range(0, RAM_SIZE, RAM_REGION):
        uc.mem_map(address, RAM_REGION, perms)
    for address, data in layout.low_memory(vcpus):
        uc.mem_write(address, data)
    uc.mem_write(image.load_address, image.data)


_NULL_IMAGE = GuestImage(b"\xf4", IMAGE_BASE, IMAGE_BASE)  # HLT: enough to probe the CPU


@functools.cache
def scratch_privilege_switch() -> PrivilegeSwitch:
    """The CPUX86State layout, located on a scratch Guest ABI machine (the probes run code
    and need the ABI's GDT); raises BackendUnavailable where unicorn cannot build it."""
    uc = x86_64_cpu()
    load_guest(uc, _NULL_IMAGE, 1)
    enter_long_mode(uc, layout.entry_state(0, 1, IMAGE_BASE))
    return PrivilegeSwitch(uc)


class SoftwareBackend:
    """Backend "software": unicorn 2 with vlbr's Arch LBR model (see module doc)."""

    name = "software"

    def unavailable_reason(self) -> str | None:
        """None when unicorn builds the Guest ABI machine (incl. the context layout checks)."""
        try:
            scratch_privilege_switch()
        except BackendUnavailable as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure means unicorn cannot run here
            return f"unicorn cannot build the x86-64 Guest ABI machine: {exc}"
        return None

    def run(self, image, machine: MachineConfig) -> RunResult:
        return SoftwareMachine(image, machine).run()


class SoftwareMachine:
    """One run of a guest image on unicorn: memory, vCPU contexts, hooks and the run loop."""

    def __init__(self, image, machine: MachineConfig):
        if not 1 <= machine.vcpus <= layout.MAX_VCPUS:
            raise SoftwareBackendError(f"{machine.vcpus} vCPUs: the Guest ABI lays out 1..{layout.MAX_VCPUS}")
        if image.load_address < IMAGE_BASE or image.end > RAM_SIZE:
            raise SoftwareBackendError(
                f"image {image.load_address:#x}..{image.end:#x} is outside {IMAGE_BASE:#x}..{RAM_SIZE:#x}")
        self.image, self.machine = image, machine
        self.uc = uc = x86_64_cpu()
        load_guest(uc, image, machine.vcpus)
        self.vcpus = [VcpuRun(n, ArchLbrVcpu(machine.lbr)) for n in range(machine.vcpus)]
        for run in self.vcpus:
            enter_long_mode(uc, layout.entry_state(run.index, machine.vcpus, image.entry))
            run.context = uc.context_save()
        self.privilege = PrivilegeSwitch(uc)
        lib = native.load() if machine.native_recording else None
        self.native = None if lib is None else native.NativeBlockRecorder(lib, uc, NATIVE_RING)
        uc.mem_protect(0, RAM_SIZE, UC_PROT_READ | UC_PROT_WRITE)  # CodeWatch makes pages X
        uc.ctl_flush_tb()
        self.watch = CodeWatch(uc, RAM_SIZE, self._on_candidate, self._code_changed,
                               None if self.native is None else self.native.add_fence)
        self.delivery = InterruptDelivery(uc, self.privilege, self.watch.host_write)
        self.current: VcpuRun = self.vcpus[0]
        self.stop, self.stop_arg = _Stop.NONE, None
        self.skip_once: int | None = None
        self.last_delivery: tuple[int, int] | None = None  # (vector, handler) delivered last
        self.cr2: int | None = None  # the guest's CR2 as a stopping hook saw it
        self.block_hook: str | None = None  # "native", "python" or None (not recording)
        self.python_hook = None
        self.spent = self.budget = 0  # the stretch's block bytes, while the Python hook counts
        self.cpl = 0  # CPL of the current vCPU, refreshed per emu_start and on far branches
        self.tails: dict[tuple[int, int], tuple] = {}
        self.stats = {"backend": "software", "stretches": 0, "turns": 0, "branches_seen": 0, "emulated": 0,
                      "exceptions": 0, "code_hooks": 0}
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)

    # -- hooks (they only note what happened and stop; the run loop acts) ----------------

    def _halt(self, why: int, arg=None) -> None:
        self.stop, self.stop_arg = why, arg
        self.cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)  # unicorn reads -2 once stopped
        self.uc.emu_stop()

    def _on_candidate(self, uc, address, size, user_data) -> None:
        if address == self.skip_once:
            self.skip_once = None
            return
        insn = iced_x86.Decoder(64, bytes(uc.mem_read(address, MAX_INSN)), ip=address).decode()
        if insn.near_branch_target == insn.next_ip and self.block_hook == "native":
            self._to_fallthrough(insn)
            return
        if insn.mnemonic in (Mnemonic.RDMSR, Mnemonic.WRMSR, Mnemonic.XSAVES, Mnemonic.XSAVES64,
                             Mnemonic.XRSTORS, Mnemonic.XRSTORS64, Mnemonic.XSETBV):
            self._halt(_Stop.EMULATE, insn)

    def _to_fallthrough(self, insn) -> None:
        """A conditional branch to its own fall-through, before it runs (native recording):
        the ring so far becomes records, then the flags decide (the pair it ends is skipped
        at the next drain, see _branch_to)."""
        cls = classify(insn)
        if cls is None or not cls.conditional:
            return
        self._drain()
        if taken_before(insn, self.uc.reg_read(X.UC_X86_REG_RFLAGS),
                        self.uc.reg_read(X.UC_X86_REG_RCX)):
            self.stats["branches_seen"] += 1
            self.current.model.retire_branch(self._taken((insn, cls), insn.next_ip))

    def _code_changed(self) -> None:
        self.tails.clear()

    def _on_cpuid(self, uc, user_data) -> int:
        run = self.current
        regs = runtime_cpuid(self.machine.cpuid, uc.reg_read(X.UC_X86_REG_EAX),
                             uc.reg_read(X.UC_X86_REG_ECX), apic_id=run.index,
                             cr4=uc.reg_read(X.UC_X86_REG_CR4), xcr0=run.xcr0, xss=run.model.xss)
        for reg, value in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX,
                               X.UC_X86_REG_RDX), regs.as_tuple()):
            uc.reg_write(reg, value)
        return 1  # skip QEMU's own CPUID

    def _on_out(self, uc, port, size, value, user_data) -> None:
        if port == PORT_CONSOLE:
            self.current.console.append(chr(value & 0xFF))
            if len(self.current.console) >= self.machine.console_limit:
                self._halt(_Stop.CONSOLE_FULL)
        elif port == PORT_EXIT:
            self._halt(_Stop.EXIT, value & 0xFFFFFFFF)
        elif port == PORT_YIELD:
            self._halt(_Stop.YIELD)

    def _on_in(self, uc, port, size, user_data) -> int:
        return (1 << (8 * size)) - 1  # no device: the bus floats high

    def _on_syscall(self, uc, user_data) -> None:
        self._halt(_Stop.SYSCALL, uc.reg_read(X.UC_X86_REG_RIP))

    def _on_interrupt(self, uc, intno, user_data) -> None:
        # QEMU's error code and exception_is_int are only intact inside the hook
        error_code, software = self.privilege.last_exception()
        self._halt(_Stop.INTERRUPT, (intno, uc.reg_read(X.UC_X86_REG_RIP), error_code, software))

    def _on_block(self, uc, address, size, user_data) -> None:
        """Record the branch that ended the previous block, if it was taken; stop before this
        block if the stretch's budget is spent (the stop lands once the hook returns, so the
        branch into the block, which did retire, is still recorded)."""
        if self.spent >= self.budget:
            self._halt(_Stop.BUDGET)
        self.spent += size
        run = self.current
        prev, run.last_block = run.last_block, (address, size)
        if prev is None:
            return
        insn, cls = self._tail(prev)
        flags = (uc.reg_read(X.UC_X86_REG_RFLAGS), uc.reg_read(X.UC_X86_REG_RCX))
        branch = branch_between(insn, cls, address, self.cpl, flags)
        if branch is None:
            return
        if cls.is_far:  # only far transfers change CPL inside a slice
            self.cpl = uc.reg_read(X.UC_X86_REG_CS) & 3
            branch = branch._replace(cpl=self.cpl)
        self.stats["branches_seen"] += 1
        run.model.retire_branch(branch)

    def _tail(self, block: tuple[int, int]):
        tail = self.tails.get(block)
        if tail is None:
            tail = self.tails[block] = self._decode_tail(*block)
        return tail

    def _branch_to(self, tail, address: int) -> Branch | None:
        """The branch from a block's last instruction to the next block at `address`, or None
        (a conditional whose target is its fall-through is undecidable from addresses and is
        the caller's)."""
        return branch_between(*tail, address, self.cpl)

    def _taken(self, tail, address: int) -> Branch:
        insn, cls = tail
        return Branch(insn.ip, address, cls.kind, self.cpl, is_call=cls.is_call,
                      is_return=cls.is_return)

    def _drain(self) -> None:
        """Turn the blocks the native hook logged into records, as _on_block would have:
        every pair (block, next block) in order in call-stack mode; otherwise newest first
        until the LBR is full, as older pushes would only be shifted out."""
        if self.block_hook != "native":
            return
        rec, run = self.native, self.current
        n = rec.reset()
        if not n:
            return
        self.stats["native_blocks"] = self.stats.get("native_blocks", 0) + n
        prev, run.last_block = run.last_block, rec.blocks(n - 1, n)[0]
        model = run.model
        if model.filters.call_stack:  # every branch counts: the pops may expose old pushes
            self._retire_all(rec.addresses[:n], rec.sizes[:n], prev)
            return
        branches = self._newest_branches(rec, n, prev, model.depth, model.filters.kind_ok)
        for branch in branches:
            if branch is not None:
                self.stats["branches_seen"] += 1  # natively: only those that reach a record
                model.retire_branch(branch)

    def _retire_all(self, addresses, sizes, prev) -> None:
        found = ring_branches(self._tail, addresses, sizes, prev)
        self.stats["branches_seen"] += len(found.from_ips)
        self.current.model.record_batch(found.from_ips, found.to_ips, found.kinds,
                                        np.full(len(found.from_ips), self.cpl),
                                        is_return=found.is_return)

    def _newest_branches(self, rec, n: int, prev, depth: int, kind_ok) -> list:
        """The newest `depth` branches of the ring that pass the type filter, oldest first."""
        return newest_branches(rec.blocks, n, prev, depth, kind_ok, self._block_branch)

    def _block_branch(self, block: tuple[int, int], address: int) -> Branch | None:
        return self._branch_to(self._tail(block), address)

    def _decode_tail(self, address: int, size: int):
        return decode_tail(bytes(self.uc.mem_read(address, size)), address)

    # -- recording on/off -----------------------------------------------------------------

    def _sync_recording(self) -> None:
        """Record blocks only while the current vCPU's model records: in the native ring where
        it is exact (every CPL recorded: the ring holds no CPL), else with a Python hook."""
        model = self.current.model
        want = None
        if model.recording:
            native_ok = self.native is not None and all(model.filters.cpl_ok)
            want = "native" if native_ok else "python"
        if want != self.block_hook:
            self._drain()
            if self.native is not None:
                self.native.record = want == "native"
            if "python" in (want, self.block_hook):
                self._swap_python_hook(want == "python")
            self.block_hook = want
        if want is None:
            self.current.last_block = None

    def _swap_python_hook(self, on: bool) -> None:
        if on:
            self.python_hook = self.uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        else:
            self.uc.hook_del(self.python_hook)
        self.uc.ctl_flush_tb()  # blocks translated before carry no (or the old) hook call

    # -- emulation of what the hooks stopped on --------------------------------------------

    def _decode(self, address: int):
        return iced_x86.Decoder(64, bytes(self.uc.mem_read(address, MAX_INSN)), ip=address).decode()

    def _reg(self, reg) -> int:
        return self.uc.reg_read(reg)

    def _cpl(self) -> int:
        return self._reg(X.UC_X86_REG_CS) & 3

    def _raise(self, vector: int, fault_ip: int, error_code: int | None = None,
               return_ip: int | None = None, software: bool = False) -> None:
        """Deliver an exception and record it as the model's exception event (LER)."""
        if (vector, fault_ip) == self.last_delivery:
            # Delivery writes the frame through physical memory, not the guest's page tables,
            # so where a CPU would fault on the stack or IDT (#DF, then shutdown) we see the
            # handler's own first instruction fault: say so instead of looping.
            raise DeliveryFailed(
                f"{EXCEPTION_NAMES.get(vector, f'vector {vector}')} at the first instruction "
                f"of its own handler {fault_ip:#x} (this backend delivers exceptions without "
                f"walking the guest page tables; a CPU would triple-fault here)")
        delivered, handler, cpl = self.delivery.deliver(
            vector, fault_ip if return_ip is None else return_ip, error_code,
            fault_ip if software else None)
        self.stats["exceptions"] += 1
        self.last_delivery = (vector, handler)
        self.current.model.exception(fault_ip, handler, cpl)
        self.current.last_block = None

    def _emulate(self, insn) -> None:
        self.stats["emulated"] += 1
        m = insn.mnemonic
        if self._cpl() != 0:  # all of them are CPL0-only (SDM: #GP(0) otherwise)
            self._raise(VECTOR_GP, insn.ip, 0)
            return
        try:
            if m == Mnemonic.RDMSR:
                self._rdmsr()
            elif m == Mnemonic.WRMSR:
                self._wrmsr()
            elif m == Mnemonic.XSETBV:
                self._xsetbv(insn)
                return  # QEMU runs the instruction itself
            else:
                self._xsaves(insn, restore=m in (Mnemonic.XRSTORS, Mnemonic.XRSTORS64))
        except GeneralProtection:
            self._raise(VECTOR_GP, insn.ip, 0)
            return
        except InvalidOpcode:
            self._raise(VECTOR_UD, insn.ip)
            return
        self.uc.reg_write(X.UC_X86_REG_RIP, insn.next_ip)
        self.current.last_block = None
        self._sync_recording()

    def _rdmsr(self) -> None:
        msr, model = self._reg(X.UC_X86_REG_ECX) & 0xFFFFFFFF, self.current.model
        if model.owns(msr):
            value = model.rdmsr(msr)
        elif msr in QEMU_MSRS:
            value = self.uc.msr_read(msr)
        else:
            raise GeneralProtection(f"RDMSR {msr:#x}: no such MSR on this vCPU")
        self.uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        self.uc.reg_write(X.UC_X86_REG_RDX, value >> 32 & 0xFFFFFFFF)

    def _wrmsr(self) -> None:
        msr, model = self._reg(X.UC_X86_REG_ECX) & 0xFFFFFFFF, self.current.model
        value = (self._reg(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | self._reg(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        if model.owns(msr):
            model.wrmsr(msr, value)
        elif msr in QEMU_MSRS:
            self.uc.msr_write(msr, value)
        else:
            raise GeneralProtection(f"WRMSR {msr:#x}: no such MSR on this vCPU")

    def _xsetbv(self, insn) -> None:
        """Track XCR0 (unicorn 2.1 cannot read it back), then let QEMU execute XSETBV."""
        ecx = self._reg(X.UC_X86_REG_ECX) & 0xFFFFFFFF
        value = (self._reg(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | self._reg(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        main = self.machine.cpuid.regs(0xD, 0)
        supported = main.edx << 32 | main.eax
        if (ecx != 0 or not value & XFEATURE_X87 or value & ~supported
                or value & XFEATURE_AVX and not value & XFEATURE_SSE):
            self._raise(VECTOR_GP, insn.ip, 0)
            return
        self.current.xcr0 = value
        self.skip_once = insn.ip

    def _operand_address(self, insn) -> int:
        try:
            return operand_address(self.uc, insn)
        except UnsupportedOperand as exc:
            raise SoftwareBackendError(f"{insn} at {insn.ip:#x}: {exc}") from None

    def _xsaves(self, insn, restore: bool) -> None:
        """XSAVES/XRSTORS of x87, SSE and component 15 on the guest's bytes (fpu.py)."""
        if insn.op0_kind != OpKind.MEMORY:
            raise InvalidOpcode("XSAVES/XRSTORS without a memory operand")
        if not self._reg(X.UC_X86_REG_CR4) & CR4_OSXSAVE:
            raise InvalidOpcode("XSAVES/XRSTORS with CR4.OSXSAVE clear")
        run, model = self.current, self.current.model
        if not self.machine.lbr.xsaves:
            raise InvalidOpcode("XSAVES/XRSTORS without CPUID.(0xD,1):EAX[3]")
        xss = self.current.model.xss
        rfbm = (self._reg(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | self._reg(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        address = self._operand_address(insn)
        misalign = address & 63
        try:
            size = XsaveLayout.for_mask(self.machine.cpuid, run.xcr0 | xss, compacted=True).size
        except ValueError as exc:
            raise SoftwareBackendError(f"XSAVES area size: {exc}") from None
        try:
            area = bytearray(self.uc.mem_read(address - misalign, size + misalign))
        except UcError:
            raise GeneralProtection(f"XSAVES area at {address:#x} is not guest RAM") from None
        op = uc_xrstors if restore else uc_xsaves
        before = bytes(area)
        try:
            op(self.uc, model, self.machine.cpuid, run.xcr0, xss, rfbm, area, misalign,
               wide=insn.mnemonic in (Mnemonic.XSAVES64, Mnemonic.XRSTORS64))
        except UnmodelledXstate as exc:
            raise SoftwareBackendError(f"{insn} at {insn.ip:#x}: {exc}") from None
        if area != before:
            self.watch.host_write(address - misalign, bytes(area))

    def _syscall(self, rip: int) -> None:
        """SYSCALL in 64-bit mode (SDM Vol. 2B): unicorn skips it, so we perform it."""
        entry = enter_syscall(self.uc, self.privilege, rip)
        if entry is None:
            self._raise(VECTOR_UD, rip)
            return
        self.current.last_block = None
        self.current.model.retire_branch(Branch(rip, entry.rip, EVENT.kind, 0))

    def _interrupt(self, intno: int, rip: int, error_code: int, software: int) -> None:
        """UC_HOOK_INTR: QEMU raised a vector. For INT n/INT3/INTO (QEMU's exception_is_int)
        RIP is past the instruction; for a fault RIP is the faulting instruction and QEMU's
        error code is the architectural one."""
        if intno == VECTOR_DB:
            self._debug_trap(rip)
            return
        if software:
            two = self._decode(rip - 2)
            ip = two.ip if two.mnemonic == Mnemonic.INT and two.next_ip == rip else rip - 1
            self._raise(intno, ip, return_ip=rip, software=True)
            return
        self._raise(intno, rip, error_code if intno in VECTORS_WITH_ERROR_CODE else None)

    def _invalid(self, rip: int) -> None:
        """UC_ERR_INSN_INVALID: QEMU's #UD, or INT1 (icebp) which QEMU routes to its debugger."""
        insn = iced_x86.Decoder(64, bytes(self.uc.mem_read(rip, MAX_INSN)), ip=rip).decode()
        if insn.mnemonic == Mnemonic.INT1:
            self._debug_trap(insn.next_ip)
            return
        self._raise(VECTOR_UD, rip)

    def _debug_trap(self, return_ip: int) -> None:
        """#DB (INT1, RFLAGS.TF): the model clears LBREn, so the delivery is not recorded."""
        self.current.model.debug_exception()
        self._sync_recording()
        self.delivery.deliver(VECTOR_DB, return_ip)
        self.stats["exceptions"] += 1
        self.current.last_block = None

    # -- the run loop ---------------------------------------------------------------------

    def _switch_to(self, run: VcpuRun) -> None:
        if run is self.current:
            return
        old = self.current
        old.context = self.uc.context_save()
        old.model.put()
        self.current = run
        run.model.load()
        self.uc.context_restore(run.context)
        self._sync_recording()

    def _run_slice(self, budget: int) -> str:
        """Run the current vCPU until it yields, exits or fails; returns why it stopped."""
        run, uc = self.current, self.uc
        while True:
            if self.run_watch.reason is not None:
                return self.run_watch.reason
            self.stretches_left -= 1
            if self.stretches_left < 0:
                return "max_exits"
            self.stop, self.stop_arg = _Stop.NONE, None
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            self.cpl = uc.reg_read(X.UC_X86_REG_CS) & 3
            self.stats["stretches"] += 1
            self.cr2, cr2 = None, uc.reg_read(X.UC_X86_REG_CR2)
            # At an instruction boundary no delivery is in progress; a #PF QEMU raised inside
            # the last stretch (a lazily scanned page) would make the next #GP a #DF.
            self.privilege.exception_delivered()
            error = self._stretch(rip, budget)
            # Every stop leaves unicorn's CR2 at -2: put back what the guest had (a hook
            # saw it, with a #PF's new address), else what it had when the stretch began.
            uc.reg_write(X.UC_X86_REG_CR2, cr2 if self.cr2 is None else self.cr2)
            self._drain()
            try:
                outcome = self._handle_stop(error)
            except DeliveryFailed as exc:
                self._end(run, StopReason.SHUTDOWN, f"vCPU {run.index} shut down: {exc}")
                return "shutdown"
            if outcome is not None:
                return outcome

    def _stretch(self, rip: int, steps: int) -> UcError | None:
        """emu_start until a hook stops the CPU or `steps` run out (see the module doc); a
        full native ring is drained and the stretch goes on."""
        count = self._arm_budget(steps)
        while True:
            try:
                self.uc.emu_start(rip, NO_END, count=count)
            except UcError as exc:
                return exc
            if not self._only_the_ring_filled():
                return None
            self._drain()
            self.uc.reg_write(X.UC_X86_REG_CR2, self.cr2)
            rip = self.uc.reg_read(X.UC_X86_REG_RIP)
            self.native.resume()

    def _arm_budget(self, steps: int) -> int:
        """Arm the hook that counts this stretch's budget; returns emu_start's count (0: none)."""
        budget = steps * MAX_INSN
        if self.block_hook == "python":  # it counts: the native hook would stop before it ran
            self.spent, self.budget, budget = 0, budget, native.MAX_U64
        if self.native is not None:
            self.native.arm(budget)
            return 0
        return steps if self.block_hook is None else 0

    def _only_the_ring_filled(self) -> bool:
        """After emu_start returned: notes a native stop (its CR2, a spent budget); True when
        nothing but the ring filling up stopped the CPU."""
        ring = self.native
        if ring is None or ring.stopped == native.RingStop.RUNNING or self.stop != _Stop.NONE:
            return False
        self.cr2 = ring.cr2
        if ring.stopped == native.RingStop.BUDGET_SPENT:
            self.stop = _Stop.BUDGET
            return False
        return self.run_watch.reason is None

    def _handle_stop(self, error: UcError | None) -> str | None:
        run, uc, stop, arg = self.current, self.uc, self.stop, self.stop_arg
        if error is not None:
            fault = self.watch.take_fetch_fault()
            if error.errno == UC_ERR_FETCH_PROT and fault is not None:
                # QEMU raised it as a #PF: the next stretch starts with no exception in progress
                if not self.watch.make_executable(fault):
                    uc.reg_write(X.UC_X86_REG_CR2, fault)
                    self._raise(14, uc.reg_read(X.UC_X86_REG_RIP), 0x10)
                return None
            if stop == _Stop.INTERRUPT:
                self._interrupt(*arg)
                return None
            if error.errno == UC_ERR_INSN_INVALID:
                self._invalid(uc.reg_read(X.UC_X86_REG_RIP))
                return None
            self._end(run, StopReason.ERROR, (
                f"vCPU {run.index}: unicorn stopped at {uc.reg_read(X.UC_X86_REG_RIP):#x}: "
                f"{error} (not delivered as a guest exception: the software backend cannot "
                f"say which one the CPU would raise)"))
            return "error"
        if stop == _Stop.BUDGET:
            return "max_steps"
        if stop == _Stop.NONE:
            if self.run_watch.reason is not None:  # stopped from outside
                return self.run_watch.reason
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            if uc.reg_read(X.UC_X86_REG_RFLAGS) & RFLAGS_TF:  # QEMU's single-step trap
                self._debug_trap(rip)
                return None
            here = self._decode(rip)
            if here.mnemonic in _QUIET_STOPS or here.code == iced_x86.Code.INVALID:
                self._invalid(rip)  # with a block hook QEMU stops on these without an error
                return None
            if uc.mem_read(rip - 1, 1) == b"\xf4" and self._decode(rip - 1).mnemonic == Mnemonic.HLT:
                self._end(run, StopReason.HALTED, f"vCPU {run.index} halted at {rip - 1:#x} "
                          f"with no interrupt to wake it")
                return "halted"
            return "max_steps"
        if stop == _Stop.EMULATE:
            self._emulate(arg)
        elif stop == _Stop.INTERRUPT:
            self._interrupt(*arg)
        elif stop == _Stop.SYSCALL:
            self._syscall(arg)
        elif stop == _Stop.EXIT:
            run.exit_status = arg
            self._end(run, StopReason.EXIT, f"status {arg}", error=False)
            return "exit"
        elif stop == _Stop.CONSOLE_FULL:
            self._end(run, StopReason.CONSOLE_LIMIT, f"vCPU {run.index} wrote "
                      f"{self.machine.console_limit} console bytes (the limit)")
            return "console-limit"
        elif stop == _Stop.YIELD:
            run.last_block = None
            return "yield"
        return None

    def _end(self, run: VcpuRun, reason: str, detail: str, error: bool = True) -> None:
        run.done, run.stop = True, VcpuStop(reason, detail)
        if error:
            run.error = detail

    def run(self) -> RunResult:
        self.stretches_left = self.machine.max_exits
        self.uc.context_restore(self.current.context)
        for other in self.vcpus[1:]:
            other.model.put()
        self._sync_recording()
        with RunWatch(self.machine.timeout, self.uc.emu_stop) as self.run_watch:
            stopped = self._run_vcpus()
        self.run_watch.check()
        for r in self.vcpus:
            if not r.model.loaded:
                r.model.load()
        errors = [r.error for r in self.vcpus if r.error]
        if errors:
            self.stats.setdefault("error", "; ".join(errors))
        self.stats["stopped"] = stopped or ("error" if errors else "exit")
        self.stats["seconds"] = self.run_watch.elapsed
        self.stats["code_hooks"] = len(self.watch.hooked)
        self.stats["executable_pages"] = len(self.watch.executable)
        return RunResult(console=["".join(r.console) for r in self.vcpus],
                         exit_status=[r.exit_status for r in self.vcpus],
                         vcpus=[r.model for r in self.vcpus], stats=self.stats,
                         stops=[r.stop for r in self.vcpus])

    def _run_vcpus(self) -> str | None:
        """Turns of the vCPUs until all are done or the run stops; returns what stopped it."""
        index = 0
        while not all(r.done for r in self.vcpus):
            run = self.vcpus[index]
            if not run.done:
                self._switch_to(run)
                try:
                    why = self._run_slice(self.machine.max_steps)
                except SoftwareBackendError as exc:
                    self._end(run, StopReason.UNSUPPORTED, str(exc))
                    why = "error"
                self.stats["turns"] += 1
                if why in ("max_steps", "max_exits", TIMEOUT, INTERRUPTED):
                    self._stop_the_rest(run, why)
                    return "max_steps" if why == "max_exits" else why
            index = (index + 1) % len(self.vcpus)
        return None

    def _stop_the_rest(self, current: VcpuRun, why: str) -> None:
        """The run ends on `current`: it and every vCPU not done stop for that reason."""
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if why in ("max_steps", "max_exits"):
            budget = f"{why}={getattr(self.machine, why)}"
            reason, detail = StopReason.STEP_BUDGET, (
                f"{budget} reached on vCPU {current.index} at {rip:#x} before every vCPU exited")
            self.stats["error"] = detail
        else:
            reason = StopReason.TIMEOUT if why == TIMEOUT else why
            detail = (f"{why} after {self.run_watch.elapsed:.1f} s (limit "
                      f"{self.machine.timeout:g} s) on vCPU {current.index} at {rip:#x}")
        for r in self.vcpus:
            if not r.done:
                r.stop = VcpuStop(reason, detail)
