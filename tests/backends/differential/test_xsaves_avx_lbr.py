"""x87 | SSE | AVX | Arch LBR through one compacted XSAVES/XRSTORS image (xsaves_avx_lbr.c),
on both backends: the AVX bytes where the guest CPUID lets XCR0 hold AVX (KVM, over KVM's own
XSAVE image), component 15 after it (SDM vol. 1 13.4.3 compacted layout; 13.5.13 Arch LBR
state: LBR_CTL, LBR_DEPTH, LER_FROM/TO/INFO, then FROM/TO/INFO per record), its MSRs loaded by
XRSTORS (13.12) and everything given back by XSAVES (13.11) with XCOMP_BV = bit 63 | RFBM.
The software CPU enumerates no AVX (unicorn runs none), so its image is x87 | SSE | LBR; the
component-15 part of the line is the same on both."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import run_guest
from vlbr.arch.x86 import XFEATURE_AVX

GUEST = Path(__file__).with_name("xsaves_avx_lbr.c")
LBR_PART = "msrs 1 xcomp_bv 0x8000000000008003"  # bit 2 masked out of the printed XCOMP_BV


def expected(avx: bool) -> str:
    return (f"xsaves_avx_lbr avx {int(avx)} lbr_at after vectors 0xffffffff 0xffffffff {LBR_PART} "
            f"avx_bv {int(avx)} avx_same 1 lbr_bv 1 lbr_same 1")


@pytest.mark.parametrize("backend", ["software", "kvm"])
def test_one_image_holds_every_component_the_guest_enumerates(backend):
    result, machine = run_guest(backend, GUEST)
    avx = bool(machine.cpuid.regs(0xD, 0).eax & XFEATURE_AVX)
    assert result.lines() == [expected(avx)]
    if backend == "kvm":
        assert avx, "KVM's guest CPUID here enumerates AVX state (on either host vendor)"
