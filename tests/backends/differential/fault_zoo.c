/* Faults and events the x86 core delivers, one console line each: vector, error code, the
   faulting RIP and CR2. Run on both backends, the lines must be identical (issue: one x86
   core under both backends). SDM vol. 3A: 4.7 (#PF error codes), 6.13 (error codes), 6.12.1.1
   (gate DPL vs CPL), 17.3.1 (#DB). */
#include "runtime.h"

#define PD ((volatile u64 *)0x3000)
#define TARGET 0x300010ull          /* in the second 2 MiB page (PD[1]) */
#define PDE_RW (1ull << 1)
#define PDE_US (1ull << 2)

static inline u64 read_cr2(void) { u64 v; __asm__ volatile("mov %0, cr2" : "=r"(v)); return v; }
static inline void write_cr2(u64 v) { __asm__ volatile("mov cr2, %0" :: "r"(v)); }
static inline void flush_tlb(void)
{
    __asm__ volatile("mov rax, cr3\n\tmov cr3, rax" ::: "rax", "memory");
}

static void report(const char *name)
{
    struct fault_ctx *f = rt_fault();
    rt_printf("%s vector %lx error %lx rip %lx cr2 %lx\n", name, f->vector,
              f->vector == NO_FAULT ? 0 : f->error, f->vector == NO_FAULT ? 0 : f->rip,
              read_cr2());
}

#define TRY(asm_text, ...) do { \
        struct fault_ctx *f_ = rt_fault(); \
        f_->vector = NO_FAULT; \
        write_cr2(0); \
        __asm__ volatile(ASM_TRY("1f") asm_text "\n\t1:\n\t" \
                         :: [recover] "r"(&f_->recover), ##__VA_ARGS__ : "r10", "r11", "memory"); \
        f_->recover = 0; \
    } while (0)

/* SYSCALL lands here at CPL0 (IA32_LSTAR) on the user stack; SYSRET goes back to ring 3. */
u64 syscall_rcx, syscall_r11, syscall_cs, syscall_ss;
__asm__(".globl syscall_entry\n"
        "syscall_entry:\n"
        "  mov [rip + syscall_rcx], rcx\n"
        "  mov [rip + syscall_r11], r11\n"
        "  mov r10, cs\n  mov [rip + syscall_cs], r10\n"
        "  mov r10, ss\n  mov [rip + syscall_ss], r10\n"
        "  sysretq\n");
void syscall_entry(void);
u64 user_after_syscall;
static void user_syscall(void)
{
    __asm__ volatile("lea r10, [rip + 2f]\n\tmov [rip + user_after_syscall], r10\n\t"
                     "syscall\n\t2:\n\tint 0x80" ::: "rcx", "r10", "r11", "memory");
}

static void syscall_case(void)
{
    wrmsr(0xC0000081, (0x10ull << 48) | (0x08ull << 32));  /* STAR: SYSRET 0x23/0x1B */
    wrmsr(0xC0000082, (u64)syscall_entry);                 /* LSTAR */
    wrmsr(0xC0000084, 0x200);                              /* FMASK: IF */
    u64 vector = rt_enter_user(user_syscall, rt_user_stack_top());
    rt_printf("syscall_sysret vector %lx rcx_is_next %d r11 %lx cs %lx ss %lx\n", vector,
              syscall_rcx == user_after_syscall, syscall_r11, syscall_cs, syscall_ss);
}

static void set_pde(u64 clear, u64 set, u64 saved)
{
    PD[1] = (saved & ~clear) | set;
    flush_tlb();
}

static void user_read(void) { (void)*(volatile u64 *)TARGET; __asm__ volatile("int 0x80"); }
static void user_write(void) { *(volatile u64 *)TARGET = 1; __asm__ volatile("int 0x80"); }
static void user_int_dpl0(void) { __asm__ volatile("int 0x81\n\tint 0x80"); }
static void user_int_dpl3(void) { __asm__ volatile("int 0x80"); }
static void user_int_91(void) { __asm__ volatile("int 0x91\n\tint 0x80"); }
static void user_int_92(void) { __asm__ volatile("int 0x92\n\tint 0x80"); }

