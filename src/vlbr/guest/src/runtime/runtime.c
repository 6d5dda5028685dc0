/* Guest runtime: IDT, exception reporting and recovery, console, checks. */
#include "runtime.h"

struct idt_gate {
    u16 offset_low, selector;
    u8 ist, type_attr;
    u16 offset_mid;
    u32 offset_high, reserved;
} __attribute__((packed));

struct idt_pointer {
    u16 limit;
    u64 base;
} __attribute__((packed));

#define KERNEL_CS 0x08
#define GATE_INTERRUPT_DPL0 0x8E
#define GATE_INTERRUPT_DPL3 0xEE

static struct idt_gate idt[256] __attribute__((aligned(16)));
static struct fault_ctx faults[MAX_VCPUS];
static int failures[MAX_VCPUS];
static u8 user_stacks[MAX_VCPUS][4096] __attribute__((aligned(16)));
u64 rt_kernel_rsp[MAX_VCPUS];
u64 rt_user_exit_vector[MAX_VCPUS];
u64 rt_user_exit_error[MAX_VCPUS];
volatile u64 vlbr_lbr_ctl = LBR_CTL_LBREN | LBR_CTL_OS | LBR_CTL_USR | LBR_CTL_BRANCH_BITS;

extern char isr_0[], isr_1[], isr_2[], isr_3[], isr_4[], isr_5[], isr_6[], isr_7[], isr_8[],
    isr_9[], isr_10[], isr_11[], isr_12[], isr_13[], isr_14[], isr_15[], isr_16[], isr_17[],
    isr_18[], isr_19[], isr_20[], isr_21[], isr_22[], isr_23[], isr_24[], isr_25[], isr_26[],
    isr_27[], isr_28[], isr_29[], isr_30[], isr_31[], isr_user_return[], isr_bounce[];

static char *const exception_stubs[32] = {
    isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7, isr_8, isr_9, isr_10, isr_11,
    isr_12, isr_13, isr_14, isr_15, isr_16, isr_17, isr_18, isr_19, isr_20, isr_21, isr_22,
    isr_23, isr_24, isr_25, isr_26, isr_27, isr_28, isr_29, isr_30, isr_31,
};

static void set_gate(int vector, void *handler, u8 type_attr)
{
    u64 a = (u64)handler;
    idt[vector] = (struct idt_gate){
        .offset_low = (u16)a, .selector = KERNEL_CS, .ist = 0, .type_attr = type_attr,
        .offset_mid = (u16)(a >> 16), .offset_high = (u32)(a >> 32), .reserved = 0,
    };
}

static void idt_install(void)
{
    for (int v = 0; v < 32; v++)
        set_gate(v, exception_stubs[v], GATE_INTERRUPT_DPL0);
    set_gate(RT_USER_RETURN_VECTOR, isr_user_return, GATE_INTERRUPT_DPL3);
    set_gate(RT_BOUNCE_VECTOR, isr_bounce, GATE_INTERRUPT_DPL0);
    struct idt_pointer p = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt [%0]" :: "r"(&p) : "memory");
}

void rt_start(u64 cpu, u64 ncpus)
{
    idt_install();
    int status = guest_main((int)cpu, (int)ncpus);
    if (status == 0 && failures[rt_cpu_index() % MAX_VCPUS])
        status = 1;
    rt_exit(status);
}

struct fault_ctx *rt_fault(void) { return &faults[rt_cpu_index() % MAX_VCPUS]; }
u64 rt_user_stack_top(void) { return (u64)&user_stacks[rt_cpu_index() % MAX_VCPUS][4096]; }
int rt_failures(void) { return failures[rt_cpu_index() % MAX_VCPUS]; }

void rt_exit(int status)
{
    for (;;)
        outl(PORT_EXIT, (u32)status);
}

void rt_yield(void) { outb(PORT_YIELD, 0); }
void rt_putc(char c) { outb(PORT_CONSOLE, (u8)c); }

void rt_puts(const char *s)
{
    while (*s)
        rt_putc(*s++);
}

