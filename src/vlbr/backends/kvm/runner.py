"""One vCPU's exit loop: ports, MSRs routed to the Arch LBR model, branch recording by stepping.

While the model is recording, KVM single-steps the guest (KVM_SET_GUEST_DEBUG SINGLESTEP) and
every step is classified with backends.branches: the instruction is decoded from guest memory
before the step and the registers KVM syncs into kvm_run after it tell where it went. With
recording off, guest debug is off too and the guest runs at full speed until the next exit.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from iced_x86 import Code, Instruction

from vlbr.backends import branches
from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.msrs import IA32_XSS
import struct

from vlbr.backends.kvm import cpuid, usermode, xsaves
from vlbr.backends.base import PORT_CONSOLE, PORT_EXIT, PORT_YIELD, RAM_SIZE
from vlbr.backends.kvm.ioctls import Vcpu
from vlbr.backends.kvm.machine import PatchedSites
from vlbr.backends.kvm.traps import PORT_TRAP
from vlbr.host import kvm as k
from vlbr.vcpu.lbr import ArchLbrVcpu, Branch, GeneralProtection

STEP_CONTROL = k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP
SYNC = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
KVM_INTERNAL_ERROR_EMULATION = 1
VECTOR_DB, VECTOR_GP = 1, 13
RFLAGS_TF = 1 << 8


@dataclass
class Step:
    """The instruction about to execute under single-step, decoded before it runs."""

    insn: Instruction
    cls: branches.BranchClass | None


class VcpuRunner:
    """Runs one vCPU until it yields or exits; holds its console, exit status and model."""

    def __init__(self, vcpu: Vcpu, model: ArchLbrVcpu, memory: mmap.mmap, use_sync_regs: bool,
                 table: CpuidTable, sites: PatchedSites = PatchedSites()):
        self.vcpu = vcpu
        self.table = table
        self.cpuid_sites = sites.cpuid
        self.trap_sites = sites.traps
        self.model = model
        self.memory = memory
        self.run_struct = vcpu.run_struct
        self.sync = use_sync_regs
        self.console = bytearray()
        self.exit_status: int | None = None
        self.exited = False
        self.stop_reason: str | None = None  # why it stopped, when not by port 0xF4
        self.stepping = False
        self.pending: Step | None = None
        self._injected: int | None = None
        self._resumed_at: int | None = None  # RIP we moved the vCPU to at a port exit
        self._guest_tf = 0  # steps until the guest's own TF trap is due (0: none)  # vector of an exception we had KVM inject
        self._decoded: dict[int, tuple[bytes, Step]] = {}
        self.exits = 0
        self.steps = 0
        self.branches = 0
        self.msr_exits = 0
        self.emulated = 0  # instructions vlbr completed for KVM (ICEBP, XSAVES, XRSTORS)
        self.cpuid_exits = 0
        self.excursions = 0  # ring-3 runs on unicorn while recording
        self._user: usermode.UserMode | None = None

    # --- the loop -------------------------------------------------------------------------
    def run_slice(self, budget: int) -> int:
        """Run until yield, exit or `budget` exits; returns the exits used."""
        used = 0
        self._sync_stepping(at_msr_exit=False)
        while not self.exited and used < budget:
            used += 1
            if self.stepping and self.sync:
                self.run_struct.kvm_valid_regs = SYNC
            reason = self.vcpu.run()
            if reason == k.KVM_EXIT_DEBUG:
                self._after_step()
            elif reason == k.KVM_EXIT_IO:
                if self._io():
                    break  # yield
            elif reason in (k.KVM_EXIT_X86_RDMSR, k.KVM_EXIT_X86_WRMSR):
                self._msr(reason)
            elif reason == k.KVM_EXIT_HLT and self._cpuid_after_hlt():
                continue
            elif reason == k.KVM_EXIT_INTR:
                continue
            elif reason == k.KVM_EXIT_INTERNAL_ERROR and self._emulate():
                continue
            else:
                self._stop(self._describe_exit(reason))
        self.exits += used
        return used

    def _stop(self, why: str | None) -> None:
        self.exited = True
        self.stop_reason = why
        self._set_stepping(False)

    # --- port I/O (Guest ABI) -------------------------------------------------------------
    def _io(self) -> bool:
        io = self.run_struct.io
        if io.direction == k.KVM_EXIT_IO_IN:
            self.vcpu.set_io_data(b"\xff" * (io.size * io.count))  # no device: bus floats high
            return False
        data = self.vcpu.io_data()
        if io.port == PORT_CONSOLE:
            self.console += data[::io.size]
        elif io.port == PORT_EXIT:
            self.exit_status = int.from_bytes(data[:io.size], "little")
            self._stop(None)
        elif io.port == PORT_YIELD:
            return True
        elif io.port == PORT_TRAP:
            self._trap()
        return False

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
        else:
            handler = usermode.deliver_event(self.vcpu, self.memory, regs, insn.immediate8,
                                             insn.next_ip, None, True, cpl, sregs.cs.selector,
                                             sregs.ss.selector)
            if isinstance(handler, str):
                self._stop(f"shutdown: {handler}")
                return
            self.model.exception(site, handler, 0)
        self._sync_stepping(at_msr_exit=False)
        if self.stepping:
            self.pending = self._decode(handler)
            self._resumed_at = handler

    # --- MSRs routed to the model ---------------------------------------------------------
    def _msr(self, reason: int) -> None:
        msr = self.run_struct.msr
        self.msr_exits += 1
        try:
            if reason == k.KVM_EXIT_X86_RDMSR:
                msr.data = self.model.rdmsr(msr.index)
            else:
                self.model.wrmsr(msr.index, msr.data)
            msr.error = 0
        except (GeneralProtection, KeyError):
            msr.error = 1  # KVM injects #GP(0) when it completes the instruction
            self._injected = VECTOR_GP
        self._sync_stepping(at_msr_exit=True)

    # --- CPUID (patched to HLT; see backends.kvm.cpuid) ----------------------------------
    def _cpuid_after_hlt(self) -> bool:
        regs = self.vcpu.get_regs()
        site = regs.rip - 1  # KVM completed the one-byte HLT
        if site not in self.cpuid_sites:
            return False
        self._cpuid(regs, site)
        if self.stepping:  # the patched HLT was the pending step; the next one follows it
            self.pending = self._decode(regs.rip)
        return True

    def _cpuid(self, regs, site: int) -> None:
        self.cpuid_exits += 1
        xcr0 = self.vcpu.get_xcrs().get(0, 3)
        out = cpuid.answer(self.table, regs.rax & 0xFFFFFFFF, regs.rcx & 0xFFFFFFFF,
                           apic_id=self.vcpu.index, cr4=self.vcpu.get_sregs().cr4, xcr0=xcr0,
                           xss=self._xss())
        regs.rax, regs.rbx, regs.rcx, regs.rdx = out.as_tuple()
        regs.rip = site + len(cpuid.HLT_NOP)
        self.vcpu.set_regs(regs)

    def _xss(self) -> int:
        try:
            return self.model.rdmsr(IA32_XSS, host_initiated=True)
        except Exception:  # no XSAVES in the guest CPUID: IA32_XSS does not exist, reads 0
            return 0

    # --- recording ------------------------------------------------------------------------
    def _sync_stepping(self, at_msr_exit: bool) -> None:
        """Step exactly while the model records; at an MSR exit RIP is still the RDMSR/WRMSR."""
        want = self.model.loaded and self.model.recording
        if want == self.stepping:
            return
        self._set_stepping(want)
        if want and at_msr_exit:
            self.pending = self._decode(self.vcpu.get_regs().rip)

    def _set_stepping(self, on: bool) -> None:
        if on != self.stepping:
            self.vcpu.set_guest_debug(STEP_CONTROL if on else 0)
            self.stepping = on
        if not on:
            self.pending = None

    def _regs(self):
        if self.sync:
            return self.run_struct.s.regs.regs, self.run_struct.s.regs.sregs
        return self.vcpu.get_regs(), self.vcpu.get_sregs()

    def _after_step(self) -> None:
        if not self.stepping:
            return
        self.steps += 1
        regs, sregs = self._regs()
        rip, cpl = regs.rip, sregs.cs.selector & 3
        resumed, self._resumed_at = self._resumed_at, None
        if resumed is not None and rip == resumed:
            return  # KVM reported the step of the trapping OUT itself: nothing ran since
        step, self.pending = self.pending, None
        if step is not None and step.insn.ip in self.cpuid_sites:
            regs = self.vcpu.get_regs()  # the step exit came before a HLT exit: answer here
            if regs.rip == step.insn.ip + 1:
                self._cpuid(regs, step.insn.ip)
                rip, step = regs.rip, None
        if step is not None:
            self._retire(step, regs, rip, cpl, sregs)
        if self._guest_tf:
            self._guest_single_step()
            if not self.stepping:
                return
        if not self.exited and self.stepping:
            self._sync_stepping(at_msr_exit=False)
        if self.stepping:
            self.pending = self._decode(rip)
            if self.pending.insn.code == Code.IRETQ and self._iret_to_user(regs.rsp):
                self._ring3()
            else:
                self._keep_trap_flag(self.pending.insn, regs)

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
            self._user = usermode.UserMode(self)
        user = self._user
        leave = user.enter(iret.ip, regs, frame)
        self.excursions += 1
        if leave.kind == "exit":
            self.exit_status = leave.return_ip
            self._stop(None)
            return
        if leave.kind == "fail":
            self._stop(leave.detail)
            return
        user.user_regs(regs)
        if leave.kind == "syscall":
            handler = self._syscall(regs, leave)
        else:
            if leave.vector == usermode.VECTOR_DB:
                self.model.debug_exception()  # #DB: LBREn cleared, the delivery not recorded
            handler = usermode.deliver_event(
                self.vcpu, self.memory, regs, leave.vector, leave.return_ip, leave.error_code,
                leave.software, 3, user.user_cs, user.user_ss, leave.cr2)
            if isinstance(handler, str):
                self._stop(f"shutdown from ring 3: {handler}")
                return
            if leave.vector != usermode.VECTOR_DB:
                self.model.exception(leave.from_ip, handler, 0)
        self._sync_stepping(at_msr_exit=False)
        if self.stepping:
            self.pending = self._decode(handler)

    def _syscall(self, regs, leave) -> int:
        """SYSCALL (SDM vol. 2B): RCX/R11 saved, CS/SS from STAR, RIP from LSTAR, FMASK."""
        msrs = self.vcpu.get_msrs([usermode.MSR_STAR, usermode.MSR_LSTAR, usermode.MSR_FMASK])
        star, lstar = msrs.get(usermode.MSR_STAR, 0), msrs.get(usermode.MSR_LSTAR, 0)
        regs.rcx, regs.r11 = leave.return_ip, regs.rflags & ~usermode.RFLAGS_RF
        regs.rflags = (regs.rflags & ~msrs.get(usermode.MSR_FMASK, 0) & ~usermode.RFLAGS_RF) | 2
        regs.rip = lstar
        self.vcpu.set_regs(regs)
        sregs = self.vcpu.get_sregs()
        selector = (star >> 32) & 0xFFFC
        sregs.cs = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=selector, type=0xB,
                                 present=1, dpl=0, db=0, s=1, l=1, g=1)
        sregs.ss = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=selector + 8, type=0x3,
                                 present=1, dpl=0, db=1, s=1, l=0, g=1)
        self.vcpu.set_sregs(sregs)
        self.model.retire_branch(Branch(leave.from_ip, lstar, branches.EVENT.kind, 0))
        return lstar

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
        self.model.debug_exception()
        self._set_stepping(self.model.recording)
        control = STEP_CONTROL if self.stepping else k.KVM_GUESTDBG_ENABLE
        self.vcpu.set_guest_debug(control | k.KVM_GUESTDBG_INJECT_DB)
        if not self.stepping:
            self.vcpu.set_guest_debug(0)
        self.pending = None

    def _retire(self, step: Step, regs, rip: int, cpl: int, sregs) -> None:
        insn, cls = step.insn, step.cls
        vector, self._injected = self._injected, None
        if vector is None and cls is not None and cls.interrupt:
            if rip == insn.next_ip:
                return  # INTO with OF clear
            vector = 3 if insn.code == Code.INT3 else 4 if insn.code == Code.INTO else insn.immediate8
        if vector is not None or not self._went_as_expected(insn, cls, regs, rip):
            self._event(insn, rip, cpl, sregs, vector)
            return
        if cls is None or (cls.conditional and rip == insn.next_ip
                           and not branches.taken_after(insn, regs.rflags, regs.rcx)):
            return
        self.branches += 1
        self.model.retire_branch(Branch(insn.ip, rip, cls.kind, cpl, is_call=cls.is_call,
                                        is_return=cls.is_return))

    @staticmethod
    def _went_as_expected(insn: Instruction, cls, regs, rip: int) -> bool:
        if cls is None:
            return rip == insn.next_ip
        if cls.interrupt or cls.is_far:
            return True  # targets come from descriptors and the stack
        if insn.is_jcc_short_or_near or insn.is_jmp_short_or_near or insn.is_call_near:
            return rip in (insn.near_branch_target, insn.next_ip)
        return True  # indirect jumps, calls and returns go where their operand says

    def _event(self, insn: Instruction, rip: int, cpl: int, sregs, vector: int | None) -> None:
        """An exception was delivered during the step: KVM's step also ran the handler's first
        instruction, so find the handler in the guest IDT and retire both."""
        handler = self._handler_before(rip, sregs, vector)
        if handler is None:
            return  # not explainable from the IDT (e.g. a nested fault): record nothing
        self.model.exception(insn.ip, handler, cpl)
        first = self._decode(handler)
        if first.cls is not None and rip != first.insn.next_ip:
            self.model.retire_branch(Branch(handler, rip, first.cls.kind, cpl,
                                            is_call=first.cls.is_call,
                                            is_return=first.cls.is_return))

    def _handler_before(self, rip: int, sregs, vector: int | None) -> int | None:
        base, limit = sregs.idt.base, sregs.idt.limit
        vectors = [vector] if vector is not None else range(min(256, (limit + 1) // 16))
        for v in vectors:
            gate = self._read(base + 16 * v, 16)
            if len(gate) < 16 or not gate[5] & 0x80:
                continue
            handler = (int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little")
                       << 16 | int.from_bytes(gate[8:12], "little") << 32)
            first = self._decode(handler)
            if rip == first.insn.next_ip or rip == handler or (
                    first.cls is not None and rip == first.insn.near_branch_target):
                return handler
        return None

    # --- guest memory and decoding --------------------------------------------------------
    def _read(self, address: int, size: int) -> bytes:
        if not 0 <= address < RAM_SIZE:
            return b""
        return self.memory[address:min(address + size, RAM_SIZE)]

    def _decode(self, rip: int) -> Step:
        raw = self._read(rip, branches.MAX_INSTRUCTION_LENGTH)
        cached = self._decoded.get(rip)
        if cached is not None and raw.startswith(cached[0]):
            return cached[1]
        insn = branches.decode(raw, rip)
        step = Step(insn, branches.classify(insn))
        self._decoded[rip] = (raw[:insn.len], step)
        return step

    # --- what KVM here cannot run ---------------------------------------------------------
    def _emulate(self) -> bool:
        """Complete what KVM here fails to emulate (KVM_EXIT_INTERNAL_ERROR, suberror 1):
        ICEBP (INT1) and XSAVES/XRSTORS; False leaves the exit to stop the vCPU."""
        if self.run_struct.internal.suberror != KVM_INTERNAL_ERROR_EMULATION:
            return False
        regs = self.vcpu.get_regs()
        step = self._decode(regs.rip)
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
            self._stop(f"{step.insn} at {regs.rip:#x} (KVM_EXIT_INTERNAL_ERROR emulation "
                       f"failure; vlbr does not emulate {err})")
            return True
        if vector is None:
            regs.rip = step.insn.next_ip
            self.vcpu.set_regs(regs)
            if self.stepping:  # KVM steps the instruction after it next
                self.pending = self._decode(regs.rip)
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
        handler = usermode.deliver_event(self.vcpu, self.memory, regs, vector, insn.next_ip,
                                         None, True, sregs.cs.selector & 3, sregs.cs.selector,
                                         sregs.ss.selector)
        if isinstance(handler, str):
            self._stop(f"shutdown: {handler}")
            return True
        self.model.exception(insn.ip, handler, 0)
        self._sync_stepping(at_msr_exit=False)
        self.pending = self._decode(handler) if self.stepping else None
        return True

    def _icebp(self, regs, step: Step) -> bool:
        """ICEBP raises a trap-like #DB (SDM 17.3.1.2): RIP after it, LBREn cleared."""
        self.emulated += 1
        regs.rip = step.insn.next_ip
        self.vcpu.set_regs(regs)
        self.model.debug_exception()
        self._set_stepping(self.model.recording)
        control = STEP_CONTROL if self.stepping else k.KVM_GUESTDBG_ENABLE
        self.vcpu.set_guest_debug(control | k.KVM_GUESTDBG_INJECT_DB)
        if not self.stepping:
            self.vcpu.set_guest_debug(0)  # the #DB stays queued; debug itself goes off again
        self.pending = None  # the #DB delivery is not a recorded branch (LBREn is now clear)
        return True

    def _describe_exit(self, reason: int) -> str:
        name = k.EXIT_NAMES.get(reason, f"exit reason {reason}")
        try:
            rip = self.vcpu.get_regs().rip
        except k.KvmError:
            return name
        text = f"{name} at rip {rip:#x}"
        if reason == k.KVM_EXIT_INTERNAL_ERROR:
            insn = self._decode(rip).insn
            text += f" (suberror {self.run_struct.internal.suberror}, instruction {insn})"
        elif reason == k.KVM_EXIT_SHUTDOWN:
            text += " (triple fault: no IDT or a fault while delivering one)"
        return text
