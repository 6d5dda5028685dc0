"""What a KVM with quirks cannot run, completed by the VMM for the vCPU runner (a mixin).

Per quirk (quirks.py, shown by `vlbr host`): cpuid_rewritten - CPUID answered at the patched
HLT; int_n_fails / user_syscall_fails - INT n and SYSCALL patched to a port exit, delivered
through the guest IDT / STAR-LSTAR here; user_single_step_fails - CPL3 code while recording
runs on unicorn (backends.kvm.usermode). Reactive, on KVM_EXIT_INTERNAL_ERROR: ICEBP, INT n
and XSAVES/XRSTORS (with the model's component 15); and the guest's own TF trap that KVM's
single-step swallows."""

from __future__ import annotations

import struct

from iced_x86 import Code, Instruction

from vlbr.arch.x86 import (MSR_FMASK, MSR_LSTAR, MSR_STAR, RFLAGS_TF, VECTOR_DB,
                           VECTOR_GP)
from vlbr.arch.msrs import IA32_XSS
from vlbr.backends import branches
from vlbr.backends.base import KVM_HYBRID, RAM_SIZE, StopReason
from vlbr.backends.kvm import cpuid, usermode, xsaves
from vlbr.x86.events import DeliveryFailed
from vlbr.x86.syscall import syscall_entry
from vlbr.policy.runtime_cpuid import runtime_cpuid
from vlbr.host import kvm as k
from vlbr.vcpu.lbr import Branch

STEP_CONTROL = k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP
KVM_INTERNAL_ERROR_EMULATION = 1


