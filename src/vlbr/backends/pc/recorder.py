"""The branches a Linux guest takes on the PC machine, into its Arch LBR while LBREn is set:
a Python block hook (installed only while the model records) pairs each executed block with
the next and decodes the first one's last instruction through the guest's page tables.

The machine tells the recorder when the CPU stopped (`interrupted`: a slice ends mid-block,
so the next block does not follow the last one) and when recording may have changed
(`sync`); exceptions, interrupts and SYSCALL are recorded where vlbr delivers them."""

from __future__ import annotations

from typing import Callable

import iced_x86
from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn import x86_const as X

from vlbr.backends.branches import branch_between, classify, needs_flags
from vlbr.vcpu import ArchLbrVcpu
from vlbr.vcpu.lbr import Branch
from vlbr.x86.paging import PageFault

from .ground_truth import GroundTruth


class BranchRecorder:
    def __init__(self, uc: Uc, lbr: ArchLbrVcpu, read_code: Callable[[int, int], bytes],
                 truth: GroundTruth | None = None):
        self.uc, self.lbr, self.read_code, self.truth = uc, lbr, read_code, truth
        self.hook: int | None = None
        self.last_block: tuple[int, int] | None = None
        # (CR3, address, size) -> tail
        self.tails: dict[tuple[int, int, int], tuple] = {}
        self.branches = 0  # branches retired into the model, for reports
        self.cpl = self.cr3 = 0  # the running slice's
        self.ignored = False  # the running slice's branches cannot change the records

    def sync(self) -> None:
        """Install or remove the block hook to follow the model's LBREn and filters."""
        want = self.lbr.recording
        if want == (self.hook is not None):
            return
        if want:
            self.hook = self.uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        else:
            self.uc.hook_del(self.hook)
            self.hook = None
        self.uc.ctl_flush_tb()  # blocks translated before carry no (or the old) hook call
        self.last_block = None
        self.tails.clear()  # another task's code may sit at the same addresses now

    def starting(self, cpl: int, cr3: int) -> None:
        """A slice starts at `cpl`: the machine ends a slice wherever CPL could change (an
        event, SYSCALL, IRET/SYSRET run alone) or LBR_CTL could (WRMSR, XRSTORS), so every
        branch of it is taken at that CPL, under one filter; and a user slice cannot write
        CR3 (MOV CR3 #GPs at CPL 3). A slice at a CPL LBR_CTL does not record is not
        classified at all (its branches carry no cycles to count), unless the ground truth
        wants every branch."""
        self.cpl, self.cr3 = cpl, cr3
        self.ignored = self.truth is None and not self.lbr.filters.cpl_ok[cpl]

    def interrupted(self) -> None:
        self.last_block = None

    def code_changed(self) -> None:
        self.tails.clear()

    def _on_block(self, uc, address, size, user_data) -> None:
        prev, self.last_block = self.last_block, (address, size)
        if prev is None or self.ignored:
            return
        tail = self._tail(prev)
        if tail is None or tail[1] is None:
            return
        flags = None  # a register read costs more than the rest of the hook: only if needed
        if needs_flags(*tail):
            flags = (uc.reg_read(X.UC_X86_REG_RFLAGS), uc.reg_read(X.UC_X86_REG_RCX))
        branch = branch_between(*tail, address, self.cpl, flags)
        if branch is not None:
            self.retire(branch)

    def retire(self, branch: Branch) -> None:
        """A taken branch: the block hook's, or one the machine performed (SYSCALL, IRET)."""
        self.lbr.retire_branch(branch)
        self._noted(branch)

    def exception(self, branch: Branch) -> None:
        """An event delivered from branch.from_ip to its handler: a record of type OTHER, LER."""
        self.lbr.exception(branch.from_ip, branch.to_ip, branch.cpl)
        self._noted(branch)

    def _noted(self, branch: Branch) -> None:
        if self.lbr.recording:
            self.branches += 1
            if self.truth is not None:
                self.truth.branch(branch, self.lbr.lbr_ctl)

    def _tail(self, block: tuple[int, int]):
        cr3 = self.cr3 if self.cpl == 3 else self.uc.reg_read(X.UC_X86_REG_CR3)
        key = (cr3, *block)
        tail = self.tails.get(key)
        if tail is None:
            try:
                code = self.read_code(*block)
            except (PageFault, UcError):  # the page went away (a process exited)
                return None
            insn = None
            for insn in iced_x86.Decoder(64, code, ip=block[0]):
                pass
            tail = self.tails[key] = (insn, classify(insn) if insn is not None else None)
        return tail
