/* XRSTORS that loads IA32_LBR_CTL with LBREn set, followed at once by a taken JMP: the JMP
   is the first branch recorded (SDM vol. 3 18.1.2: LBREn starts recording; vol. 1 13.12:
   XRSTORS loads component 15 as WRMSR of each field would). Then the same with LBREn clear:
   nothing is recorded. Compacted form, RFBM = XCOMP_BV = component 15 only. */
#include "runtime.h"

#define LBR_COMPONENT (1ull << 15)
#define LEGACY_AND_HEADER 576

static u8 area[8192] __attribute__((aligned(64)));

static u64 *header(void) { return (u64 *)(area + 512); }
static u64 *lbr_state(void) { return (u64 *)(area + LEGACY_AND_HEADER); }

/* XRSTORS the area, then a taken JMP to the next instruction, then LBREn cleared by WRMSR.
   Returns the JMP's address and target. */
static void restore_then_jump(u64 *from, u64 *to)
{
    __asm__ volatile("lea %0, [rip + 2f]\n\t"
                     "lea %1, [rip + 3f]\n\t"
                     "mov eax, 0x8000\n\t"
                     "xor edx, edx\n\t"
                     "xrstors64 [%2]\n"
                     "2: jmp 3f\n"
                     "3: mov ecx, 0x14ce\n\t"
                     "xor eax, eax\n\t"
                     "xor edx, edx\n\t"
                     "wrmsr\n\t"
                     : "=&r"(*from), "=&r"(*to) : "r"(area) : "rax", "rcx", "rdx", "memory");
}

static void run(const char *name, u64 ctl)
{
    u64 from, to;
    lbr_clear();
    for (int i = 0; i < (int)sizeof(area); i++)
        area[i] = 0;
    u32 vec = xsaves_safe(area, LBR_COMPONENT);
    header()[0] |= LBR_COMPONENT;        /* load component 15, not its init state */
    lbr_state()[0] = ctl;                /* IA32_LBR_CTL; the depth stays the saved one */
    restore_then_jump(&from, &to);
    rt_printf("%s xsaves %d newest_is_the_jmp %d older_empty %d\n", name, vec,
              rdmsr(MSR_LBR_FROM(0)) == from && rdmsr(MSR_LBR_TO(0)) == to,
              rdmsr(MSR_LBR_FROM(1)) == 0);
}

int guest_main(int cpu, int ncpus)
{
    wrmsr(MSR_XSS, LBR_COMPONENT);
    run("enabled", LBR_CTL_LBREN | LBR_CTL_OS | LBR_CTL_BRANCH_BITS);
    run("disabled", LBR_CTL_OS | LBR_CTL_BRANCH_BITS);
    return 0;
}