class KvmGaps:
    """Mixed into VcpuRunner: uses its vcpu, model, memory, stepping state and _decode."""

    def _trap(self) -> None:
        """A patched INT n / SYSCALL (backends.kvm.traps): perform the original instruction."""
        regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
        site = next((a for a in (regs.rip - 2, regs.rip) if a in self.trap_sites), None)
        if site is None:
            return  # a guest's own OUT to port 0xF6: no device
        insn = self.trap_sites[site]
        self.emulated += 1
        cpl = sregs.cs.selector & 3
        if insn.code == Code.SYSCALL:
            handler = self._syscall(regs, usermode.Leave("syscall", from_ip=site,
                                                         return_ip=insn.next_ip))
            if handler is None:
                return
        else:
            try:
                handler = usermode.deliver_event(self.vcpu, self.memory, regs, insn.immediate8,
                                                 insn.next_ip, None, cpl, sregs.cs.selector,
                                                 sregs.ss.selector, software_ip=site)
            except DeliveryFailed as err:
                self._stop(StopReason.SHUTDOWN, str(err))
                return
            self.model.exception(site, handler, 0)
        self._sync_stepping(at_msr_exit=False)
        if self.stepping:
            self.pending = self.decode(handler)
            self._resumed_at = handler

    def _cpuid_after_hlt(self) -> bool:
        regs = self.vcpu.get_regs()
        site = regs.rip - 1  # KVM completed the one-byte HLT
        if site not in self.cpuid_sites:
            return False
        self._cpuid(regs, site)
        if self.stepping:  # the patched HLT was the pending step; the next one follows it
            self.pending = self.decode(regs.rip)
        return True

    def _cpuid(self, regs, site: int) -> None:
        self.cpuid_exits += 1
        xcr0 = self.vcpu.get_xcrs().get(0, 3)
        out = runtime_cpuid(self.table, regs.rax & 0xFFFFFFFF, regs.rcx & 0xFFFFFFFF,
                           apic_id=self.vcpu.index, cr4=self.vcpu.get_sregs().cr4, xcr0=xcr0,
                           xss=self.xss())
        regs.rax, regs.rbx, regs.rcx, regs.rdx = out.as_tuple()
        regs.rip = site + len(cpuid.HLT_NOP)
        self.vcpu.set_regs(regs)

    def xss(self) -> int:
        """The guest's IA32_XSS as the model holds it (0 where it does not exist)."""
        try:
            return self.model.rdmsr(IA32_XSS, host_initiated=True)
        except Exception:  # no XSAVES in the guest CPUID: IA32_XSS does not exist, reads 0
            return 0

    def _iret_to_user(self, rsp: int) -> bool:
        frame = self._read(rsp + 8, 1)
        return bool(frame) and frame[0] & 3 == 3

    def _ring3(self) -> None:
        """Run the ring-3 code the pending IRETQ enters on unicorn (see backends.kvm.usermode),
        then resume KVM at the ring-0 handler that ends it."""
        iret, self.pending = self.pending.insn, None
        regs = self.vcpu.get_regs()
        frame = struct.unpack_from("<5Q", self.memory, regs.rsp)
        if self._user is None:
            self._user = usermode.UserMode(self, fast=self.recording == KVM_HYBRID)
        user = self._user
        leave = user.enter(iret.ip, regs, frame)
        self.excursions += 1
        if leave.kind == "exit":
            self.exit_status = leave.return_ip
            self._stop(StopReason.EXIT, f"status {self.exit_status}")
            return
        if leave.kind == "fail":
            if not self.kicked:  # a kick (timeout, Ctrl-C) is the run's stop, not the vCPU's
                self._stop(StopReason.ERROR, leave.detail)
            return
        user.user_regs(regs)
        if leave.kind == "syscall":
            handler = self._syscall(regs, leave)
            if handler is None:
                return
        else:
            if leave.vector == VECTOR_DB:
                self.model.debug_exception()  # #DB: LBREn cleared, the delivery not recorded
            # ICEBP is a trap-like #DB with no gate DPL check; INT n / INT3 / INTO have one.
            checked = leave.software and leave.vector != VECTOR_DB
            try:
                handler = usermode.deliver_event(
                    self.vcpu, self.memory, regs, leave.vector, leave.return_ip,
                    leave.error_code, 3, user.user_cs, user.user_ss,
                    software_ip=leave.from_ip if checked else None, cr2=leave.cr2)
            except DeliveryFailed as err:
                self._stop(StopReason.SHUTDOWN, f"from ring 3: {err}")
                return
            if leave.vector != VECTOR_DB:
                self.model.exception(leave.from_ip, handler, 0)
        self._sync_stepping(at_msr_exit=False)
        if self.stepping:
            self.pending = self.decode(handler)

    def _syscall(self, regs, leave) -> int | None:
        """SYSCALL (SDM vol. 2B): RCX/R11 saved, CS/SS from STAR, RIP from LSTAR, FMASK."""
        msrs = self.vcpu.get_msrs([MSR_STAR, MSR_LSTAR, MSR_FMASK])
        sregs = self.vcpu.get_sregs()
        entry = syscall_entry(leave.from_ip, regs.rflags, sregs.efer,
                              *(msrs.get(m, 0) for m in (MSR_STAR, MSR_LSTAR, MSR_FMASK)))
        if entry is None:
            self._stop(StopReason.UNSUPPORTED, f"SYSCALL at {leave.from_ip:#x} with EFER.SCE "
                       f"clear: the #UD is not delivered by this backend")
            return None
        regs.rcx, regs.r11, regs.rflags, regs.rip = entry.rcx, entry.r11, entry.rflags, entry.rip
        self.vcpu.set_regs(regs)
        sregs.cs = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=entry.cs, type=0xB,
                                 present=1, dpl=0, db=0, s=1, l=1, g=1)
        sregs.ss = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=entry.ss, type=0x3,
                                 present=1, dpl=0, db=1, s=1, l=0, g=1)
        self.vcpu.set_sregs(sregs)
        self.model.retire_branch(Branch(leave.from_ip, entry.rip, branches.EVENT.kind, 0))
        return entry.rip

    def _keep_trap_flag(self, insn: Instruction, regs) -> None:
        """IRETQ and POPFQ load RFLAGS from the stack and would drop the TF that KVM's
        single-step relies on (measured: the next exit came only after a ring change), so set
        TF in the image they pop; KVM hides TF from the guest while it steps and clears it
        when stepping stops."""
        if insn.code == Code.IRETQ:
            if self._read(regs.rsp + 8, 1)[:1] and self._read(regs.rsp + 8, 1)[0] & 3:
                return  # to CPL3: this KVM #UDs an IRETQ to user mode with TF set (measured)
            slot = regs.rsp + 16
        elif insn.code == Code.POPFQ:
            slot = regs.rsp
        else:
            return
        if 0 <= slot <= RAM_SIZE - 8:
            value = int.from_bytes(self.memory[slot:slot + 8], "little")
            if value & RFLAGS_TF:  # the guest sets TF itself: its #DB follows the next insn
                self._guest_tf = 2
            self.memory[slot:slot + 8] = (value | RFLAGS_TF).to_bytes(8, "little")

    def _guest_single_step(self) -> None:
        """The guest's own TF trap, which KVM's stepping swallows: a #DB (SDM 17.3.1.4) after
        the instruction that follows the POPFQ/IRETQ setting TF; LBREn is cleared."""
        self._guest_tf -= 1
        if self._guest_tf:
            return
        self._raise_debug()

    def _emulate(self, failure) -> bool:
        """Complete what KVM here fails to emulate (KVM_EXIT_INTERNAL_ERROR, suberror 1):
        ICEBP (INT1), INT n and the XSAVE family's saves and restores (backends.kvm.xsaves);
        False leaves the exit to stop the vCPU."""
        if failure.suberror != KVM_INTERNAL_ERROR_EMULATION:
            return False
        regs = self.vcpu.get_regs()
        step = self.decode(regs.rip)
        if step.insn.code == Code.INT1:
            return self._icebp(regs, step)
        if step.insn.code in (Code.INT_IMM8, Code.INTO):
            return self._software_interrupt(regs, step)
        if xsaves.emulates(step.insn):
            return self._xsaves(regs, step)
        return False

    def _xsaves(self, regs, step: Step) -> bool:
        self.emulated += 1
        cpl = self.vcpu.get_sregs().cs.selector & 3
        try:
            vector = xsaves.emulate(step.insn, self.vcpu, self.model, self.memory, regs, cpl)
        except xsaves.NotEmulated as err:
            self._stop(StopReason.UNSUPPORTED,
                       f"{step.insn} at {regs.rip:#x} (KVM_EXIT_INTERNAL_ERROR emulation "
                       f"failure; vlbr does not emulate {err})")
            return True
        if vector is None:
            regs.rip = step.insn.next_ip
            self.vcpu.set_regs(regs)
            if self.stepping:  # KVM steps the instruction after it next
                self.pending = self.decode(regs.rip)
        else:
            self.vcpu.inject_exception(vector, 0 if vector == VECTOR_GP else None)
            self._injected = vector
            if self.stepping:
                self.pending = step
        self._sync_stepping(at_msr_exit=False)
        return True

    def _software_interrupt(self, regs, step: Step) -> bool:
        """INT n / INTO (this KVM fails to emulate them): delivered through the guest IDT."""
        insn = step.insn
        if insn.code == Code.INTO and not regs.rflags & (1 << 11):
            regs.rip = insn.next_ip
            self.vcpu.set_regs(regs)
            return True
        self.emulated += 1
        vector = 4 if insn.code == Code.INTO else insn.immediate8
        sregs = self.vcpu.get_sregs()
        try:
            handler = usermode.deliver_event(self.vcpu, self.memory, regs, vector, insn.next_ip,
                                             None, sregs.cs.selector & 3, sregs.cs.selector,
                                             sregs.ss.selector, software_ip=insn.ip)
        except DeliveryFailed as err:
            self._stop(StopReason.SHUTDOWN, str(err))
            return True
        self.model.exception(insn.ip, handler, 0)
        self._sync_stepping(at_msr_exit=False)
        self.pending = self.decode(handler) if self.stepping else None
        return True

    def _icebp(self, regs, step: Step) -> bool:
        """ICEBP raises a trap-like #DB (SDM 17.3.1.2): RIP after it, LBREn cleared."""
        self.emulated += 1
        regs.rip = step.insn.next_ip
        self.vcpu.set_regs(regs)
        self._raise_debug()
        return True

    def _raise_debug(self) -> None:
        """A #DB for the guest: the model clears LBREn (no record of the delivery), KVM injects
        the exception (KVM_GUESTDBG_INJECT_DB) and stepping follows the model again."""
        self.model.debug_exception()
        self._set_stepping(self.model.recording)
        control = STEP_CONTROL if self.stepping else k.KVM_GUESTDBG_ENABLE
        self.vcpu.set_guest_debug(control | k.KVM_GUESTDBG_INJECT_DB)
        if not self.stepping:
            self.vcpu.set_guest_debug(0)  # the #DB stays queued; debug itself goes off again
        self.pending = None

