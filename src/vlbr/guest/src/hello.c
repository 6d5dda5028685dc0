/* The sample guest: shows its CPUID 0x1C, then records one known loop with LBR_CTL taken from
   vlbr_lbr_ctl (patched by `vlbr run --lbr-ctl`). */
#include "runtime/runtime.h"

void known_loop(u64 ctl);

int guest_main(int cpu, int ncpus)
{
    struct cpuid_regs r = cpuid(0x1C, 0);
    rt_printf("hello from vCPU %d of %d\n", cpu, ncpus);
    rt_printf("CPUID.(0x1C,0): eax=%x ebx=%x ecx=%x edx=%x\n", r.eax, r.ebx, r.ecx, r.edx);
    struct lbr_caps caps = lbr_caps();
    if (!caps.arch_lbr || !caps.max_depth) {
        rt_printf("no Arch LBR enumerated\n");
        return 0;
    }
    u64 ctl = vlbr_lbr_ctl;
    /* Validate the value with LBREn clear, so the check itself leaves no record. */
    u32 vector = wrmsr_safe(MSR_LBR_CTL, ctl & ~LBR_CTL_LBREN);
    wrmsr(MSR_LBR_CTL, 0);
    if (vector != NO_FAULT) {
        rt_printf("IA32_LBR_CTL=%lx rejected with vector %d\n", ctl, vector);
        return 1;
    }
    lbr_clear();
    rt_printf("IA32_LBR_DEPTH=%lu, running known_loop with IA32_LBR_CTL=%lx\n",
              rdmsr(MSR_LBR_DEPTH), ctl);
    known_loop(ctl);
    rt_printf("newest record: from %lx to %lx\n", rdmsr(MSR_LBR_FROM(0)), rdmsr(MSR_LBR_TO(0)));
    return 0;
}
