"""What a KVM with quirks cannot run, completed by the VMM; each completion says how it ended.

Per quirk (quirks.py, shown by `vlbr host`): cpuid_rewritten - CPUID answered at the patched
HLT; int_n_fails / user_syscall_fails - INT n and SYSCALL patched to a port exit, delivered
through the guest IDT / STAR-LSTAR here; user_single_step_fails - CPL3 code while recording
runs on unicorn (backends.kvm.usermode). Reactive, on KVM_EXIT_INTERNAL_ERROR: ICEBP, INT n
and XSAVES/XRSTORS (with the model's component 15). The runner (runner.py) owns stepping and
acts on the outcome: Resume, Inject, DebugTrap or Stopped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from iced_x86 import Code, Instruction

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.msrs import is_canonical
from vlbr.arch.x86 import (MSR_FMASK, MSR_LSTAR, MSR_STAR, RFLAGS_OF, RFLAGS_TF, VECTOR_DB,
                           VECTOR_GP, VECTOR_OF, XFEATURES_LEGACY)
from vlbr.backends import branches
from vlbr.backends.base import StopReason
from vlbr.backends.kvm import cpuid, usermode, xsaves
from vlbr.backends.kvm.guest_code import GuestCode, Step
from vlbr.backends.kvm.ioctls import InternalError, Vcpu
from vlbr.backends.kvm.machine import PatchedSites
from vlbr.host import kvm as k
from vlbr.policy.runtime_cpuid import runtime_cpuid
from vlbr.vcpu.lbr import ArchLbrVcpu, Branch
from vlbr.x86.events import DeliveryFailed
from vlbr.x86.syscall import syscall_entry, sysret_exit

KVM_INTERNAL_ERROR_EMULATION = 1


@dataclass(frozen=True)
class Resume:
    """Completed: the vCPU's state is set and the guest goes on at `at`."""

    at: int
    port_exit: bool = False  # KVM reports the step of the trapping OUT itself next


@dataclass(frozen=True)
class Inject:
    """KVM injects `vector` as it resumes the instruction at `at`, which faults."""

    vector: int
    at: int


@dataclass(frozen=True)
class DebugTrap:
    """A trap-like #DB for the guest (SDM 17.3.1): the runner has KVM inject it."""


@dataclass(frozen=True)
class Stopped:
    """The vCPU stops here."""

    reason: str
    detail: str
    exit_status: int | None = None


Outcome = Resume | Inject | DebugTrap | Stopped


def keep_trap_flag(insn: Instruction, regs, code: GuestCode) -> bool:
    """IRETQ and POPFQ load RFLAGS from the stack and would drop the TF that KVM's single-step
    relies on (measured: the next exit came only after a ring change), so set TF in the image
    they pop; KVM hides TF from the guest while it steps. True where the image already had
    TF: the guest's own #DB is due after the next instruction."""
    if insn.code == Code.IRETQ:
        cs = code.read(regs.rsp + 8, 1)
        if cs and cs[0] & 3:
            return False  # to CPL3: this KVM #UDs an IRETQ to user mode with TF set (measured)
        slot = regs.rsp + 16
    elif insn.code == Code.POPFQ:
        slot = regs.rsp
    else:
        return False
    image = code.read(slot, 8)
    if len(image) < 8:
        return False
    value = int.from_bytes(image, "little")
    code.memory[slot:slot + 8] = (value | RFLAGS_TF).to_bytes(8, "little")
    return bool(value & RFLAGS_TF)


def iret_to_user(regs, code: GuestCode) -> bool:
    """Whether the IRETQ about to run (RSP at its frame) returns to CPL3."""
    frame = code.read(regs.rsp + 8, 1)
    return bool(frame) and frame[0] & 3 == 3


def enters_user(insn: Instruction, regs, code: GuestCode) -> bool:
    """Whether `insn`, about to run at CPL 0, enters ring 3: an IRETQ whose frame says so, or
    a SYSRETQ to a canonical RCX (else it #GPs at CPL 0, SDM vol. 2B SYSRET)."""
    if insn.code == Code.IRETQ:
        return iret_to_user(regs, code)
    return insn.code == Code.SYSRETQ and is_canonical(regs.rcx)


