/* The freestanding guest runtime: console, exit, yield, CPUID, MSRs with fault recovery,
   XSAVES/XRSTORS, ring-3 round trips and the PASS/FAIL/SKIP check protocol. */
#ifndef VLBR_RUNTIME_H
#define VLBR_RUNTIME_H

#include <stdint.h>
#include <stdarg.h>
#include <stddef.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define MAX_VCPUS 8
#define NO_FAULT 0xFFFFFFFFu
#define RT_USER_RETURN_VECTOR 0x80
#define RT_BOUNCE_VECTOR 0x81

/* Guest ABI ports (docs/design.md). */
#define PORT_CONSOLE 0xE9
#define PORT_EXIT 0xF4
#define PORT_YIELD 0xF5

/* Architectural MSRs (reference doc section 2). */
#define MSR_LBR_CTL 0x14CE
#define MSR_LBR_DEPTH 0x14CF
#define MSR_LBR_FROM(i) (0x1500 + (i))
#define MSR_LBR_TO(i) (0x1600 + (i))
#define MSR_LBR_INFO(i) (0x1200 + (i))
#define MSR_LER_FROM 0x1DD
#define MSR_LER_TO 0x1DE
#define MSR_LER_INFO 0x1E0
#define MSR_XSS 0xDA0
#define MSR_DEBUGCTL 0x1D9
#define MSR_PERF_CAPABILITIES 0x345

#define LBR_CTL_LBREN (1ull << 0)
#define LBR_CTL_OS (1ull << 1)
#define LBR_CTL_USR (1ull << 2)
#define LBR_CTL_CALL_STACK (1ull << 3)
#define LBR_CTL_COND (1ull << 16)
#define LBR_CTL_NEAR_REL_JMP (1ull << 17)
#define LBR_CTL_NEAR_IND_JMP (1ull << 18)
#define LBR_CTL_NEAR_REL_CALL (1ull << 19)
#define LBR_CTL_NEAR_IND_CALL (1ull << 20)
#define LBR_CTL_NEAR_RET (1ull << 21)
#define LBR_CTL_OTHER_BRANCH (1ull << 22)
#define LBR_CTL_BRANCH_BITS 0x7F0000ull
#define LBR_CTL_VALID 0x7F000Full

#define BR_TYPE_JCC 0
#define BR_TYPE_NEAR_IND_JMP 1
#define BR_TYPE_NEAR_REL_JMP 2
#define BR_TYPE_NEAR_IND_CALL 3
#define BR_TYPE_NEAR_REL_CALL 4
#define BR_TYPE_NEAR_RET 5
#define BR_TYPE_OTHER 8
#define LBR_INFO_BR_TYPE(info) (((info) >> 56) & 0xF)

struct cpuid_regs { u32 eax, ebx, ecx, edx; };

/* What the last *_safe operation met: vector NO_FAULT when it completed. */
struct fault_ctx {
    u64 recover;   /* where the handler resumes; 0 = no fault expected */
    u64 vector;
    u64 error;
    u64 rip;
};

struct exception_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};

/* Set by the host before the run (patched in the image by symbol): `vlbr run --lbr-ctl`. */
extern volatile u64 vlbr_lbr_ctl;

/* A conformance program names the checks it reports, in order, separated by spaces: the
   runner reads this string from the image (symbol vlbr_checks), so the names live only in
   the guest source. */
#define VLBR_CHECKS(names) const char vlbr_checks[] __attribute__((used)) = names

/* Implemented by each guest program: runs on every vCPU; the return value is the exit status. */
int guest_main(int cpu, int ncpus);

u64 rt_cpu_index(void);
struct fault_ctx *rt_fault(void);
void rt_exit(int status) __attribute__((noreturn));
void rt_yield(void);
void rt_putc(char c);
void rt_puts(const char *s);
void rt_printf(const char *fmt, ...);
void rt_vprintf(const char *fmt, va_list ap);
/* Runs fn at CPL3 until it executes `int 0x80` or faults; returns that vector (0x80 normally). */
u64 rt_enter_user(void (*fn)(void), u64 user_stack_top);
extern u64 rt_user_exit_error[MAX_VCPUS];  /* error code of the fault that ended it */
u64 rt_user_stack_top(void);