/* IDT[vector] = IDT[0x80] with other type/DPL/P attributes (the runtime's IDT, found by SIDT). */
static void set_gate_attr(int vector, u8 type_attr)
{
    struct __attribute__((packed)) { u16 limit; u64 base; } idtr;
    __asm__ volatile("sidt %0" : "=m"(idtr));
    volatile u8 *gate = (volatile u8 *)(idtr.base + 16 * (u64)vector);
    const volatile u8 *model = (const volatile u8 *)(idtr.base + 16 * 0x80ull);
    for (int i = 0; i < 16; i++)
        gate[i] = model[i];
    gate[5] = type_attr;
}

static void user_case(const char *name, void (*fn)(void))
{
    write_cr2(0);
    u64 vector = rt_enter_user(fn, rt_user_stack_top());
    rt_printf("%s vector %lx error %lx cr2 %lx\n", name, vector,
              vector == 0x80 ? 0 : rt_user_exit_error[rt_cpu_index()], read_cr2());
}

int guest_main(int cpu, int ncpus)
{
    u64 saved = PD[1];
    set_pde(1, 0, saved);                       /* not present */
    TRY("mov r10, [%[p]]", [p] "r"(TARGET));
    report("pf_not_present_read");
    TRY("mov qword ptr [%[p]], 1", [p] "r"(TARGET));
    report("pf_not_present_write");
    set_pde(PDE_RW, 0, saved);                  /* read-only, CR0.WP=1 */
    TRY("mov qword ptr [%[p]], 1", [p] "r"(TARGET));
    report("pf_protection_write");
    set_pde(PDE_US, 0, saved);                  /* supervisor-only */
    user_case("pf_user_read_supervisor", user_read);
    set_pde(PDE_RW, 0, saved);
    user_case("pf_user_write_read_only", user_write);
    set_pde(0, 0, saved);
    user_case("int_dpl3_gate_from_ring3", user_int_dpl3);
    user_case("int_dpl0_gate_from_ring3", user_int_dpl0);
    TRY("mov r10w, 0x1000\n\tmov ds, r10w");        /* beyond the GDT limit: #GP(selector) */
    report("gp_selector_beyond_gdt");
    __asm__ volatile("mov ax, 0x10\n\tmov ds, ax" ::: "rax");
    TRY("int1");
    report("db_icebp");
    TRY("int 0x90");                            /* a zero gate is of no gate type: #GP */
    report("gp_int_without_gate");
    set_gate_attr(0x91, 0x0E);                  /* interrupt gate, DPL 0, not present */
    set_gate_attr(0x92, 0x6E);                  /* interrupt gate, DPL 3, not present */
    TRY("int 0x91");
    report("np_int_not_present_gate");
    user_case("int_not_present_dpl0_gate_from_ring3", user_int_91);  /* DPL before P */
    user_case("int_not_present_dpl3_gate_from_ring3", user_int_92);
    TRY("pushfq\n\tor qword ptr [rsp], 0x100\n\tpopfq\n\tnop");
    report("db_trap_flag");
    static u8 area[4096] __attribute__((aligned(64)));
    for (int i = 0; i < 4096; i++) area[i] = 0;
    wrmsr(MSR_XSS, 1ull << 15);
    TRY("xrstors64 [%[a]]", [a] "r"(area), "a"(0x8000), "d"(0));  /* XCOMP_BV[63] clear */
    report("xrstors_standard_header_gp");
    /* XRSTOR's standard form (SDM vol. 1 13.8.1): #GP(0) on XSTATE_BV outside XCR0 (3 at
       entry), on any of header bytes 23:8 set, and XSAVE on an area not 64-byte aligned. */
    area[512] = 0x4;
    TRY("xrstor64 [%[a]]", [a] "r"(area), "a"(3), "d"(0));
    report("xrstor_xstate_bv_outside_xcr0_gp");
    area[512] = 0x3;
    area[520] = 0x1;                            /* XCOMP_BV bit 0, bit 63 clear */
    TRY("xrstor64 [%[a]]", [a] "r"(area), "a"(3), "d"(0));
    report("xrstor_xcomp_bv_gp");
    area[520] = 0;
    area[530] = 0x1;                            /* header byte 18 */
    TRY("xrstor64 [%[a]]", [a] "r"(area), "a"(3), "d"(0));
    report("xrstor_reserved_header_gp");
    TRY("xsave64 [%[a]]", [a] "r"(area + 16), "a"(3), "d"(0));
    report("xsave_misaligned_gp");
    syscall_case();
    return 0;
}
