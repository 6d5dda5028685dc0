/* The Arch LBR conformance suite, two-vCPU part: each vCPU's records are its own. vCPUs run
   interleaved and switch on the yield port, so their recording windows overlap in time. */
#include "runtime/runtime.h"

/* The checks this program reports, in order (the runner reads them from the image). */
VLBR_CHECKS(
    "abi_entry_0 abi_entry_1 vcpu_isolation_0 vcpu_isolation_1 vcpu_clear_private");

extern char smp0_top[], smp0_jcc[], smp0_top2[], smp0_jcc2[];
extern char smp1_top[], smp1_jcc[], smp1_top2[], smp1_jcc2[];
void smp_run0(u64 ctl);
void smp_run1(u64 ctl);

#define MAX_WAIT 100000

static volatile int recorded[MAX_VCPUS];
static volatile int cleared;

/* Records 0..3 (newest first) must be the vCPU's own two loops, the rest zero. */
static int own_records(int cpu, u64 depth)
{
    u64 jcc2 = cpu ? (u64)smp1_jcc2 : (u64)smp0_jcc2, top2 = cpu ? (u64)smp1_top2 : (u64)smp0_top2;
    u64 jcc = cpu ? (u64)smp1_jcc : (u64)smp0_jcc, top = cpu ? (u64)smp1_top : (u64)smp0_top;
    for (u64 i = 0; i < depth; i++) {
        u64 from = rdmsr(MSR_LBR_FROM(i)), to = rdmsr(MSR_LBR_TO(i));
        u64 want_from = i < 2 ? jcc2 : i < 4 ? jcc : 0, want_to = i < 2 ? top2 : i < 4 ? top : 0;
        if (from != want_from || to != want_to) {
            rt_printf("FAIL vcpu_isolation_%d: record %lu is %lx->%lx, expected %lx->%lx\n", cpu,
                      i, from, to, want_from, want_to);
            return 0;
        }
    }
    return 1;
}

static int wait_for(volatile int *flag)
{
    for (int i = 0; i < MAX_WAIT; i++) {
        if (*flag)
            return 1;
        rt_yield();
    }
    return 0;
}

int guest_main(int cpu, int ncpus)
{
    if (cpu > 1)
        return 0;
    u64 index = rt_cpu_index();
    rt_printf("%s abi_entry_%d", index == (u64)cpu && ncpus == 2 ? "PASS" : "FAIL", cpu);
    if (index != (u64)cpu || ncpus != 2)
        rt_printf(": RDI=%d RSI=%d, GDT base says vCPU %lu, want 2 vCPUs", cpu, ncpus, index);
    rt_putc('\n');

    struct lbr_caps caps = lbr_caps();
    if (!caps.arch_lbr || !caps.max_depth || !caps.branch_filter) {
        rt_printf("SKIP vcpu_isolation_%d: Arch LBR with branch filtering not enumerated\n", cpu);
        if (cpu == 1)
            rt_printf("SKIP vcpu_clear_private: Arch LBR not enumerated\n");
        return 0;
    }
    lbr_clear();
    u64 ctl = LBR_CTL_LBREN | LBR_CTL_OS | LBR_CTL_COND;
    if (cpu == 0)
        smp_run0(ctl);
    else
        smp_run1(ctl);
    recorded[cpu] = 1;
    u64 depth = rdmsr(MSR_LBR_DEPTH);
    if (own_records(cpu, depth))
        rt_printf("PASS vcpu_isolation_%d\n", cpu);

    /* vCPU 0 rewrites its DEPTH (clearing its records) once vCPU 1 has recorded; vCPU 1's
       records must survive it. */
    if (cpu == 0) {
        if (wait_for(&recorded[1]))
            lbr_clear();
        cleared = 1;
        return 0;
    }
    if (!wait_for(&cleared)) {
        rt_printf("FAIL vcpu_clear_private: vCPU 0 never cleared its records\n");
        return 1;
    }
    u64 from = rdmsr(MSR_LBR_FROM(0));
    rt_printf("%s vcpu_clear_private", from == (u64)smp1_jcc2 ? "PASS" : "FAIL");
    if (from != (u64)smp1_jcc2)
        rt_printf(": vCPU 0's IA32_LBR_DEPTH write left vCPU 1's record 0 FROM %lx, want %lx",
                  from, (u64)smp1_jcc2);
    rt_putc('\n');
    return 0;
}
