"""Ring-3 excursions while recording: the KVM here cannot single-step CPL3, so unicorn runs it.

Measured on this machine (kvm_pvm): an IRETQ to CPL3 drops the TF that KVM_GUESTDBG_SINGLESTEP
relies on, and an IRETQ to CPL3 with TF set raises #UD; hardware and software breakpoints
(KVM_GUESTDBG_USE_HW_BP / USE_SW_BP) never exit from CPL3; `INT n` (n != 3) at CPL3 raises
#UD. So while the model records, the IRETQ that enters ring 3 is performed here and the ring-3
code runs on unicorn over the very same guest RAM (mem_map_ptr of the KVM memory slot), each
taken branch retired with CPL 3, until it leaves ring 3 (INT n, INT3, a fault, SYSCALL). That
event is delivered through the guest's IDT and TSS here too, and KVM resumes at the handler.
unicorn gets the vCPU's system state (hybrid.load_system: paging, descriptor tables, TR, data
segments) with CS/SS from the IRETQ frame at CPL 3, and x87/SSE (hybrid.LegacySync), so QEMU
raises ring 3's faults (#PF with its error code and CR2) as the CPU would; x87/SSE and the
data segments go back to KVM when ring 3 ends. A linear address the guest maps outside
guest RAM stops the vCPU, as unicorn cannot reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

from iced_x86 import Code, Mnemonic
from unicorn import (UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID,
                     UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INTR, UC_HOOK_MEM_UNMAPPED, UcError)
from unicorn import x86_const as X

from vlbr.arch.msrs import BranchType
from vlbr.arch.x86 import (CR4_SMEP, EFER_NXE, VECTORS_WITH_ERROR_CODE, VECTOR_DB, VECTOR_GP,
                           VECTOR_PF, VECTOR_UD)
from vlbr.backends import branches
from vlbr.backends.base import PORT_CONSOLE, PORT_EXIT, RAM_SIZE
from vlbr.backends.kvm import cpuid, hybrid
from vlbr.backends.software import uc_registers
from vlbr.backends.software.uc_cpu import shared_memory_cpu
from vlbr.host import kvm as k
from vlbr.vcpu.lbr import Branch
from vlbr.backends.software.privilege import SegmentCache, flat_code64, flat_data
from vlbr.x86.descriptors import DESCRIPTOR_SIZE, SegmentDescriptor
from vlbr.x86.events import DeliveryFailed, Interrupted, deliver
from vlbr.x86.paging import Access, PageFault, translate

# Instructions that #GP at CPL3 (SDM: "privileged instructions", plus IOPL-0 ones); the ABI's
# ports are opened by the TSS I/O bitmap, so IN/OUT are left to the port hook.
PRIVILEGED = {Mnemonic.HLT, Mnemonic.CLI, Mnemonic.STI, Mnemonic.RDMSR, Mnemonic.WRMSR,
              Mnemonic.LGDT, Mnemonic.LIDT, Mnemonic.LLDT, Mnemonic.LTR, Mnemonic.LMSW,
              Mnemonic.INVLPG, Mnemonic.INVD, Mnemonic.WBINVD, Mnemonic.CLTS, Mnemonic.XSETBV,
              Mnemonic.XSAVES, Mnemonic.XSAVES64, Mnemonic.XRSTORS, Mnemonic.XRSTORS64,
              Mnemonic.SWAPGS, Mnemonic.SYSRET, Mnemonic.SYSRETQ, Mnemonic.SYSEXIT,
              Mnemonic.SYSEXITQ, Mnemonic.RDPMC, Mnemonic.MONITOR, Mnemonic.MWAIT}
QUIET_STOPS = {Mnemonic.UD0, Mnemonic.UD1, Mnemonic.UD2}  # #UD, but no unicorn error
UNMAPPED = (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED)
MAX_INSTRUCTIONS = 20_000_000
NO_END = (1 << 64) - 1


def null_below_user(seg) -> None:
    """SDM IRET, return to an outer privilege level: a data or non-conforming code segment
    whose DPL is below the new CPL (3) is nulled; QEMU's validate_seg keeps base and limit
    and clears P, which KVM calls unusable."""
    conforming_code = seg.type & 0x8 and seg.type & 0x4
    if not seg.unusable and seg.s and not conforming_code and seg.dpl < 3:
        seg.selector, seg.present, seg.unusable = 0, 0, 1


class OutsideRam(Exception):
    """A page walk reached a physical address outside guest RAM (args: the address)."""


@dataclass
class Leave:
    """How ring 3 ended: an event to deliver, a SYSCALL, the exit port, or a failure."""

    kind: str  # "event" | "syscall" | "exit" | "fail"
    vector: int = 0
    from_ip: int = 0
    return_ip: int = 0
    error_code: int | None = None
    software: bool = False
    cr2: int | None = None
    detail: str = ""


class UserMode:
    """One unicorn CPU sharing a runner's guest RAM; `enter()` runs one ring-3 excursion."""

    def __init__(self, runner, fast: bool = False):
        """fast: branches from the block log, code hooks only where ring 3 is acted on
        (hybrid.py), instead of a hook on every instruction."""
        self.runner = runner
        self.fast = fast
        # step: every page executable, a code hook sees each instruction; fast: pages run once
        # scanned (hybrid.CodeStops)
        self.uc = uc = shared_memory_cpu(runner.memory, executable=not fast)
        self.privilege = hybrid.privilege_switch(uc)  # QEMU's exception state, as the hybrid's
        if fast:
            self.branches = hybrid.BranchLog(uc, runner.memory)
            self.branches.cpl = 3
            self.code = hybrid.CodeStops(uc, runner.memory, self._on_candidate,
                                         self.branches.code_changed, self.branches.add_fence)
        else:
            uc.hook_add(UC_HOOK_CODE, self._on_code)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self.legacy: hybrid.LegacySync | None = None
        self.unmapped: int | None = None
        self.leave: Leave | None = None
        self.prev = None
        self.last = None  # fast: the block the next drain pairs first
        self.current = 0
        self.count = 0
        self.instructions = 0

    # --- the excursion --------------------------------------------------------------------
    def enter(self, iret_ip: int, regs, frame: tuple[int, int, int, int, int],
              flat: bool = False) -> Leave:
        """Perform the IRETQ at iret_ip (frame: RIP, CS, RFLAGS, RSP, SS) and run ring 3;
        flat: a SYSRETQ's (CS and SS are fixed flat segments, the data segments stay)."""
        rip, cs, rflags, rsp, ss = frame
        self.user_cs, self.user_ss = cs, ss
        self.runner.model.retire_branch(Branch(iret_ip, rip, BranchType.OTHER, cs & 3))
        uc = self.uc
        problem = self._load_system(cs, ss, flat)
        if problem is not None:
            return Leave("fail", detail=f"IRETQ at {iret_ip:#x} to ring 3: {problem}")
        self.privilege.exception_delivered()  # the last excursion's fault is not in progress
        uc_registers.load(uc, regs, rsp=rsp, rflags=rflags, rip=rip)
        self.leave, self.prev, self.count, self.unmapped = None, None, 0, None
        self.current = rip
        if self.fast:
            self._run_fast(rip)
        else:
            uc.ctl_flush_tb()  # KVM may have changed code since the last excursion
            try:
                uc.emu_start(rip, NO_END, count=MAX_INSTRUCTIONS)
            except UcError as err:
                self._fault(err)
        if self.leave is None:
            self.leave = Leave("fail", detail=f"ring 3 stopped at {self.current:#x} after "
                               f"{self.count} instructions without leaving ring 3")
        self.instructions += self.count
        self._store_system()
        return self.leave

    def _load_system(self, cs: int, ss: int, flat: bool) -> str | None:
        """KVM's system state and x87/SSE into unicorn, CS and SS (CPL 3) from the GDT as
        an IRETQ loads them, or flat as SYSRETQ does; what makes that impossible, else None."""
        vcpu = self.runner.vcpu
        sregs = vcpu.get_sregs()
        try:
            if flat:
                code, stack = flat_code64(cs, 3), flat_data(ss, 3)
            else:
                for _, name in hybrid.DATA_SEGMENTS:
                    null_below_user(getattr(sregs, name))
                code, stack = self._descriptor(sregs, cs), self._descriptor(sregs, ss)
            hybrid.load_system(self.uc, self.privilege, sregs, code, stack)
        except ValueError as err:
            return str(err)
        if self.legacy is None:
            self.legacy = hybrid.LegacySync(vcpu, self.runner.model.config.table)
        self.legacy.to_unicorn(self.uc)
        return None

    def _descriptor(self, sregs, selector: int) -> SegmentCache:
        """The GDT entry `selector` names, as QEMU caches it."""
        raw = self.runner.code.read(sregs.gdt.base + (selector & ~7), DESCRIPTOR_SIZE)
        if len(raw) < DESCRIPTOR_SIZE or (selector & ~7) + 7 > sregs.gdt.limit:
            raise ValueError(f"selector {selector:#x} is outside the GDT")
        d = SegmentDescriptor.decode(raw)
        return SegmentCache(selector, d.base, d.limit, d.high)

    def _store_system(self) -> None:
        """What ring 3 may have changed besides the general registers: x87/SSE and the data
        segments, back into KVM."""
        vcpu = self.runner.vcpu
        self.legacy.to_kvm(self.uc)
        sregs = vcpu.get_sregs()
        hybrid.store_data_segments(self.privilege, sregs)
        vcpu.set_sregs(sregs)

    def _run_fast(self, rip: int) -> None:
        """Ring 3 in pieces of at most the block log's room; a fetch from a page not yet
        scanned scans it and goes on (hybrid.CodeStops)."""
        uc, log = self.uc, self.branches
        self.code.refresh()
        left, self.last, first = MAX_INSTRUCTIONS, None, log.seen
        while self.leave is None and left > 0:
            count = min(left, log.room())
            before = log.seen
            try:
                uc.emu_start(rip, NO_END, count=count)
                error = None
            except UcError as err:
                error = err
            fault = self.code.fetch_fault()
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            if error is not None and error.errno == UC_ERR_FETCH_PROT and fault is not None:
                self.privilege.exception_delivered()  # QEMU raised it as a #PF
                self.last = log.drain(self.runner.model, self.last)  # it branched to `fault`
                if self.code.executable(fault):
                    left, rip = left - (log.seen - before), fault
                    continue
                self.unmapped = rip = fault
                error = UcError(UC_ERR_FETCH_UNMAPPED)
            if error is None and self.leave is None and self._quiet_stop(rip):
                error = UcError(UC_ERR_INSN_INVALID)  # with a block hook QEMU stops silently
            if error is not None:
                self.current = rip  # the instruction unicorn could not run
                self._fault(error)
            if self.leave is not None or self.runner.kicked:
                break
            left -= count
            log.drain(self.runner.model, self.last)  # a count stop: its last block restarts
            self.last = None
        log.drain(self.runner.model, self.last)
        self.count = log.seen - first
        self.runner.branches += log.retired
        log.retired = 0

    def _quiet_stop(self, rip: int) -> bool:
        insn = self.runner.decode(rip).insn
        return insn.code == Code.INVALID or insn.mnemonic in QUIET_STOPS

    def _stop(self, leave: Leave) -> None:
        if self.leave is None:
            self.leave = leave
        self.uc.emu_stop()

    # --- hooks ----------------------------------------------------------------------------
    def _on_code(self, uc, address, size, user_data) -> None:
        if self.leave is not None:
            uc.emu_stop()
            return
        self.count += 1
        prev, self.prev = self.prev, None
        if prev is not None:
            self._retire(prev, address)
        self.current = address
        step = self._act(address)
        if step is not None and step.cls is not None and not step.cls.interrupt:
            self.prev = step

    def _on_candidate(self, uc, address, size, user_data) -> None:
        """fast: where an instruction ring 3 acts on may start (hybrid.stop_starts)."""
        if self.leave is not None:
            uc.emu_stop()
            return
        self.current = address  # INT n, INT3, INTO and SYSCALL hooks read it
        step = self._act(address)
        if step is None or step.cls is None or not step.cls.conditional:
            return
        insn = step.insn
        if branches.needs_flags(insn, step.cls):  # only the flags tell: decide it now
            self.last = self.branches.drain(self.runner.model, self.last)
            if branches.taken_before(insn, uc.reg_read(X.UC_X86_REG_RFLAGS),
                                     uc.reg_read(X.UC_X86_REG_RCX)):
                self._retire_branch(insn, step.cls, insn.next_ip)

    def _act(self, address: int):
        """What ring 3 cannot run as it is: CPUID at a patched site, a patched INT n /
        SYSCALL, #GP for a privileged instruction, #DB for INT1; else the decoded step."""
        if address in self.runner.cpuid_sites:
            self._cpuid(address)
            return None
        original = self.runner.trap_sites.get(address)
        if original is not None:  # a patched INT n / SYSCALL (backends.kvm.traps)
            if original.code == Code.SYSCALL:
                self._stop(Leave("syscall", from_ip=address, return_ip=original.next_ip))
            else:
                self._stop(Leave("event", original.immediate8, address, original.next_ip,
                                 software=True))
            return None
        step = self.runner.decode(address)
        insn = step.insn
        if insn.mnemonic in PRIVILEGED or insn.code in hybrid.MOV_CR_DR:
            self._stop(Leave("event", VECTOR_GP, address, address, 0))
            return None
        if insn.code == Code.INT1:
            self._stop(Leave("event", VECTOR_DB, address, insn.next_ip, software=True))
            return None
        return step

    def _retire(self, step, address: int) -> None:
        insn, cls = step.insn, step.cls
        if cls.conditional and address == insn.next_ip:
            if insn.near_branch_target != insn.next_ip or not branches.taken_after(
                    insn, self.uc.reg_read(X.UC_X86_REG_RFLAGS), self.uc.reg_read(X.UC_X86_REG_RCX)):
                return
        self._retire_branch(insn, cls, address)

    def _retire_branch(self, insn, cls, address: int) -> None:
        self.runner.branches += 1
        self.runner.model.retire_branch(Branch(insn.ip, address, cls.kind, 3,
                                               is_call=cls.is_call, is_return=cls.is_return))

    def _cpuid(self, address: int) -> None:
        uc = self.uc
        out = self.runner.completer.cpuid_answer(uc.reg_read(X.UC_X86_REG_EAX),
                                                 uc.reg_read(X.UC_X86_REG_ECX))
        for reg, value in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX,
                               X.UC_X86_REG_RDX), out.as_tuple()):
            uc.reg_write(reg, value)
        uc.reg_write(X.UC_X86_REG_RIP, address + len(cpuid.HLT_NOP))

    def _on_interrupt(self, uc, intno, user_data) -> None:
        insn = self.runner.decode(self.current).insn
        soft = (insn.mnemonic == Mnemonic.INT and insn.immediate8 == intno
                or insn.mnemonic == Mnemonic.INT3 and intno == 3
                or insn.mnemonic == Mnemonic.INTO and intno == 4)
        if self.fast and not soft:  # no hook saw the faulting instruction: RIP is it
            self.current = uc.reg_read(X.UC_X86_REG_RIP)
        if soft:
            self._stop(Leave("event", intno, insn.ip, insn.next_ip, software=True))
        else:  # QEMU's error code is intact only inside the hook (software backend too)
            code = self.privilege.last_exception()[0] if intno in VECTORS_WITH_ERROR_CODE else None
            cr2 = uc.reg_read(X.UC_X86_REG_CR2) if intno == VECTOR_PF else None
            self._stop(Leave("event", intno, self.current, self.current, code, cr2=cr2))

    def _on_out(self, uc, port, size, value, user_data) -> None:
        if port == PORT_CONSOLE:
            self.runner.console.append(value & 0xFF)
        elif port == PORT_EXIT:
            self._stop(Leave("exit", return_ip=value & 0xFFFFFFFF))

    def _on_in(self, uc, port, size, user_data) -> int:
        return (1 << (8 * size)) - 1

    def _on_syscall(self, uc, user_data) -> None:
        self._stop(Leave("syscall", from_ip=self.current, return_ip=self.current + 2))

    def _on_unmapped(self, uc, access, address, size, value, user_data) -> bool:
        self.unmapped = address
        return False

    def _fault(self, err: UcError) -> None:
        ip = self.current
        if err.errno == UC_ERR_INSN_INVALID:
            self._stop(Leave("event", VECTOR_UD, ip, ip))
        elif err.errno in UNMAPPED and self.unmapped is not None:
            self._page_fault(ip, Access(write=err.errno == UC_ERR_WRITE_UNMAPPED, user=True,
                                        fetch=err.errno == UC_ERR_FETCH_UNMAPPED))
        elif self.leave is None:
            self._stop(Leave("fail", detail=f"unicorn at {ip:#x}: {err}"))

    def _page_fault(self, ip: int, access: Access) -> None:
        """unicorn stopped on an access outside guest RAM (QEMU raises ring 3's own #PFs
        itself): the guest's page tables (x86.paging) name where it landed for the stop, and
        a #PF the walk finds is delivered."""
        linear, sregs = self.unmapped, self.runner.vcpu.get_sregs()
        try:
            physical = translate(self._read_table, sregs.cr3, sregs.cr0, linear, access,
                                 nx_enabled=bool(sregs.efer & EFER_NXE),
                                 smep=bool(sregs.cr4 & CR4_SMEP))
        except PageFault as fault:
            self._stop(Leave("event", VECTOR_PF, ip, ip, fault.error_code, cr2=fault.linear))
            return
        except OutsideRam as err:
            physical = err.args[0]
        self._stop(Leave("fail", detail=(
            f"ring 3 at {ip:#x}: {linear:#x} is mapped to {physical:#x}, outside guest RAM, "
            f"which unicorn cannot reach")))

    def _read_table(self, address: int, size: int) -> bytes:
        if not 0 <= address <= RAM_SIZE - size:
            raise OutsideRam(address)
        return bytes(self.runner.memory[address:address + size])

    # --- back to KVM ----------------------------------------------------------------------
    def user_regs(self, regs) -> None:
        """Copy unicorn's general registers, RFLAGS and RIP into a kvm_regs (the event's
        delivery, or SYSCALL, then sets RIP)."""
        uc_registers.store(self.uc, regs)


