"""vlbr's own account of what a Linux guest's Arch LBR must hold at each PMI, kept apart
from the LBR model (vlbr.vcpu.lbr) for `vlbr linux --verify-samples`.

The machine hands it every branch it hands the model while the model records (LBREn set,
not frozen), with the LBR_CTL in force; it keeps those that pass its own reading of the
filter (OS/USR by the CPL at the target, the branch-type bits; SDM Vol. 3B 18.1.2.3
"Filtering"). At a PMI it works out the records from that history alone: the newest DEPTH
branches, or, with CALL_STACK, the stack of calls that returns popped. Records the guest
itself writes (LBR_DEPTH clears them, record MSRs, XRSTORS of component 15) start a new
history from what it wrote."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from vlbr.arch.msrs import BranchType, LbrCtl
from vlbr.vcpu import Branch
from vlbr.vcpu.config import LbrConfig

HISTORY = 1 << 16  # branches kept since the last write of the records
EMPTY = (0, 0)
RESERVED_TYPES = (6, 7)  # BR_TYPE encodings no branch has


@dataclass(frozen=True)
class PmiSnapshot:
    """One PMI taken while LBREn was set: the records expected and the model's, newest
    first, as (FROM_IP, TO_IP) up to the first empty one (where Linux stops reading)."""

    index: int
    instructions: int  # virtual time of the PMI
    ip: int  # where the guest was interrupted: a sample's IP
    expected: tuple[tuple[int, int], ...]
    recorded: tuple[tuple[int, int], ...]
    complete: bool  # False when the history it needed was longer than HISTORY

    @property
    def agrees(self) -> bool:
        return self.expected == self.recorded


def _until_empty(records) -> tuple[tuple[int, int], ...]:
    out = []
    for record in records:
        if record[0] == 0:
            break
        out.append((record[0], record[1]))
    return tuple(out)


class GroundTruth:
    def __init__(self, config: LbrConfig, history: int = HISTORY):
        self.config = config
        self.seed: list[tuple[int, int]] = []  # the records as the guest last wrote them
        self.taken: deque[tuple[int, int, bool]] = deque(maxlen=history)  # (from, to, pops)
        self.lost = False  # the history overflowed since the seed
        self.pops = False  # a call-stack return is in the history
        self.snapshots: list[PmiSnapshot] = []
        self._filters: dict[int, Callable[[Branch], bool]] = {}

    def branch(self, b: Branch, ctl: int) -> None:
        """A branch retired while the LBR records, under LBR_CTL `ctl`."""
        passes = self._filters.get(ctl) or self._filters.setdefault(ctl, self._filter(ctl))
        if not passes(b):
            return
        pops = bool(ctl & LbrCtl.CALL_STACK) and (b.kind == BranchType.NEAR_RET or b.is_return)
        self.pops = self.pops or pops
        self.lost = self.lost or len(self.taken) == self.taken.maxlen
        self.taken.append((b.from_ip, b.to_ip, pops))

    def written(self, records) -> None:
        """The guest wrote the records (or restored them): the history starts over."""
        self.seed = [(r[0], r[1]) for r in records]
        self.taken.clear()
        self.lost = self.pops = False

    def pmi(self, depth: int, ip: int, instructions: int, recorded) -> None:
        """A PMI at LBR_DEPTH `depth`: note what the records must be and what they are."""
        expected, complete = self.expected(depth)
        self.snapshots.append(PmiSnapshot(len(self.snapshots), instructions, ip, expected,
                                          _until_empty(recorded), complete))

    def expected(self, depth: int) -> tuple[tuple[tuple[int, int], ...], bool]:
        """The records newest first, and whether the kept history was enough to know."""
        if self.pops:
            return _until_empty(self._call_stack(depth)), not self.lost
        newest = [(frm, to) for frm, to, _ in list(self.taken)[-depth:][::-1]]
        complete = len(newest) == depth or not self.lost
        return _until_empty(newest + self.seed[:depth - len(newest)]), complete

    def _call_stack(self, depth: int) -> list[tuple[int, int]]:
        stack = (self.seed + [EMPTY] * depth)[:depth]
        for frm, to, pops in self.taken:
            stack = stack[1:] + [EMPTY] if pops else [(frm, to)] + stack[:depth - 1]
        return stack

    def _filter(self, ctl: int) -> Callable[[Branch], bool]:
        cfg = self.config
        user = not cfg.cpl_filtering or bool(ctl & LbrCtl.USR)
        kernel = not cfg.cpl_filtering or bool(ctl & LbrCtl.OS)
        kinds = {kind for kind in BranchType
                 if not cfg.branch_filtering or ctl & kind.filter_bit}

        def passes(b: Branch) -> bool:
            if not (user if b.cpl else kernel) or b.kind in RESERVED_TYPES:
                return False
            return (BranchType.OTHER if b.kind >= BranchType.OTHER else b.kind) in kinds
        return passes
