"""SSE registers cross a ring-3 excursion both ways on both backends and KVM recording modes
(ring3_sse.c). Before the excursion took KVM's x87/SSE, a recorded one on KVM lost both."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import EVERY_RUN, run_guest

GUEST = Path(__file__).with_name("ring3_sse.c")
EXPECTED = [f"recording {r} user_saw_xmm0 1 kernel_sees_xmm1 1" for r in (0, 1)]


@pytest.mark.parametrize("backend,changes", EVERY_RUN)
def test_xmm_registers_cross_ring3_both_ways(backend, changes):
    result, _ = run_guest(backend, GUEST, **changes)
    assert result.lines() == EXPECTED
