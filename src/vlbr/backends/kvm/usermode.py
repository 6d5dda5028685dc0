"""Ring-3 excursions while recording: the KVM here cannot single-step CPL3, so unicorn runs it.

Measured on this machine (kvm_pvm): an IRETQ to CPL3 drops the TF that KVM_GUESTDBG_SINGLESTEP
relies on, and an IRETQ to CPL3 with TF set raises #UD; hardware and software breakpoints
(KVM_GUESTDBG_USE_HW_BP / USE_SW_BP) never exit from CPL3; `INT n` (n != 3) at CPL3 raises
#UD. So while the model records, the IRETQ that enters ring 3 is performed here and the ring-3
code runs on unicorn over the very same guest RAM (mem_map_ptr of the KVM memory slot), each
taken branch retired with CPL 3, until it leaves ring 3 (INT n, INT3, a fault, SYSCALL). That
event is delivered through the guest's IDT and TSS here too, and KVM resumes at the handler.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from iced_x86 import Code, Mnemonic
from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID,
                     UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INTR, UC_HOOK_MEM_UNMAPPED, UC_MODE_64, UC_PROT_ALL, Uc, UcError)
from unicorn import x86_const as X

from vlbr.arch.x86 import (RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, VECTORS_WITH_ERROR_CODE,
                           VECTOR_DB, VECTOR_GP, VECTOR_PF, VECTOR_UD)
from vlbr.arch.msrs import BranchType
from vlbr.backends import branches, layout
from vlbr.backends.base import PORT_CONSOLE, PORT_EXIT, RAM_SIZE
from vlbr.backends.kvm import cpuid
from vlbr.policy.runtime_cpuid import runtime_cpuid
from vlbr.host import kvm as k
from vlbr.vcpu.lbr import Branch

GPRS = [("rax", X.UC_X86_REG_RAX), ("rbx", X.UC_X86_REG_RBX), ("rcx", X.UC_X86_REG_RCX),
        ("rdx", X.UC_X86_REG_RDX), ("rsi", X.UC_X86_REG_RSI), ("rdi", X.UC_X86_REG_RDI),
        ("rbp", X.UC_X86_REG_RBP), ("r8", X.UC_X86_REG_R8), ("r9", X.UC_X86_REG_R9),
        ("r10", X.UC_X86_REG_R10), ("r11", X.UC_X86_REG_R11), ("r12", X.UC_X86_REG_R12),
        ("r13", X.UC_X86_REG_R13), ("r14", X.UC_X86_REG_R14), ("r15", X.UC_X86_REG_R15)]

# Instructions that #GP at CPL3 (SDM: "privileged instructions", plus IOPL-0 ones); the ABI's
# ports are opened by the TSS I/O bitmap, so IN/OUT are left to the port hook.
PRIVILEGED = {Mnemonic.HLT, Mnemonic.CLI, Mnemonic.STI, Mnemonic.RDMSR, Mnemonic.WRMSR,
              Mnemonic.LGDT, Mnemonic.LIDT, Mnemonic.LLDT, Mnemonic.LTR, Mnemonic.LMSW,
              Mnemonic.INVLPG, Mnemonic.INVD, Mnemonic.WBINVD, Mnemonic.CLTS, Mnemonic.XSETBV,
              Mnemonic.XSAVES, Mnemonic.XSAVES64, Mnemonic.XRSTORS, Mnemonic.XRSTORS64,
              Mnemonic.SWAPGS, Mnemonic.SYSRET, Mnemonic.SYSRETQ, Mnemonic.SYSEXIT,
              Mnemonic.SYSEXITQ, Mnemonic.RDPMC, Mnemonic.MONITOR, Mnemonic.MWAIT}
MOV_CR_DR = {Code.MOV_R64_CR, Code.MOV_CR_R64, Code.MOV_R64_DR, Code.MOV_DR_R64}
MAX_INSTRUCTIONS = 20_000_000


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

    def __init__(self, runner):
        self.runner = runner
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(X.UC_CPU_X86_HASWELL)
        address = ctypes.addressof(ctypes.c_char.from_buffer(runner.memory))
        uc.mem_map_ptr(0, RAM_SIZE, UC_PROT_ALL, address)
        uc.hook_add(UC_HOOK_CODE, self._on_code)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self.unmapped: int | None = None
        self.leave: Leave | None = None
        self.prev = None
        self.current = 0
        self.count = 0
        self.instructions = 0

    # --- the excursion --------------------------------------------------------------------
    def enter(self, iret_ip: int, regs, frame: tuple[int, int, int, int, int]) -> Leave:
        """Perform the IRETQ at iret_ip (frame: RIP, CS, RFLAGS, RSP, SS) and run ring 3."""
        rip, cs, rflags, rsp, ss = frame
        self.user_cs, self.user_ss = cs, ss
        self.runner.model.retire_branch(Branch(iret_ip, rip, BranchType.OTHER, cs & 3))
        uc = self.uc
        uc.ctl_flush_tb()  # KVM may have changed code since the last excursion
        for name, reg in GPRS:
            uc.reg_write(reg, getattr(regs, name))
        uc.reg_write(X.UC_X86_REG_RSP, rsp)
        uc.reg_write(X.UC_X86_REG_RFLAGS, (rflags & ~RFLAGS_TF) | 2)
        self.leave, self.prev, self.count, self.unmapped = None, None, 0, None
        self.current = rip
        try:
            uc.emu_start(rip, (1 << 64) - 1, count=MAX_INSTRUCTIONS)
        except UcError as err:
            self._fault(err)
        if self.leave is None:
            self.leave = Leave("fail", detail=f"ring 3 stopped at {self.current:#x} after "
                               f"{self.count} instructions without leaving ring 3")
        self.instructions += self.count
        return self.leave

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
        if address in self.runner.cpuid_sites:
            self._cpuid(address)
            return
        original = self.runner.trap_sites.get(address)
        if original is not None:  # a patched INT n / SYSCALL (backends.kvm.traps)
            if original.code == Code.SYSCALL:
                self._stop(Leave("syscall", from_ip=address, return_ip=original.next_ip))
            else:
                self._stop(Leave("event", original.immediate8, address, original.next_ip,
                                 software=True))
            return
        step = self.runner._decode(address)
        insn = step.insn
        if insn.mnemonic in PRIVILEGED or insn.code in MOV_CR_DR:
            self._stop(Leave("event", VECTOR_GP, address, address, 0))
            return
        if insn.code == Code.INT1:
            self._stop(Leave("event", VECTOR_DB, address, insn.next_ip, software=True))
            return
        if step.cls is not None and not step.cls.interrupt:
            self.prev = step

    def _retire(self, step, address: int) -> None:
        insn, cls = step.insn, step.cls
        if cls.conditional and address == insn.next_ip:
            if insn.near_branch_target != insn.next_ip or not branches.taken_after(
                    insn, self.uc.reg_read(X.UC_X86_REG_RFLAGS), self.uc.reg_read(X.UC_X86_REG_RCX)):
                return
        self.runner.branches += 1
        self.runner.model.retire_branch(Branch(insn.ip, address, cls.kind, 3,
                                               is_call=cls.is_call, is_return=cls.is_return))

    def _cpuid(self, address: int) -> None:
        r = self.runner
        uc = self.uc
        out = runtime_cpuid(r.table, uc.reg_read(X.UC_X86_REG_EAX), uc.reg_read(X.UC_X86_REG_ECX),
                           apic_id=r.vcpu.index, cr4=r.vcpu.get_sregs().cr4,
                           xcr0=r.vcpu.get_xcrs().get(0, 3), xss=r._xss())
        for reg, value in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX,
                               X.UC_X86_REG_RDX), out.as_tuple()):
            uc.reg_write(reg, value)
        r.cpuid_exits += 1
        uc.reg_write(X.UC_X86_REG_RIP, address + len(cpuid.HLT_NOP))

    def _on_interrupt(self, uc, intno, user_data) -> None:
        insn = self.runner._decode(self.current).insn
        soft = (insn.mnemonic == Mnemonic.INT and insn.immediate8 == intno
                or insn.mnemonic == Mnemonic.INT3 and intno == 3
                or insn.mnemonic == Mnemonic.INTO and intno == 4)
        if soft:
            self._stop(Leave("event", intno, insn.ip, insn.next_ip, software=True))
        else:
            code = 0 if intno in VECTORS_WITH_ERROR_CODE else None
            self._stop(Leave("event", intno, self.current, self.current, code))

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
        elif err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED):
            write = 2 if err.errno == UC_ERR_WRITE_UNMAPPED else 0
            fetch = 16 if err.errno == UC_ERR_FETCH_UNMAPPED else 0
            self._stop(Leave("event", VECTOR_PF, ip, ip, 4 | write | fetch, cr2=self.unmapped))
        elif self.leave is None:
            self._stop(Leave("fail", detail=f"unicorn at {ip:#x}: {err}"))

    # --- back to KVM ----------------------------------------------------------------------
    def user_regs(self, regs) -> None:
        """Copy unicorn's general registers, RSP and RFLAGS into a kvm_regs."""
        for name, reg in GPRS:
            setattr(regs, name, self.uc.reg_read(reg))
        regs.rsp = self.uc.reg_read(X.UC_X86_REG_RSP)
        regs.rflags = self.uc.reg_read(X.UC_X86_REG_RFLAGS)


