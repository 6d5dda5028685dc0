"""One vCPU's exit loop: ports, MSRs routed to the Arch LBR model, branch recording by stepping.

While the model is recording, KVM single-steps the guest (KVM_SET_GUEST_DEBUG SINGLESTEP) and
every step is classified with backends.branches: the instruction is decoded from guest memory
before the step and the registers KVM syncs into kvm_run after it tell where it went. With
recording off, guest debug is off too and the guest runs at full speed until the next exit.
In recording mode "hybrid" (the default) the stretches between the instructions only KVM may
run go to unicorn instead (hybrid.py); KVM single-steps just those.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from iced_x86 import Code, Instruction

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.x86 import EFER_LMA, RFLAGS_TF, VECTOR_GP
from vlbr.backends import branches
from vlbr.backends.base import (KVM_HYBRID as HYBRID, KVM_STEP as STEP, PORT_CONSOLE,
                                PORT_EXIT, PORT_YIELD, StopReason, VcpuStop)
from vlbr.backends.kvm import hybrid, usermode
from vlbr.backends.kvm.gaps import (Completer, DebugTrap, Inject, Outcome, Stopped,
                                   enters_user, keep_trap_flag)
from vlbr.backends.kvm.guest_code import GuestCode, Step
from vlbr.backends.kvm.ioctls import (InternalError, IoIn, IoOut, MsrRead, MsrWrite, Vcpu,
                                      VcpuExit)
from vlbr.backends.kvm.machine import PatchedSites
from vlbr.backends.kvm.quirks import KvmQuirks
from vlbr.backends.kvm.traps import PORT_TRAP
from vlbr.host import kvm as k
from vlbr.vcpu.lbr import ArchLbrVcpu, Branch, GeneralProtection
from vlbr.x86.descriptors import GATE_SIZE, Gate

SYNC = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
STEP_CONTROL = k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP


@dataclass
class Budget:
    """What is left of a run's budgets, shared by its vCPUs (MachineConfig.max_steps/max_exits)."""

    exits: int  # every KVM_RUN return, single-steps included (max_steps)
    vmm_exits: int  # the returns that are not single-steps (max_exits)
    limit_hit: str | None = None  # "max_steps" or "max_exits" once one ran out

    def spend(self, step: bool) -> bool:
        """Account one exit; False once a budget is exhausted."""
        self.exits -= 1
        self.vmm_exits -= 0 if step else 1
        if self.exits <= 0:
            self.limit_hit = "max_steps"
        elif self.vmm_exits <= 0:
            self.limit_hit = "max_exits"
        return self.limit_hit is None

    def spend_steps(self, n: int) -> bool:
        """Account n instructions run on the hybrid's CPU as n single-steps."""
        self.exits -= n
        if self.exits <= 0:
            self.limit_hit = "max_steps"
        return self.limit_hit is None


