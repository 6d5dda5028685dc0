"""Small ring-3 guests on every run kind (the software CPU, KVM in both recording modes); each
line is the architecture's answer, the SDM section in the guest's opening comment. Each
failed on KVM's recorded runs before the ring-3 excursion was fixed:
- ring3_sse.c: XMM registers cross into ring 3 and back (the excursion took no x87/SSE).
- ring3_segments.c: IRETQ to ring 3 nulls DS/ES of DPL 0 (usermode.null_below_user).
- ring3_sysret.c: ring 3 after SYSRETQ is recorded, the SYSRETQ one of its 6 records (it ran
  unrecorded in KVM before the runner sent SYSRETQ to the excursion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import EVERY_RUN, run_guest

HERE = Path(__file__).parent
EXPECTED = {
    "ring3_sse.c": [f"recording {r} user_saw_xmm0 1 kernel_sees_xmm1 1" for r in (0, 1)],
    "ring3_segments.c": [f"recording {r} ds 0x0 es 0x0" for r in (0, 1)],
    "ring3_sysret.c": ["vector 0x80 records 6 sysret 1"],
}


@pytest.mark.parametrize("guest", sorted(EXPECTED))
@pytest.mark.parametrize("backend,changes", EVERY_RUN)
def test_ring3_guest_gives_the_architectural_lines(guest, backend, changes):
    result, _ = run_guest(backend, HERE / guest, **changes)
    assert result.lines() == EXPECTED[guest]