def read_gate(memory, idt_base: int, idt_limit: int, vector: int):
    """(offset, selector, ist, type, dpl, present) of a 64-bit IDT gate, or None."""
    at = idt_base + 16 * vector
    if 16 * vector + 15 > idt_limit or not 0 <= at <= RAM_SIZE - 16:
        return None
    lo, hi = struct.unpack_from("<QQ", memory, at)
    offset = (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16 | (hi & 0xFFFFFFFF) << 32
    access = (lo >> 40) & 0xFF
    return offset, (lo >> 16) & 0xFFFF, (lo >> 32) & 7, access & 0xF, (access >> 5) & 3, access >> 7


def deliver_event(vcpu, memory, regs, vector: int, return_ip: int, error_code: int | None,
                  software: bool, cpl: int, old_cs: int, old_ss: int, cr2: int | None = None
                  ) -> int | str:
    """Deliver an event through the guest's IDT into KVM's vCPU state, as the CPU does (SDM
    vol. 3A 6.14: 64-bit frame; TSS.RSP0 from CPL3, the IST stack when the gate names one,
    else the current stack); returns the handler address, or why delivery failed (where the
    CPU would shut down). `regs` holds the interrupted state and is updated."""
    sregs = vcpu.get_sregs()
    gate = read_gate(memory, sregs.idt.base, sregs.idt.limit, vector)
    if software and gate is not None and gate[4] < cpl:  # INT n through a lower-DPL gate
        vector, error_code, software = VECTOR_GP, vector * 8 + 2, False
        gate = read_gate(memory, sregs.idt.base, sregs.idt.limit, vector)
    if gate is None or not gate[5] or gate[3] not in (0xE, 0xF):
        return f"vector {vector}: no present 64-bit interrupt/trap gate in the IDT"
    offset, selector, ist, gate_type, _, _ = gate
    gdt = bytes(memory[sregs.gdt.base:sregs.gdt.base + sregs.gdt.limit + 1])
    if (selector | 7) > sregs.gdt.limit:
        return f"vector {vector}: gate selector {selector:#x} outside the GDT"
    cs = layout.decode_descriptor(gdt, selector & ~3)
    if not (cs.present and cs.s and cs.type & 0x8 and cs.l) or cs.dpl != 0:
        return f"vector {vector}: gate selector {selector:#x} is not 64-bit ring-0 code"
    tss = sregs.tr.base
    if ist:
        stack = struct.unpack_from("<Q", memory, tss + 36 + 8 * (ist - 1))[0]
    elif cpl != 0:
        stack = struct.unpack_from("<Q", memory, tss + 4)[0]
    else:
        stack = regs.rsp
    stack &= ~0xF
    words = [old_ss, regs.rsp, regs.rflags, old_cs, return_ip]
    if error_code is not None:
        words.append(error_code)
    stack -= 8 * len(words)
    if not 0 <= stack <= RAM_SIZE - 8 * len(words):
        return f"vector {vector}: stack {stack:#x} outside RAM"
    struct.pack_into(f"<{len(words)}Q", memory, stack, *reversed(words))
    regs.rsp, regs.rip = stack, offset
    regs.rflags = (regs.rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | 1 << 17)) | 2
    if gate_type == 0xE:
        regs.rflags &= ~RFLAGS_IF
    vcpu.set_regs(regs)
    sregs.cs = k.kvm_segment(base=0, limit=cs.limit, selector=selector & ~3, type=cs.type,
                             present=1, dpl=0, db=cs.db, s=1, l=cs.l, g=cs.g)
    if cpl != 0:  # 64-bit mode loads SS with a NULL selector (RPL 0) on a privilege change
        sregs.ss = k.kvm_segment(base=0, limit=0xFFFFFFFF, selector=0, type=3, present=1,
                                 dpl=0, db=1, s=1, l=0, g=1)
    if cr2 is not None:
        sregs.cr2 = cr2
    vcpu.set_sregs(sregs)
    return offset