static void put_unsigned(u64 v, unsigned base, int min_digits)
{
    char buf[24];
    int n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < min_digits)
        buf[n++] = '0';
    while (n)
        rt_putc(buf[--n]);
}

/* printf-lite: %s %c %d %u %x ("0x" prefix); an 'l' modifier reads a 64-bit argument. */
void rt_vprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            rt_putc(*fmt);
            continue;
        }
        fmt++;
        int is_long = 0;
        while (*fmt == 'l') {
            is_long = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': rt_puts(va_arg(ap, const char *)); break;
        case 'c': rt_putc((char)va_arg(ap, int)); break;
        case 'd': {
            long long v = is_long ? va_arg(ap, long long) : va_arg(ap, int);
            if (v < 0) { rt_putc('-'); v = -v; }
            put_unsigned((u64)v, 10, 1);
            break;
        }
        case 'u': put_unsigned(is_long ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, 1); break;
        case 'x':
            rt_puts("0x");
            put_unsigned(is_long ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, 1);
            break;
        case '%': rt_putc('%'); break;
        case 0: return;
        default: rt_putc('%'); rt_putc(*fmt); break;
        }
    }
}

void rt_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rt_vprintf(fmt, ap);
    va_end(ap);
}

/* Every exception comes here: recover when a *_safe operation expected it, else report. */
void rt_exception(struct exception_frame *frame)
{
    struct fault_ctx *f = rt_fault();
    if (f->recover) {
        f->vector = frame->vector;
        f->error = frame->error;
        f->rip = frame->rip;
        frame->rip = f->recover;
        f->recover = 0;
        if (frame->vector == 1)
            frame->rflags &= ~0x100ull;  /* a recovered single-step trap does not re-arm */
        return;
    }
    rt_printf("FAIL unexpected_exception: vector %ld at rip %lx error %lx\n",
              frame->vector, frame->rip, frame->error);
    rt_exit(0x80 | (int)frame->vector);
}

void check_pass(const char *name) { rt_printf("PASS %s\n", name); }

static void report(const char *tag, const char *name, const char *fmt, va_list ap)
{
    rt_printf("%s %s: ", tag, name);
    rt_vprintf(fmt, ap);
    rt_putc('\n');
}

void check_fail(const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    failures[rt_cpu_index() % MAX_VCPUS]++;
    report("FAIL", name, fmt, ap);
    va_end(ap);
}

void check_skip(const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("SKIP", name, fmt, ap);
    va_end(ap);
}

int check(const char *name, int ok, const char *fmt, ...)
{
    if (ok) {
        check_pass(name);
        return 1;
    }
    va_list ap;
    va_start(ap, fmt);
    failures[rt_cpu_index() % MAX_VCPUS]++;
    report("FAIL", name, fmt, ap);
    va_end(ap);
    return 0;
}

struct lbr_caps lbr_caps(void)
{
    struct lbr_caps c = {0};
    struct cpuid_regs max = cpuid(0, 0);
    if (max.eax >= 7)
        c.arch_lbr = (cpuid(7, 0).edx >> 19) & 1;
    if (max.eax < 0x1C)
        return c;
    struct cpuid_regs r = cpuid(0x1C, 0);
    c.depth_mask = r.eax & 0xFF;
    for (int n = 7; n >= 0; n--)
        if (c.depth_mask >> n & 1) {
            c.max_depth = 8 * (n + 1);
            break;
        }
    c.cpl_filter = r.ebx & 1;
    c.branch_filter = (r.ebx >> 1) & 1;
    c.call_stack = (r.ebx >> 2) & 1;
    c.mispred = r.ecx & 1;
    c.timed = (r.ecx >> 1) & 1;
    c.br_type = (r.ecx >> 2) & 1;
    return c;
}

int depth_legal(const struct lbr_caps *c, u64 depth)
{
    if (depth == 0 || depth > 64 || depth % 8)
        return 0;
    return (c->depth_mask >> (depth / 8 - 1)) & 1;
}

void lbr_clear(void)
{
    wrmsr(MSR_LBR_DEPTH, rdmsr(MSR_LBR_DEPTH));
}
