/* The data segment registers ring 3 finds after IRETQ from ring 0, recorded and not: DS and ES
   held the kernel data selector (DPL 0), which IRET to an outer privilege level nulls (SDM
   vol. 2 IRET: "FOR each of segment register (ES, FS, GS, and DS)": DPL < CPL -> selector 0).
   On KVM a recorded IRETQ to ring 3 is performed by vlbr (usermode.py). */
#include "runtime.h"
static volatile u64 user_ds = 0xffff, user_es = 0xffff;
static void user(void)
{
    __asm__ volatile("mov rax, ds\n\tmov [rip + user_ds], rax\n\tmov rax, es\n\tmov [rip + user_es], rax\n\tint 0x80" ::: "rax", "memory");
}
int guest_main(int cpu, int ncpus)
{
    for (int rec = 0; rec < 2; rec++) {
        if (rec) wrmsr(MSR_LBR_CTL, LBR_CTL_LBREN | LBR_CTL_USR | LBR_CTL_OS | LBR_CTL_BRANCH_BITS);
        rt_enter_user(user, rt_user_stack_top());
        wrmsr(MSR_LBR_CTL, 0);
        rt_printf("recording %d ds %lx es %lx\n", rec, user_ds, user_es);
    }
    return 0;
}