/* The check protocol (docs/design.md): one console line per check. */
void check_pass(const char *name);
void check_fail(const char *name, const char *fmt, ...);
void check_skip(const char *name, const char *fmt, ...);
/* PASS when ok, else FAIL with the detail; returns ok. */
int check(const char *name, int ok, const char *fmt, ...);
int rt_failures(void);

static inline void outb(u16 port, u8 v) { __asm__ volatile("out dx, al" :: "a"(v), "d"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("out dx, eax" :: "a"(v), "d"(port)); }

static inline struct cpuid_regs cpuid(u32 leaf, u32 sub)
{
    struct cpuid_regs r;
    __asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
                     : "a"(leaf), "c"(sub));
    return r;
}

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
    return (u64)hi << 32 | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

/* The instruction between ASM_TRY and its label may fault: the handler records the vector in
   rt_fault() and resumes at the label (the kvm-unit-tests rdmsr_safe idea). */
#define ASM_TRY(label) \
    "lea r11, [rip + " label "]\n\t" \
    "mov [%[recover]], r11\n\t"

/* Returns NO_FAULT, or the vector the RDMSR raised. */
static inline u32 rdmsr_safe(u32 msr, u64 *val)
{
    struct fault_ctx *f = rt_fault();
    u32 lo = 0, hi = 0;
    f->vector = NO_FAULT;
    __asm__ volatile(ASM_TRY("1f") "rdmsr\n\t" "1:\n\t"
                     : "+a"(lo), "+d"(hi) : "c"(msr), [recover] "r"(&f->recover)
                     : "r11", "memory");
    f->recover = 0;
    *val = (u64)hi << 32 | lo;
    return (u32)f->vector;
}

static inline u32 wrmsr_safe(u32 msr, u64 v)
{
    struct fault_ctx *f = rt_fault();
    f->vector = NO_FAULT;
    __asm__ volatile(ASM_TRY("1f") "wrmsr\n\t" "1:\n\t"
                     :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)), [recover] "r"(&f->recover)
                     : "r11", "memory");
    f->recover = 0;
    return (u32)f->vector;
}

static inline u32 xsaves_safe(void *area, u64 mask)
{
    struct fault_ctx *f = rt_fault();
    f->vector = NO_FAULT;
    __asm__ volatile(ASM_TRY("1f") "xsaves64 [%[area]]\n\t" "1:\n\t"
                     :: [area] "r"(area), "a"((u32)mask), "d"((u32)(mask >> 32)),
                        [recover] "r"(&f->recover)
                     : "r11", "memory");
    f->recover = 0;
    return (u32)f->vector;
}

static inline u32 xrstors_safe(void *area, u64 mask)
{
    struct fault_ctx *f = rt_fault();
    f->vector = NO_FAULT;
    __asm__ volatile(ASM_TRY("1f") "xrstors64 [%[area]]\n\t" "1:\n\t"
                     :: [area] "r"(area), "a"((u32)mask), "d"((u32)(mask >> 32)),
                        [recover] "r"(&f->recover)
                     : "r11", "memory");
    f->recover = 0;
    return (u32)f->vector;
}

static inline u64 read_cr4(void) { u64 v; __asm__ volatile("mov %0, cr4" : "=r"(v)); return v; }

/* The guest-visible Arch LBR facts every program needs, read from CPUID. */
struct lbr_caps {
    int arch_lbr;         /* CPUID.7.0:EDX[19] */
    u32 depth_mask;       /* CPUID.1C:EAX[7:0] */
    u32 max_depth;
    int cpl_filter, branch_filter, call_stack;   /* EBX[0..2] */
    int mispred, timed, br_type;                 /* ECX[0..2] */
};
struct lbr_caps lbr_caps(void);
int depth_legal(const struct lbr_caps *c, u64 depth);
void lbr_clear(void);   /* rewrite IA32_LBR_DEPTH with its value: clears every record */

#endif
