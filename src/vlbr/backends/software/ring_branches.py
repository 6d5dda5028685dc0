"""The branches a run of natively logged blocks made, as numpy arrays for the model's
record_batch: each block's last instruction (decoded once per distinct block) against the
start of the block after it, decided as branches.branch_between decides it without flags
(a conditional to its own fall-through is left to the hook that saw its flags)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from vlbr.backends.branches import needs_flags


NO_BRANCH = np.uint64((1 << 64) - 1)  # a block whose last instruction records nothing here


class RingBranches(NamedTuple):
    from_ips: np.ndarray
    to_ips: np.ndarray
    kinds: np.ndarray
    is_return: np.ndarray


def ring_branches(tail: Callable, addresses: np.ndarray, sizes: np.ndarray,
                  prev: tuple[int, int] | None) -> RingBranches:
    """tail((start, size)) -> (insn, BranchClass) of a block; prev: the block before the
    first one (None: no branch into the first)."""
    if prev is not None:
        addresses = np.concatenate((np.array([prev[0]], np.uint64), addresses))
        sizes = np.concatenate((np.array([prev[1]], np.uint32), sizes))
    starts, block_sizes, index = _distinct(addresses, sizes)
    ip, kind, returns, next_ip, always = _tails(tail, starts, block_sizes)
    frm, to = index[:-1], addresses[1:]
    taken = always[frm] | (next_ip[frm] != to)
    taken &= ip[frm] != NO_BRANCH
    return RingBranches(ip[frm][taken], to[taken], kind[frm][taken], returns[frm][taken])


def _distinct(addresses: np.ndarray, sizes: np.ndarray):
    """The distinct blocks (starts, sizes) and each entry's index among them."""
    starts, index = np.unique(addresses, return_inverse=True)
    block_sizes = np.empty(len(starts), sizes.dtype)
    block_sizes[index] = sizes
    if np.array_equal(block_sizes[index], sizes):
        return starts, block_sizes, index
    # a start logged with two sizes (retranslated): the slower unique over both columns
    blocks, index = np.unique(np.stack((addresses, sizes.astype(np.uint64))), axis=1,
                              return_inverse=True)
    return blocks[0], blocks[1], index.reshape(-1)


def _tails(tail: Callable, starts: np.ndarray, sizes: np.ndarray):
    """Per distinct block: its branch's ip (NO_BRANCH if none), kind, is_return, next ip,
    and whether any arrival means taken (not a conditional that may fall through)."""
    n = len(starts)
    ip = np.full(n, NO_BRANCH, np.uint64)
    kind = np.zeros(n, np.int64)
    returns = np.zeros(n, bool)
    next_ip = np.zeros(n, np.uint64)
    always = np.ones(n, bool)
    for k, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
        insn, cls = tail((start, size))
        if cls is None or cls.interrupt:
            continue
        if needs_flags(insn, cls):
            continue
        ip[k], kind[k], returns[k] = insn.ip, int(cls.kind), cls.is_return
        next_ip[k], always[k] = insn.next_ip, not cls.conditional
    return ip, kind, returns, next_ip, always
