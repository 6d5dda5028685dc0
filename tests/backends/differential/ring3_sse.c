/* SSE state across a ring-3 excursion, recorded and not: ring 3 sees the XMM0 ring 0 set and
   ring 0 sees the XMM1 ring 3 set (SDM vol. 1 10.2: the XMM registers are one per logical
   processor, at every CPL). On KVM a recorded excursion runs on unicorn (usermode.py), whose
   x87/SSE must come from KVM and go back to it. Only MOVDQA (this KVM emulates few SSE forms). */
#include "runtime.h"
static const u64 pattern[2] __attribute__((aligned(16))) = {0x1111222233334444ull, 0x5555666677778888ull};
static const u64 pattern2[2] __attribute__((aligned(16))) = {0x9999aaaabbbbccccull, 0xddddeeeeffff0000ull};
static u64 seen[2] __attribute__((aligned(16)));
static u64 back[2] __attribute__((aligned(16)));
static void user(void)
{
    __asm__ volatile("movdqa %0, xmm0\n\tmovdqa xmm1, %1\n\tint 0x80" : "=m"(seen) : "m"(pattern2));
}
int guest_main(int cpu, int ncpus)
{
    for (int rec = 0; rec < 2; rec++) {
        static const u64 zero[2] __attribute__((aligned(16)));
        __asm__ volatile("movdqa xmm0, %0\n\tmovdqa xmm1, %1" :: "m"(pattern), "m"(zero));
        seen[0] = seen[1] = 0;
        if (rec) wrmsr(MSR_LBR_CTL, LBR_CTL_LBREN | LBR_CTL_USR | LBR_CTL_OS | LBR_CTL_BRANCH_BITS);
        rt_enter_user(user, rt_user_stack_top());
        wrmsr(MSR_LBR_CTL, 0);
        __asm__ volatile("movdqa %0, xmm1" : "=m"(back));
        rt_printf("recording %d user_saw_xmm0 %d kernel_sees_xmm1 %d\n", rec,
                  seen[0] == pattern[0] && seen[1] == pattern[1],
                  back[0] == pattern2[0] && back[1] == pattern2[1]);
    }
    return 0;
}