class Completer:
    """Completes, for one vCPU, the instructions this KVM cannot run."""

    def __init__(self, vcpu: Vcpu, model: ArchLbrVcpu, code: GuestCode, table: CpuidTable,
                 sites: PatchedSites):
        self.vcpu, self.model, self.code, self.table = vcpu, model, code, table
        self.cpuid_sites, self.trap_sites = sites.cpuid, sites.traps
        self.emulated = 0  # instructions completed for KVM
        self.cpuid_exits = 0

    # --- CPUID (quirk cpuid_rewritten) ----------------------------------------------------
    def cpuid_answer(self, leaf: int, subleaf: int) -> Registers:
        """The runtime CPUID answer for this vCPU's state now (policy.runtime_cpuid)."""
        self.cpuid_exits += 1
        return runtime_cpuid(self.table, leaf & 0xFFFFFFFF, subleaf & 0xFFFFFFFF,
                             apic_id=self.vcpu.index, cr4=self.vcpu.get_sregs().cr4,
                             xcr0=self.vcpu.get_xcrs().get(0, XFEATURES_LEGACY),
                             xss=self.model.xss)

    def cpuid(self, regs, site: int) -> Resume:
        """The CPUID patched to HLT;NOP at `site`: answered, RIP after the patch."""
        out = self.cpuid_answer(regs.rax, regs.rcx)
        regs.rax, regs.rbx, regs.rcx, regs.rdx = out.as_tuple()
        regs.rip = site + len(cpuid.HLT_NOP)
        self.vcpu.set_regs(regs)
        return Resume(regs.rip)

    def cpuid_after_hlt(self) -> Resume | None:
        """A HLT exit at a patched CPUID site (KVM completed the one-byte HLT); else None."""
        regs = self.vcpu.get_regs()
        site = regs.rip - 1
        return self.cpuid(regs, site) if site in self.cpuid_sites else None

    # --- patched INT n / SYSCALL (backends.kvm.traps) -------------------------------------
    def trap(self) -> Outcome | None:
        """The port exit of a patched INT n / SYSCALL: the original instruction performed;
        None for a guest's own OUT to the trap port (no device)."""
        regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
        site = next((a for a in (regs.rip - 2, regs.rip) if a in self.trap_sites), None)
        if site is None:
            return None
        insn = self.trap_sites[site]
        self.emulated += 1
        if insn.code == Code.SYSCALL:
            done = self.syscall(regs, site)
        else:
            done = self._deliver(regs, insn.immediate8, insn.next_ip, sregs.cs.selector & 3,
                                 sregs.cs.selector, sregs.ss.selector, site, software_ip=site)
        return Resume(done.at, port_exit=True) if isinstance(done, Resume) else done

    def syscall(self, regs, from_ip: int) -> Resume | Stopped:
        """SYSCALL (SDM vol. 2B): RCX/R11 saved, CS/SS from STAR, RIP from LSTAR, FMASK."""
        msrs = self.vcpu.get_msrs([MSR_STAR, MSR_LSTAR, MSR_FMASK])
        sregs = self.vcpu.get_sregs()
        entry = syscall_entry(from_ip, regs.rflags, sregs.efer,
                              *(msrs.get(m, 0) for m in (MSR_STAR, MSR_LSTAR, MSR_FMASK)))
        if entry is None:
            return Stopped(StopReason.UNSUPPORTED, f"SYSCALL at {from_ip:#x} with EFER.SCE "
                           f"clear: the #UD is not delivered by this backend")
        regs.rcx, regs.r11, regs.rflags, regs.rip = entry.rcx, entry.r11, entry.rflags, entry.rip
        self.vcpu.set_regs(regs)
        sregs.cs = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=entry.cs, type=0xB,
                                 present=1, dpl=0, db=0, s=1, l=1, g=1)
        sregs.ss = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=entry.ss, type=0x3,
                                 present=1, dpl=0, db=1, s=1, l=0, g=1)
        self.vcpu.set_sregs(sregs)
        self.model.retire_branch(Branch(from_ip, entry.rip, branches.EVENT.kind, 0))
        return Resume(entry.rip)

    def _deliver(self, regs, vector: int, return_ip: int, cpl: int, cs: int, ss: int,
                 record_from: int | None, error_code: int | None = None,
                 software_ip: int | None = None, cr2: int | None = None,
                 where: str = "") -> Resume | Stopped:
        """An event through the guest IDT (x86.events); its delivery is retired into the model
        as an event from `record_from` (None: not recorded, as for #DB)."""
        try:
            handler = usermode.deliver_event(self.vcpu, self.code.memory, regs, vector,
                                             return_ip, error_code, cpl, cs, ss,
                                             software_ip=software_ip, cr2=cr2)
        except DeliveryFailed as err:
            return Stopped(StopReason.SHUTDOWN, f"{where}{err}")
        if record_from is not None:
            self.model.exception(record_from, handler, 0)
        return Resume(handler)

    # --- ring 3 on unicorn (quirk user_single_step_fails) ---------------------------------
    def ring3(self, user: usermode.UserMode, to_user: Instruction, kicked) -> Outcome | None:
        """Perform the pending IRETQ or SYSRETQ to ring 3 and run ring 3 on unicorn
        (usermode.py) until it leaves; None where a kick (timeout, Ctrl-C) cut it short: the
        run's stop."""
        regs = self.vcpu.get_regs()
        if to_user.code == Code.SYSRETQ:
            star = self.vcpu.get_msrs([MSR_STAR]).get(MSR_STAR, 0)
            out = sysret_exit(regs.rcx, regs.r11, star)
            frame = (out.rip, out.cs, out.rflags, regs.rsp, out.ss)
            leave = user.enter(to_user.ip, regs, frame, flat=True)
        else:
            frame = struct.unpack_from("<5Q", self.code.memory, regs.rsp)
            leave = user.enter(to_user.ip, regs, frame)
        if leave.kind == "exit":
            return Stopped(StopReason.EXIT, f"status {leave.return_ip}", leave.return_ip)
        if leave.kind == "fail":
            return None if kicked() else Stopped(StopReason.ERROR, leave.detail)
        user.user_regs(regs)
        if leave.kind == "syscall":
            return self.syscall(regs, leave.from_ip)
        if leave.vector == VECTOR_DB:
            self.model.debug_exception()  # #DB: LBREn cleared, the delivery not recorded
        # ICEBP is a trap-like #DB with no gate DPL check; INT n / INT3 / INTO have one.
        checked = leave.software and leave.vector != VECTOR_DB
        return self._deliver(regs, leave.vector, leave.return_ip, 3, user.user_cs,
                             user.user_ss, None if leave.vector == VECTOR_DB else leave.from_ip,
                             leave.error_code, software_ip=leave.from_ip if checked else None,
                             cr2=leave.cr2, where="from ring 3: ")

    # --- KVM_EXIT_INTERNAL_ERROR ----------------------------------------------------------
    def emulate(self, failure: InternalError) -> Outcome | None:
        """What KVM fails to emulate (suberror 1): ICEBP (INT1), INT n / INTO and the XSAVE
        family (backends.kvm.xsaves); None leaves the exit to stop the vCPU."""
        if failure.suberror != KVM_INTERNAL_ERROR_EMULATION:
            return None
        regs = self.vcpu.get_regs()
        step = self.code.decode(regs.rip)
        if step.insn.code == Code.INT1:
            return self._icebp(regs, step)
        if step.insn.code in (Code.INT_IMM8, Code.INTO):
            return self._software_interrupt(regs, step)
        if xsaves.emulates(step.insn):
            return self._xsaves(regs, step)
        return None

    def _xsaves(self, regs, step: Step) -> Outcome:
        self.emulated += 1
        cpl = self.vcpu.get_sregs().cs.selector & 3
        try:
            vector = xsaves.emulate(step.insn, self.vcpu, self.model, self.code.memory, regs,
                                    cpl)
        except xsaves.NotEmulated as err:
            return Stopped(StopReason.UNSUPPORTED,
                           f"{step.insn} at {regs.rip:#x} (KVM_EXIT_INTERNAL_ERROR emulation "
                           f"failure; vlbr does not emulate {err})")
        if vector is not None:
            self.vcpu.inject_exception(vector, 0 if vector == VECTOR_GP else None)
            return Inject(vector, step.insn.ip)
        return self._skip(regs, step)

    def _skip(self, regs, step: Step) -> Resume:
        regs.rip = step.insn.next_ip
        self.vcpu.set_regs(regs)
        return Resume(regs.rip)

    def _software_interrupt(self, regs, step: Step) -> Outcome:
        """INT n / INTO (this KVM fails to emulate them): delivered through the guest IDT."""
        insn = step.insn
        if insn.code == Code.INTO and not regs.rflags & RFLAGS_OF:
            return self._skip(regs, step)
        self.emulated += 1
        vector = VECTOR_OF if insn.code == Code.INTO else insn.immediate8
        sregs = self.vcpu.get_sregs()
        return self._deliver(regs, vector, insn.next_ip, sregs.cs.selector & 3,
                             sregs.cs.selector, sregs.ss.selector, insn.ip, software_ip=insn.ip)

    def _icebp(self, regs, step: Step) -> DebugTrap:
        """ICEBP raises a trap-like #DB (SDM 17.3.1.2): RIP after it."""
        self.emulated += 1
        self._skip(regs, step)
        return DebugTrap()