class VcpuRunner:
    """Runs one vCPU until it yields or exits; holds its console, exit status and model.
    What this KVM cannot run is completed by its Completer (gaps.py)."""

    def __init__(self, vcpu: Vcpu, model: ArchLbrVcpu, memory: mmap.mmap, use_sync_regs: bool,
                 table: CpuidTable, sites: PatchedSites = PatchedSites(),
                 console_limit: int = 1 << 20, quirks: KvmQuirks = KvmQuirks(),
                 recording: str = HYBRID):
        self.vcpu = vcpu
        self.recording = recording
        self.quirks = quirks
        self.console_limit = console_limit
        self.table = table
        self.cpuid_sites = sites.cpuid
        self.trap_sites = sites.traps
        self.model = model
        self.memory = memory
        self.code = GuestCode(memory)
        self.completer = Completer(vcpu, model, self.code, table, sites)
        self.run_struct = vcpu.run_struct
        self.sync = use_sync_regs
        self.console = bytearray()
        self.exit_status: int | None = None
        self.exited = False
        self.stop: VcpuStop | None = None  # why it stopped
        self.kicked = False  # kick() was called: the run is ending from outside
        self.stepping = False
        self.pending: Step | None = None
        self._injected: int | None = None  # vector of an exception we had KVM inject
        self._resumed_at: int | None = None  # RIP we moved the vCPU to at a port exit
        self._guest_tf = 0  # steps until the guest's own TF trap is due (0: none)
        self.exits = 0
        self.steps = 0
        self.branches = 0
        self.msr_exits = 0
        self.excursions = 0  # ring-3 runs on unicorn while recording
        self._user: usermode.UserMode | None = None
        self.hybrid_cpu: hybrid.HybridCpu | None = None
        self.hybrid_unavailable: str | None = None  # why recording fell back to step
        self.hybrid_instructions = 0
        self._kvm_owes_step = False  # a stretch stopped before an instruction: KVM runs it

    # --- the loop -------------------------------------------------------------------------
    @property
    def stop_reason(self) -> str | None:
        """The stop's detail when it was not an exit through port 0xF4."""
        if self.stop is None or self.stop.reason == StopReason.EXIT:
            return None
        return self.stop.detail

    @property
    def emulated(self) -> int:
        """Instructions vlbr completed for KVM (gaps.py)."""
        return self.completer.emulated

    @property
    def cpuid_exits(self) -> int:
        return self.completer.cpuid_exits

    @property
    def user_instructions(self) -> int:
        """Instructions the ring-3 excursions ran on unicorn."""
        return self._user.instructions if self._user is not None else 0

    def kick(self) -> None:
        """From another thread: make the current or next KVM_RUN (or ring-3 run) return."""
        self.kicked = True
        self.run_struct.immediate_exit = 1
        if self._user is not None:
            self._user.uc.emu_stop()
        if self.hybrid_cpu is not None:
            self.hybrid_cpu.uc.emu_stop()

    def run_slice(self, budget: Budget, stopped=lambda: False) -> int:
        """Run until yield, exit, a budget runs out or `stopped()`; returns the exits used."""
        used = 0
        self._sync_stepping(at_msr_exit=False)
        while not self.exited and not stopped():
            ran = self._run_hybrid(budget) if self._hybrid_ready() else None
            if ran is not None:
                if not ran:
                    break  # out of budget
                continue
            used += 1
            if self.stepping and self.sync:
                self.run_struct.kvm_valid_regs = SYNC
            exit_ = self.vcpu.run()
            self._kvm_owes_step = False
            in_budget = budget.spend(step=exit_.reason == k.KVM_EXIT_DEBUG and self.stepping)
            if self._handle(exit_) or not in_budget:
                break  # yield, or out of budget
        self.exits += used
        return used

    def _handle(self, exit_: VcpuExit) -> bool:
        """Act on one exit; True when the vCPU yields."""
        reason = exit_.reason
        if reason == k.KVM_EXIT_DEBUG:
            self._after_step()
        elif isinstance(exit_, IoOut):
            return self._io_out(exit_)
        elif isinstance(exit_, IoIn):  # no device: the bus floats high
            self.vcpu.set_io_data(b"\xff" * (exit_.size * exit_.count))
        elif isinstance(exit_, (MsrRead, MsrWrite)):
            self._msr(exit_)
        elif reason == k.KVM_EXIT_HLT and (done := self.completer.cpuid_after_hlt()):
            self._apply(done)
        elif reason == k.KVM_EXIT_INTR:
            pass
        elif isinstance(exit_, InternalError) and (done := self.completer.emulate(exit_)):
            self._apply(done)
        else:
            self._stop(*self._describe_exit(exit_))
        return False

    def _stop(self, reason: str, detail: str) -> None:
        self.exited = True
        self.stop = VcpuStop(reason, detail)
        self._set_stepping(False)

    def _apply(self, done: Outcome | None) -> None:
        """Go on after a completion (gaps.py): stepping follows the model again, and the step
        path decodes where the guest resumes."""
        if done is None:
            return
        if isinstance(done, Stopped):
            if done.exit_status is not None:
                self.exit_status = done.exit_status
            self._stop(done.reason, done.detail)
            return
        if isinstance(done, DebugTrap):
            self._raise_debug()
            return
        self._sync_stepping(at_msr_exit=False)
        if isinstance(done, Inject):
            self._injected = done.vector  # the step path delivers it at the instruction (_event)
            if self.stepping:
                self.pending = self.decode(done.at)
        elif self.stepping:
            self._next_step(done.at, self.vcpu.get_regs())  # ring 3 may follow at once
            if done.port_exit and self.pending is not None:
                self._resumed_at = self.pending.insn.ip

    # --- port I/O (Guest ABI) -------------------------------------------------------------
    def _io_out(self, io: IoOut) -> bool:
        """True when the vCPU yields."""
        data = io.data
        if io.port == PORT_CONSOLE:
            self.console += data[::io.size]
            if len(self.console) >= self.console_limit:
                self._stop(StopReason.CONSOLE_LIMIT, f"vCPU {self.vcpu.index} wrote "
                           f"{self.console_limit} console bytes (the limit)")
        elif io.port == PORT_EXIT:
            self.exit_status = int.from_bytes(data[:io.size], "little")
            self._stop(StopReason.EXIT, f"status {self.exit_status}")
        elif io.port == PORT_YIELD:
            return True
        elif io.port == PORT_TRAP:
            self._apply(self.completer.trap())
        return False

    # --- MSRs routed to the model ---------------------------------------------------------
    def _msr(self, access: MsrRead | MsrWrite) -> None:
        self.msr_exits += 1
        try:
            if isinstance(access, MsrRead):
                self.vcpu.complete_msr(self.model.rdmsr(access.index))
            else:
                self.model.wrmsr(access.index, access.data)
                self.vcpu.complete_msr(0)
        except (GeneralProtection, KeyError):
            self.vcpu.complete_msr(None)  # KVM injects #GP(0) when it completes the instruction
            self._injected = VECTOR_GP
        self._sync_stepping(at_msr_exit=True)

    # --- recording ------------------------------------------------------------------------
    def _sync_stepping(self, at_msr_exit: bool) -> None:
        """Step exactly while the model records; at an MSR exit RIP is still the RDMSR/WRMSR."""
        want = self.model.loaded and self.model.recording
        if want == self.stepping:
            return
        self._set_stepping(want)
        if want and at_msr_exit:
            self.pending = self.decode(self.vcpu.get_regs().rip)

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
                self.completer.cpuid(regs, step.insn.ip)
                rip, step = regs.rip, None
        if step is not None:
            self._retire(step, regs, rip, cpl, sregs)
        if self._guest_tf:
            self._guest_tf -= 1
            if not self._guest_tf:
                self._raise_debug()  # the guest's own TF trap (SDM 17.3.1.4), swallowed by KVM
            if not self.stepping:
                return
        if not self.exited and self.stepping:
            self._sync_stepping(at_msr_exit=False)
        if self.stepping:
            self._next_step(rip, regs)

    def _next_step(self, rip: int, regs) -> None:
        """Decode what KVM steps next; an IRETQ or SYSRETQ to ring 3 under quirk
        user_single_step_fails runs ring 3 on unicorn instead (usermode.py)."""
        self.pending = self.decode(rip)
        if (self.quirks.user_single_step_fails
                and enters_user(self.pending.insn, regs, self.code)):
            self._ring3()
        elif keep_trap_flag(self.pending.insn, regs, self.code):
            self._guest_tf = 2  # the guest sets TF itself: its #DB follows the next insn

    def _ring3(self) -> None:
        """The pending IRETQ or SYSRETQ enters ring 3, which runs on unicorn (usermode.py);
        KVM resumes at the ring-0 handler that ends it."""
        to_user, self.pending = self.pending.insn, None
        if self._user is None:
            self._user = usermode.UserMode(self, fast=self.recording == HYBRID)
        self.excursions += 1
        self._apply(self.completer.ring3(self._user, to_user, lambda: self.kicked))

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

    # --- hybrid recording (hybrid.py) -----------------------------------------------------
    @property
    def recorder(self) -> str:
        """How this vCPU recorded: "step", "hybrid-native" or "hybrid-python"."""
        if self.recording != HYBRID or self.hybrid_unavailable is not None:
            return STEP
        return f"{HYBRID}-{self.hybrid_cpu.recorder}" if self.hybrid_cpu is not None else HYBRID

    def _hybrid_ready(self) -> bool:
        """At a step boundary where a stretch may start: recording, nothing the step path
        still owes KVM (an injected event, a resumed port exit, the guest's TF trap), and the
        next instruction is one unicorn may run."""
        if (self.recording != HYBRID or not self.stepping or self.pending is None
                or self.kicked or self._injected is not None or self._resumed_at is not None
                or self._guest_tf or self._kvm_owes_step
                or hybrid.stops_before(self.pending.insn)):
            return False
        return self._start_hybrid() is not None

    def _start_hybrid(self) -> hybrid.HybridCpu | None:
        if self.hybrid_cpu is None and self.hybrid_unavailable is None:
            try:
                self.hybrid_cpu = hybrid.HybridCpu(self.memory, self.model)
            except Exception as err:  # noqa: BLE001 - no unicorn here: the step path records
                self.hybrid_unavailable = f"{type(err).__name__}: {err}"
        return self.hybrid_cpu

    def _run_hybrid(self, budget: Budget) -> bool | None:
        """One stretch on unicorn, then KVM steps what stopped it; None where the vCPU's
        mode is not one the stretch runs (compatibility mode, ring 3 KVM cannot step), else
        whether budget is left."""
        regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
        cpl = sregs.cs.selector & 3
        if (not sregs.cs.l or not sregs.efer & EFER_LMA or regs.rflags & RFLAGS_TF
                or cpl == 3 and self.quirks.user_single_step_fails):
            return None
        cpu = self.hybrid_cpu
        cpu.load(self.vcpu, regs, sregs)
        stop = cpu.run(budget.exits, lambda: self.kicked)
        cpu.store(self.vcpu, regs)
        self.hybrid_instructions += stop.instructions
        self.branches += cpu.retired
        in_budget = budget.spend_steps(max(stop.instructions, 1))
        if stop.kind == "before" and in_budget:
            self._kvm_owes_step = True  # also where unicorn faulted on what KVM may run
            self._next_step(regs.rip, regs)
        else:
            self.pending = self.decode(regs.rip)
        return in_budget

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
        first = self.decode(handler)
        if first.cls is not None and rip != first.insn.next_ip:
            self.model.retire_branch(Branch(handler, rip, first.cls.kind, cpl,
                                            is_call=first.cls.is_call,
                                            is_return=first.cls.is_return))

    def _handler_before(self, rip: int, sregs, vector: int | None) -> int | None:
        base, limit = sregs.idt.base, sregs.idt.limit
        vectors = [vector] if vector is not None else range(min(256, (limit + 1) // 16))
        for v in vectors:
            raw = self.code.read(base + GATE_SIZE * v, GATE_SIZE)
            if len(raw) < GATE_SIZE or not Gate.decode(raw).present:
                continue
            handler = Gate.decode(raw).offset
            first = self.decode(handler)
            if rip == first.insn.next_ip or rip == handler or (
                    first.cls is not None and rip == first.insn.near_branch_target):
                return handler
        return None

    # --- guest memory and decoding --------------------------------------------------------
    def decode(self, rip: int) -> Step:
        """The instruction at `rip`, decoded from guest memory (guest_code.py)."""
        return self.code.decode(rip)

    def _describe_exit(self, exit_: VcpuExit) -> tuple[str, str]:
        """The stop reason and its detail for an exit the runner cannot handle."""
        reason = exit_.reason
        name = k.EXIT_NAMES.get(reason, f"exit reason {reason}")
        why = {k.KVM_EXIT_SHUTDOWN: StopReason.SHUTDOWN, k.KVM_EXIT_HLT: StopReason.HALTED,
               k.KVM_EXIT_INTERNAL_ERROR: StopReason.UNSUPPORTED}.get(reason, StopReason.ERROR)
        try:
            rip = self.vcpu.get_regs().rip
        except k.KvmError:
            return why, name
        text = f"{name} at rip {rip:#x}"
        if isinstance(exit_, InternalError):
            insn = self.decode(rip).insn
            text += (f" (suberror {exit_.suberror}, instruction {insn}: "
                     f"KVM here cannot run it and vlbr does not emulate it)")
        elif reason == k.KVM_EXIT_SHUTDOWN:
            text += " (triple fault: no IDT or a fault while delivering one)"
        elif reason == k.KVM_EXIT_HLT:
            text += " (HLT: nothing can wake the vCPU)"
        return why, text
