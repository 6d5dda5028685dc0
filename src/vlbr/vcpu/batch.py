"""The batch recording path: a numpy branch trace in, the same records as retire_branch out.

Filtering (LBREn, CPL, branch type) and the CYC_CNT arithmetic are vectorised; Python only
touches the last `depth` pushed branches, or, in call-stack mode, every surviving branch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlbr.arch.msrs import INFO_CYC_CNT_MASK, INFO_CYC_CNT_VALID, INFO_MISPRED, BranchType
from vlbr.errors import VlbrError

from .faults import VcpuStateError
from .state import ZERO_RECORD

if TYPE_CHECKING:
    from .lbr import ArchLbrVcpu


class BranchTraceError(VlbrError):
    """A branch trace's arrays are malformed (lengths, kinds or CPLs out of range)."""


def _array(values, dtype, name: str, n: int | None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise BranchTraceError(f"branch trace {name}: {exc}") from None
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise BranchTraceError(f"branch trace {name}: expected a 1-D array of {n} elements")
    return arr


def record_batch(vcpu: "ArchLbrVcpu", from_ips, to_ips, kinds, cpls, mispred=None,
                 cycles=None, is_return=None) -> None:
    from_ips = _array(from_ips, np.uint64, "from_ips", None)
    n = len(from_ips)
    to_ips = _array(to_ips, np.uint64, "to_ips", n)
    kinds = _array(kinds, np.int64, "kinds", n)
    cpls = _array(cpls, np.int64, "cpls", n)
    if n and (kinds.min() < 0 or kinds.max() > 15):
        raise BranchTraceError("branch trace kinds: BR_TYPE values must be 0..15")
    if n and (cpls.min() < 0 or cpls.max() > 3):
        raise BranchTraceError("branch trace cpls: CPL values must be 0..3")
    filters = vcpu.filters
    if not filters.recording:
        if not vcpu.loaded:
            raise VcpuStateError("record_batch on a vCPU whose LBR state is put")
        return
    if n == 0:
        return
    cfg = vcpu.config
    passed = np.asarray(filters.kind_ok, dtype=bool)[kinds] & np.asarray(filters.cpl_ok, dtype=bool)[cpls]
    survivors = np.flatnonzero(passed)
    if filters.call_stack:
        pops = kinds[survivors] == int(BranchType.NEAR_RET)
        if is_return is not None:
            pops |= _array(is_return, bool, "is_return", n)[survivors]
        pushes = survivors[~pops]
    else:
        pops = None
        pushes = survivors

    # CYC_CNT of a push: cycles since the previous push (the running count carries in and out)
    if cycles is not None:
        total = np.cumsum(_array(cycles, np.int64, "cycles", n))
        before = np.concatenate(([0], total[pushes[:-1]])) if len(pushes) else np.zeros(0, np.int64)
        cyc = total[pushes] - before
        if len(pushes):
            cyc[0] += vcpu.pending_cycles
            vcpu.pending_cycles = int(total[-1] - total[pushes[-1]])
        else:
            vcpu.pending_cycles += int(total[-1])
    else:
        cyc = np.zeros(len(pushes), np.int64)
        if len(pushes):
            cyc[0] = vcpu.pending_cycles
            vcpu.pending_cycles = 0

    info = np.asarray(filters.info_kind, dtype=np.uint64)[kinds[pushes]]
    if cfg.mispredict and mispred is not None:
        mis = _array(mispred, bool, "mispred", n)[pushes]
        info |= np.where(mis, np.uint64(INFO_MISPRED), np.uint64(0))
    if cfg.timed_lbr:
        info |= np.minimum(cyc, INFO_CYC_CNT_MASK).astype(np.uint64) | np.uint64(INFO_CYC_CNT_VALID)
    frm, to = from_ips[pushes], to_ips[pushes]
    if cfg.lip and vcpu.cs_base:
        base = np.uint64(vcpu.cs_base)
        frm, to = frm + base, to + base  # uint64 arithmetic wraps mod 2^64, as linear addresses do

    s = vcpu.guest_state()
    depth = s.depth
    if pops is None:
        keep = min(depth, len(pushes))
        tail = list(zip(frm[-keep:].tolist(), to[-keep:].tolist(), info[-keep:].tolist()))
        tail.reverse()
        s.rec[:depth] = tail + s.rec[:depth - keep]
        return
    _call_stack_pass(s.rec, depth, pops, frm.tolist(), to.tolist(), info.tolist())


def _call_stack_pass(rec: list, depth: int, pops: np.ndarray, frm: list, to: list,
                     info: list) -> None:
    """Apply pushes and pops in order: the only part that stays a Python loop."""
    push = 0
    for is_pop in pops.tolist():
        if is_pop:
            del rec[0]
            rec.insert(depth - 1, ZERO_RECORD)
        else:
            rec.insert(0, (frm[push], to[push], info[push]))
            del rec[depth]
            push += 1
