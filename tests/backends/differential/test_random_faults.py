"""Random page-fault scenarios on both backends and both KVM recording modes (hypothesis): a
PDE with random P/RW/US bits, a read or write from CPL0 or CPL3, with Arch LBR recording on or
off; each run must give exactly the #PF the SDM predicts (vol. 3A 4.6 access rights with
CR0.WP=1, 4.7 error code), and CR2. Recorded, KVM's faults go through the hybrid's stretches
or single-steps at CPL 0 and the ring-3 excursion at CPL 3."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_runs import EVERY_RUN, guest_lines
from vlbr.arch.x86 import PF_PRESENT, PF_USER, PF_WRITE, PTE_P, PTE_RW, PTE_US

TARGET = 0x300018  # in the page PD[1] maps
CASE_FLAGS = [0, PTE_P, PTE_P | PTE_RW, PTE_P | PTE_US, PTE_P | PTE_RW | PTE_US]
CASE = st.tuples(st.sampled_from(CASE_FLAGS),
                 st.booleans(), st.booleans(), st.booleans())  # PDE flags, write, user, recording


HEAD = r'''#include "runtime.h"
#define PD ((volatile u64 *)0x3000)
static u64 saved;
static inline u64 read_cr2(void) { u64 v; __asm__ volatile("mov %0, cr2" : "=r"(v)); return v; }
static void set_pde(u64 flags) {
    PD[1] = (saved & ~7ull) | flags;
    __asm__ volatile("mov rax, cr3\n\tmov cr3, rax" ::: "rax", "memory");
}
static void user_read(void) { (void)*(volatile u64 *)TARGET; __asm__ volatile("int 0x80"); }
static void user_write(void) { *(volatile u64 *)TARGET = 1; __asm__ volatile("int 0x80"); }
static void kernel_access(int write) {
    struct fault_ctx *f = rt_fault();
    f->vector = NO_FAULT;
    if (write)
        __asm__ volatile(ASM_TRY("1f") "mov qword ptr [%[p]], 1\n\t1:\n\t"
                         :: [p] "r"(TARGET), [recover] "r"(&f->recover) : "r11", "memory");
    else
        __asm__ volatile(ASM_TRY("1f") "mov r10, [%[p]]\n\t1:\n\t"
                         :: [p] "r"(TARGET), [recover] "r"(&f->recover) : "r10", "r11", "memory");
    f->recover = 0;
}
static void one(u64 flags, int write, int user, int recording) {
    __asm__ volatile("mov cr2, %0" :: "r"(0ull));
    set_pde(flags);
    if (recording) wrmsr(MSR_LBR_CTL, LBR_CTL_LBREN | LBR_CTL_OS | LBR_CTL_USR | LBR_CTL_BRANCH_BITS);
    u64 vector, error;
    if (user) {
        vector = rt_enter_user(write ? user_write : user_read, rt_user_stack_top());
        error = rt_user_exit_error[rt_cpu_index()];
        if (vector == 0x80) vector = NO_FAULT;
    } else {
        kernel_access(write);
        vector = rt_fault()->vector;
        error = rt_fault()->error;
    }
    u64 cr2 = read_cr2();
    wrmsr(MSR_LBR_CTL, 0);
    set_pde(7);
    if (vector == NO_FAULT) rt_printf("ok\n");
    else rt_printf("vector %lx error %lx cr2 %lx\n", vector, error, cr2);
}
int guest_main(int cpu, int ncpus) {
    saved = PD[1];
'''


def expected(flags: int, write: bool, user: bool, recording: bool) -> str:
    present = bool(flags & PTE_P)
    allowed = present and (not write or flags & PTE_RW) and (not user or flags & PTE_US)
    if allowed:
        return "ok"
    error = (PF_PRESENT if present else 0) | (PF_WRITE if write else 0) | (PF_USER if user else 0)
    return f"vector 0xe error {error:#x} cr2 {TARGET:#x}"


def source(cases) -> str:
    body = "".join(f"    one({f}, {int(w)}, {int(u)}, {int(r)});\n" for f, w, u, r in cases)
    return HEAD.replace("TARGET", hex(TARGET)) + body + "    return 0;\n}\n"


@pytest.mark.parametrize("backend,changes", EVERY_RUN)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(CASE, min_size=1, max_size=8))
def test_random_page_faults_are_the_architectural_ones(backend, changes, cases, tmp_path):
    lines = guest_lines(backend, source(cases), tmp_path, **changes)
    assert lines == [expected(*c) for c in cases]


@pytest.mark.parametrize("backend,changes", EVERY_RUN)
def test_every_page_fault_case_once(backend, changes, tmp_path):
    cases = [(f, w, u, r) for f in CASE_FLAGS for w in (False, True) for u in (False, True)
             for r in (False, True)]
    assert guest_lines(backend, source(cases), tmp_path, **changes) == [expected(*c) for c in cases]
