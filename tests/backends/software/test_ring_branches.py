"""ring_branches (the call-stack drain of the native ring) against branches.branch_between
pair by pair, on random block sequences: every kind of block end (none, unconditional,
conditional, conditional to its own fall-through, interrupt), a start logged with two sizes
(a retranslated block), with and without a block before the first."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vlbr.arch.msrs import BranchType
from vlbr.backends.branches import BranchClass, branch_between
from vlbr.backends.software.ring_branches import ring_branches

ENDS = ["none", "jmp", "call", "ret", "jcc", "jcc_to_fallthrough", "int"]
STARTS = [0x1000, 0x1040, 0x2000, 0xFFFF_FFFF_8100_0000]


def tail_of(ends: dict):
    """A block (start, size) ends with the instruction ends[block] at start + size - 2."""
    def tail(block):
        start, size = block
        end = ends[block]
        ip, next_ip = start + size - 2, start + size
        target = next_ip if end == "jcc_to_fallthrough" else 0x1040
        insn = SimpleNamespace(ip=ip, next_ip=next_ip, near_branch_target=target)
        cls = {"none": None,
               "jmp": BranchClass(BranchType.NEAR_REL_JMP),
               "call": BranchClass(BranchType.NEAR_REL_CALL, is_call=True),
               "ret": BranchClass(BranchType.NEAR_RET, is_return=True),
               "jcc": BranchClass(BranchType.JCC, conditional=True),
               "jcc_to_fallthrough": BranchClass(BranchType.JCC, conditional=True),
               "int": BranchClass(BranchType.OTHER, is_far=True, interrupt=True)}[end]
        return insn, cls
    return tail


BLOCKS = st.tuples(st.sampled_from(STARTS), st.sampled_from([4, 16]))


@given(st.dictionaries(BLOCKS, st.sampled_from(ENDS), min_size=1),
       st.data(), st.booleans())
def test_ring_branches_are_branch_between_of_each_pair(ends, data, with_prev):
    blocks = list(ends)
    run = data.draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=40))
    prev = data.draw(st.sampled_from(blocks)) if with_prev else None
    tail = tail_of(ends)
    found = ring_branches(tail, np.array([b[0] for b in run], np.uint64),
                          np.array([b[1] for b in run], np.uint32), prev)
    pairs = zip([prev] + run[:-1], run)
    expected = [b for b in (branch_between(*tail(f), t[0], 0) for f, t in pairs if f) if b]
    assert found.from_ips.tolist() == [b.from_ip for b in expected]
    assert found.to_ips.tolist() == [b.to_ip for b in expected]
    assert found.kinds.tolist() == [int(b.kind) for b in expected]
    assert found.is_return.tolist() == [b.is_return for b in expected]
