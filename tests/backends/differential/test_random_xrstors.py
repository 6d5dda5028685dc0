"""Random XRSTORS headers on both backends (hypothesis): XSTATE_BV, XCOMP_BV, one header byte
and RFBM drawn from small sets around x87 | SSE | Arch LBR (XCR0 = 3, IA32_XSS = 0x8000);
each XRSTORS must fault exactly where the SDM says (vol. 2 XRSTORS, vol. 1 13.12):
#GP(0) if XCOMP_BV[63] is clear, if XCOMP_BV[62:0] names a component outside XCR0 | XSS,
if XSTATE_BV names one outside XCOMP_BV, or if header bytes 63:16 are not all zero; else
it loads (component 15 at its compacted offset, 576 here, holding a valid LBR_DEPTH)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from guest_runs import guest_lines

LEGACY, AVX, PKRU, LBR, COMPACTED = 0x3, 0x4, 1 << 9, 1 << 15, 1 << 63
ENABLED = LEGACY | LBR  # XCR0 | IA32_XSS in the guest
XSTATE_BVS = [0, 0x1, 0x2, LEGACY, LBR, LEGACY | LBR, AVX | LEGACY]
XCOMP_BVS = [LEGACY | LBR, COMPACTED | LEGACY | LBR, COMPACTED | LEGACY, COMPACTED | LBR,
             COMPACTED | LEGACY | LBR | AVX, COMPACTED | LEGACY | LBR | PKRU, COMPACTED]
HEADER_BYTES = [None, 16, 40, 63]  # which of header bytes 63:16 is set, if any
RFBMS = [LEGACY, LBR, LEGACY | LBR, 0x1]
CASE = st.tuples(st.sampled_from(XSTATE_BVS), st.sampled_from(XCOMP_BVS),
                 st.sampled_from(HEADER_BYTES), st.sampled_from(RFBMS))

HEAD = r'''#include "runtime.h"
static u8 area[8192] __attribute__((aligned(64)));
static void one(u64 xstate_bv, u64 xcomp_bv, int header_byte, u64 rfbm, u64 depth) {
    for (int i = 0; i < (int)sizeof(area); i++) area[i] = 0;
    *(u16 *)area = 0x37f;                    /* a valid legacy region: FCW, MXCSR */
    *(u32 *)(area + 24) = 0x1f80;
    *(u64 *)(area + 512) = xstate_bv;
    *(u64 *)(area + 520) = xcomp_bv;
    if (header_byte >= 0) area[512 + header_byte] = 1;
    *(u64 *)(area + 576 + 8) = depth;        /* component 15: LBR_CTL 0, a valid LBR_DEPTH */
    rt_printf("vector %d\n", (int)xrstors_safe(area, rfbm));
}
int guest_main(int cpu, int ncpus) {
    wrmsr(MSR_XSS, 1ull << 15);
    u64 depth = rdmsr(MSR_LBR_DEPTH);
'''


def expected(xstate_bv: int, xcomp_bv: int, header_byte: int | None, rfbm: int) -> str:
    faults = (not xcomp_bv & COMPACTED or xcomp_bv & ~COMPACTED & ~ENABLED
              or xstate_bv & ~xcomp_bv or header_byte is not None)
    return "vector 13" if faults else "vector -1"


def source(cases) -> str:
    calls = "".join(f"    one({x:#x}ull, {c:#x}ull, {-1 if h is None else h}, {r:#x}ull, depth);\n"
                    for x, c, h, r in cases)
    return HEAD + calls + "    return 0;\n}\n"


@pytest.mark.parametrize("backend", ["software", "kvm"])
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(CASE, min_size=1, max_size=12))
def test_random_xrstors_headers_fault_where_the_sdm_says(backend, cases, tmp_path):
    assert guest_lines(backend, source(cases), tmp_path) == [expected(*c) for c in cases]
