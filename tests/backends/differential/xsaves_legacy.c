/* XSAVES / XRSTORS of x87 | SSE | Arch LBR as Linux uses them (RFBM = XCR0 | XSS = 0x8003),
   one line per check so both backends can be compared (SDM vol. 1 13.11, 13.12, 13.8.2,
   13.6). Registers are set and read with XRSTORS/XSAVES and MOVDQA only (the KVM here
   cannot emulate x87 memory operands); the compiler never uses XMM (-mgeneral-regs-only). */
#include "runtime.h"

#define RFBM 0x8003ull
#define XCOMP (1ull << 63 | RFBM)

static u8 image[4096] __attribute__((aligned(64)));  /* what XRSTORS loads */
static u8 saved[4096] __attribute__((aligned(64)));  /* what XSAVES stores */
static const u64 pattern[2] __attribute__((aligned(16))) = {0x0123456789abcdefull,
                                                           0xfedcba9876543210ull};
static const u64 zero[2] __attribute__((aligned(16)));

static u64 *header(u8 *area) { return (u64 *)(area + 512); }

static void clear(u8 *area)
{
    for (int i = 0; i < 4096; i++)
        area[i] = 0;
}

static int is_pattern(const u8 *p) { return ((u64 *)p)[0] == pattern[0] && ((u64 *)p)[1] == pattern[1]; }

static int xmm7_is_pattern(void)
{
    u64 v[2] __attribute__((aligned(16)));
    __asm__ volatile("movdqa %0, xmm7" : "=m"(v));
    return v[0] == pattern[0] && v[1] == pattern[1];
}

/* XSAVES into a zeroed area, then its header and legacy fields. */
static void report(const char *name)
{
    clear(saved);
    u32 vec = xsaves_safe(saved, RFBM);
    rt_printf("%s vector %d xstate_bv %lx xcomp_bv %lx fcw %x mxcsr %x xmm0 %d xmm7 %d "
              "hw_xmm7 %d\n", name, vec, header(saved)[0], header(saved)[1], *(u16 *)saved,
              *(u32 *)(saved + 24), is_pattern(saved + 160), is_pattern(saved + 160 + 7 * 16),
              xmm7_is_pattern());
}

static u32 load(u64 xstate_bv, u32 mxcsr)
{
    clear(image);
    *(u16 *)image = 0x27f;              /* FCW: 53-bit precision, not the init 0x37F */
    *(u32 *)(image + 24) = mxcsr;
    for (int i = 0; i < 16; i++)
        image[160 + 7 * 16 + i] = ((const u8 *)pattern)[i];   /* XMM7 */
    header(image)[0] = xstate_bv;
    header(image)[1] = XCOMP;
    return xrstors_safe(image, RFBM);
}

int guest_main(int cpu, int ncpus)
{
    wrmsr(MSR_XSS, 1ull << 15);  /* Arch LBR state in XSS, as Linux keeps it */
    report("entry");             /* Guest ABI entry: x87 and SSE in their init state */

    rt_printf("xrstors vector %d\n", load(0x3, 0x3f80));
    __asm__ volatile("movdqa xmm0, %0" :: "m"(pattern));
    report("loaded");

    __asm__ volatile("movdqa xmm0, %0\n\tmovdqa xmm7, %0" :: "m"(zero));
    rt_printf("xrstors_saved vector %d\n", xrstors_safe(saved, RFBM));
    report("restored");

    rt_printf("xrstors_init vector %d\n", load(0x0, 0x3f80));  /* XSTATE_BV 0: init */
    __asm__ volatile("movdqa xmm0, %0" :: "m"(zero));
    report("initialised");

    rt_printf("xrstors_mxcsr_only vector %d\n", load(0x2, 0x1fc0));  /* x87 stays init */
    __asm__ volatile("movdqa xmm7, %0" :: "m"(zero));
    report("mxcsr_only");          /* XMM all 0, MXCSR != 1F80H: SSE still saved */

    __asm__ volatile("movdqa xmm7, %0" :: "m"(pattern));
    rt_printf("xrstors_bad_mxcsr vector %d\n", load(0x3, 0x10000));  /* reserved bit 16 */
    report("unchanged");
    return 0;
}
