"""The records lbr_scenarios.S's known_loop must leave, from the image's own symbols."""

from __future__ import annotations

from vlbr.arch.msrs import BranchType
from vlbr.backends.image import GuestImage


def known_loop_branches(image: GuestImage) -> list[tuple[int, int, BranchType]]:
    """Oldest first: 3 iterations of call kl_leaf / ret / jnz kl_top, the last jnz not taken
    (the loop in src/vlbr/guest/src/lbr_scenarios.S)."""
    a = image.address
    call = (a("kl_call"), a("kl_leaf"), BranchType.NEAR_REL_CALL)
    ret = (a("kl_ret"), a("kl_after_call"), BranchType.NEAR_RET)
    jcc = (a("kl_jcc"), a("kl_top"), BranchType.JCC)
    return [call, ret, jcc, call, ret, jcc, call, ret]
