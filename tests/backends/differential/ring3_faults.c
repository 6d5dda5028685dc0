/* Faults from ring 3, one console line each: vector, error code, CR2. While LBR records, a
   KVM that cannot single-step ring 3 runs it on unicorn (backends/kvm/usermode.py) with
   linear = physical addresses, which faults only past the Guest ABI's 8 MiB: the #PF error
   code must still be the one the guest's page tables give (SDM vol. 3A 4.7); each #PF case has
   its own PD entry, set before any access through it. A #GP keeps its selector error code
   (SDM 6.13), also when it follows another (no #DF: each was delivered). */
#include "runtime.h"

#define PD ((volatile u64 *)0x3000)
#define PDE_P (1ull << 0)
#define PDE_RW (1ull << 1)
#define PDE_US (1ull << 2)
#define PDE_PS (1ull << 7)
#define NOT_PRESENT 0x900010ull     /* PD[4]: 0 */
#define SUPERVISOR 0xB00010ull      /* PD[5]: present, writable, supervisor-only */
#define READ_ONLY 0xD00010ull       /* PD[6]: present, user, read-only */
#define ALIAS 0x200000ull           /* the 2 MiB page PD[5] and PD[6] map */

static inline u64 read_cr2(void) { u64 v; __asm__ volatile("mov %0, cr2" : "=r"(v)); return v; }

static void np_read(void) { (void)*(volatile u64 *)NOT_PRESENT; __asm__ volatile("int 0x80"); }
static void np_write(void) { *(volatile u64 *)NOT_PRESENT = 1; __asm__ volatile("int 0x80"); }
static void np_fetch(void) { ((void (*)(void))NOT_PRESENT)(); }
static void sup_read(void) { (void)*(volatile u64 *)SUPERVISOR; __asm__ volatile("int 0x80"); }
static void sup_write(void) { *(volatile u64 *)SUPERVISOR = 1; __asm__ volatile("int 0x80"); }
static void sup_fetch(void) { ((void (*)(void))SUPERVISOR)(); }
static void ro_write(void) { *(volatile u64 *)READ_ONLY = 1; __asm__ volatile("int 0x80"); }
static void bad_ds(void)  /* a selector beyond the GDT limit */
{
    __asm__ volatile("mov ax, 0x1000\n\tmov ds, ax\n\tint 0x80" ::: "rax");
}

static void user_case(const char *name, void (*fn)(void))
{
    __asm__ volatile("mov cr2, %0" :: "r"(0ull));
    u64 vector = rt_enter_user(fn, rt_user_stack_top());
    rt_printf("%s vector %lx error %lx cr2 %lx\n", name, vector,
              vector == 0x80 ? 0 : rt_user_exit_error[rt_cpu_index()], read_cr2());
}

int guest_main(int cpu, int ncpus)
{
    PD[5] = ALIAS | PDE_P | PDE_RW | PDE_PS;
    PD[6] = ALIAS | PDE_P | PDE_US | PDE_PS;
    __asm__ volatile("mov rax, cr3\n\tmov cr3, rax" ::: "rax", "memory");
    wrmsr(MSR_LBR_CTL, vlbr_lbr_ctl);
    user_case("np_read", np_read);
    user_case("np_write", np_write);
    user_case("np_fetch", np_fetch);
    user_case("sup_read", sup_read);
    user_case("sup_write", sup_write);
    user_case("sup_fetch", sup_fetch);
    user_case("ro_write", ro_write);
    user_case("gp_selector", bad_ds);
    user_case("gp_selector_again", bad_ds);
    wrmsr(MSR_LBR_CTL, 0);
    return 0;
}
