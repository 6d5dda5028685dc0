"""XSAVES/XRSTORS of x87 | SSE | Arch LBR (Linux's RFBM 0x8003) on both backends
(xsaves_legacy.c), each line checked against the architecture:
- SDM vol. 1 13.11: XSAVES writes XSTATE_BV = RFBM & XINUSE and XCOMP_BV = RFBM | bit 63,
  and nothing of a component in its initial configuration (13.6: FCW 37FH, XMM 0, ...);
  SSE is saved, and its bit set, when MXCSR is not 1F80H even with every XMM 0 (vol. 2
  XSAVES Operation).
- 13.12 / 13.8.2: XRSTORS loads a component whose XSTATE_BV bit is set, initialises one
  whose bit is clear (MXCSR 1F80H), and #GPs (13) on an MXCSR with reserved bits, changing
  nothing.
- The Guest ABI's entry state has x87 and SSE in their initial configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlbr.backends.base import StopReason
from vlbr.backends.registry import make_backend
from vlbr.guest.build import build_guest
from vlbr.guest.conformance import machine_for

GUEST = Path(__file__).with_name("xsaves_legacy.c")
XCOMP = "xcomp_bv 0x8000000000008003"


def state(name, bv, fcw, mxcsr, xmm0, xmm7, hw):
    return (f"{name} vector -1 xstate_bv {bv:#x} {XCOMP} fcw {fcw:#x} mxcsr {mxcsr:#x} "
            f"xmm0 {xmm0} xmm7 {xmm7} hw_xmm7 {hw}")


EXPECTED = [
    state("entry", 0, 0, 0, 0, 0, 0),  # nothing written: the area stays 0
    "xrstors vector -1",
    state("loaded", 0x3, 0x27F, 0x3F80, 1, 1, 1),
    "xrstors_saved vector -1",
    state("restored", 0x3, 0x27F, 0x3F80, 1, 1, 1),
    "xrstors_init vector -1",
    state("initialised", 0, 0, 0, 0, 0, 0),
    "xrstors_mxcsr_only vector -1",
    state("mxcsr_only", 0x2, 0, 0x1FC0, 0, 0, 0),
    "xrstors_bad_mxcsr vector 13",
    state("unchanged", 0x2, 0, 0x1FC0, 0, 1, 1),
]


@pytest.fixture(scope="module")
def image():
    return build_guest(GUEST)


@pytest.fixture(scope="module")
def runs(image):
    out = {}
    for name in ("software", "kvm"):
        backend = make_backend(name)
        if backend.unavailable_reason() is None:
            out[name] = backend.run(image, machine_for(name))
    return out


@pytest.mark.parametrize("backend", ["software", "kvm"])
def test_each_line_is_the_architectural_one(backend, runs):
    if backend not in runs:
        pytest.skip(f"{backend}: {make_backend(backend).unavailable_reason()}")
    result = runs[backend]
    if backend == "kvm" and result.stops[0].reason == StopReason.UNSUPPORTED:
        pytest.skip(f"this KVM cannot run the guest: {result.stops[0].detail}")
    assert result.ok, result.stops
    assert result.lines() == EXPECTED


def test_both_backends_agree(runs):
    if len(runs) < 2 or not all(r.ok for r in runs.values()):
        pytest.skip("needs both backends running the guest")
    assert runs["software"].console == runs["kvm"].console