class KvmEventCpu:
    """The x86.events.EventCpu of a KVM vCPU: guest RAM, `regs` as the interrupted state
    (they may come from the ring-3 excursion), sregs from KVM."""

    def __init__(self, vcpu, memory, regs, cs: int, ss: int, cpl: int, cr2: int | None = None):
        self.vcpu, self.memory, self.regs = vcpu, memory, regs
        self.sregs = vcpu.get_sregs()
        self.state = Interrupted(ss, regs.rsp, regs.rflags, cs, cpl)
        self.cr2 = cr2

    def read(self, address: int, size: int) -> bytes:
        if not 0 <= address <= RAM_SIZE - size:
            raise DeliveryFailed(f"cannot read {size} bytes at {address:#x}: outside RAM")
        return bytes(self.memory[address:address + size])

    def write(self, address: int, data: bytes) -> None:
        if not 0 <= address <= RAM_SIZE - len(data):
            raise DeliveryFailed(f"cannot push the exception frame at {address:#x}: outside RAM")
        self.memory[address:address + len(data)] = data

    def tables(self):
        s = self.sregs
        return (s.idt.base, s.idt.limit), (s.gdt.base, s.gdt.limit), s.tr.base

    def interrupted(self) -> Interrupted:
        return self.state

    def enter(self, handler: int, rsp: int, rflags: int, cs_selector: int,
              cs: SegmentDescriptor, cpl: int, null_ss: bool) -> None:
        regs, sregs = self.regs, self.sregs
        regs.rsp, regs.rip, regs.rflags = rsp, handler, rflags
        self.vcpu.set_regs(regs)
        sregs.cs = k.kvm_segment(base=cs.base, limit=cs.limit, selector=cs_selector, type=cs.type,
                                 present=1, dpl=cs.dpl, db=cs.db, s=1, l=cs.l, g=cs.g)
        if null_ss:  # 64-bit mode loads SS with a NULL selector (RPL = new CPL)
            sregs.ss = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=cpl, type=3, present=1,
                                     dpl=cpl, db=1, s=1, l=0, g=1)
        if self.cr2 is not None:
            sregs.cr2 = self.cr2
        self.vcpu.set_sregs(sregs)


def deliver_event(vcpu, memory, regs, vector: int, return_ip: int, error_code: int | None,
                  cpl: int, old_cs: int, old_ss: int, software_ip: int | None = None,
                  cr2: int | None = None) -> int:
    """Deliver an event through the guest's IDT into KVM's vCPU state (x86.events); `regs`
    holds the interrupted state and is updated. Returns the handler; raises DeliveryFailed
    where the CPU would shut down."""
    cpu = KvmEventCpu(vcpu, memory, regs, old_cs, old_ss, cpl, cr2)
    return deliver(cpu, vector, return_ip, error_code, software_ip).handler
