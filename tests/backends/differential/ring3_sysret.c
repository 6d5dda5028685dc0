/* Ring 3 entered by SYSRETQ is recorded like ring 3 entered by IRETQ (SDM vol. 3A 18.1.2: the
   USR filter keeps branches whose target is at CPL 3, far transfers included). Ring 3 makes a
   SYSCALL whose handler at once SYSRETQs, then loops 5 times and leaves through INT 0x80.
   Recorded under USR: the IRETQ into ring 3, the SYSRETQ, and the loop's 4 taken JNZ. On KVM,
   under quirk user_single_step_fails, the ring 3 after a SYSRETQ runs on unicorn as after an
   IRETQ (it ran unrecorded in KVM before). */
#include "runtime.h"

__asm__(".globl syscall_entry\nsyscall_entry:\n  sysretq\n");
void syscall_entry(void);
u64 after_syscall;

static void user(void)
{
    __asm__ volatile("lea rax, [rip + 2f]\n\t"
                     "mov [rip + after_syscall], rax\n\t"
                     "syscall\n"
                     "2: mov ecx, 5\n"
                     "1: dec ecx\n\t"
                     "jnz 1b\n\t"
                     "int 0x80" ::: "rax", "rcx", "r11", "memory");
}

int guest_main(int cpu, int ncpus)
{
    wrmsr(0xC0000081, (0x10ull << 48) | (0x08ull << 32));  /* STAR: SYSRET CS 0x23, SS 0x1B */
    wrmsr(0xC0000082, (u64)syscall_entry);                 /* LSTAR */
    wrmsr(0xC0000084, 0x200);                              /* FMASK: IF */
    lbr_clear();
    wrmsr(MSR_LBR_CTL, LBR_CTL_LBREN | LBR_CTL_USR | LBR_CTL_BRANCH_BITS);
    u64 vector = rt_enter_user(user, rt_user_stack_top());
    wrmsr(MSR_LBR_CTL, 0);
    int records = 0, sysret = 0;
    for (int i = 0; i < 32; i++) {
        u64 from = rdmsr(MSR_LBR_FROM(i)), to = rdmsr(MSR_LBR_TO(i));
        records += from != 0;
        sysret += from == (u64)syscall_entry && to == after_syscall;
    }
    rt_printf("vector %lx records %d sysret %d\n", vector, records, sysret);
    return 0;
}
