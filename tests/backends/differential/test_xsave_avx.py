"""AVX state (XSAVE component 2) through XSAVES/XRSTORS and XSAVE (xsave_avx.c), on every
backend whose guest CPUID lets XCR0 enable it: on KVM vlbr completes these instructions over
KVM's own XSAVE image (backends/kvm/xsaves.py), so the bytes a compacted XRSTORS loads are
KVM's, and XSAVES and the standard XSAVE give them back (SDM vol. 1 13.4.3 layouts, 13.8.2,
13.11, 13.12). The software CPU enumerates no AVX (unicorn cannot run it) and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import run_guest
from vlbr.arch.x86 import XFEATURE_AVX

GUEST = Path(__file__).with_name("xsave_avx.c")
DONE = ("xsave_avx init_bv 0 vectors 0xffffffff 0xffffffff 0xffffffff xsaves_bv 1 same 1 "
        "xsave_bv 1 same 1")


@pytest.mark.parametrize("backend", ["software", "kvm"])
def test_avx_state_round_trips_where_xcr0_can_hold_it(backend):
    result, machine = run_guest(backend, GUEST)
    enumerated = machine.cpuid.regs(0xD, 0).eax & XFEATURE_AVX
    assert result.lines() == [DONE if enumerated else "xsave_avx not enumerated"]
    if backend == "software":
        assert not enumerated
    elif enumerated:
        assert result.stats["emulated"] == 4  # XSAVES, XRSTORS, XSAVES, XSAVE: all vlbr's
