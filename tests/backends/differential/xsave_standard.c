/* XSAVE / XRSTOR in the standard form (SDM vol. 1, 13.7-13.8) of x87 | SSE, from the
   Guest ABI's entry state: FCW after FNINIT is 0x37F, MXCSR is its reset value 0x1F80, XMM0
   as loaded, XSTATE_BV[1] set (SSE state modified), and XRSTOR brings XMM0 back. */
#include "runtime.h"

/* XSAVE (standard form) of x87 | SSE with XMM0 loaded, then XRSTOR after clobbering it. */
int guest_main(int cpu, int ncpus)
{
    static u8 area[4096] __attribute__((aligned(64)));
    static const u64 pattern[2] __attribute__((aligned(16))) = {0x0123456789abcdefull,
                                                               0xfedcba9876543210ull};
    for (int i = 0; i < 4096; i++) area[i] = 0;
    __asm__ volatile("fninit\n\tmovdqa xmm0, %0" :: "m"(pattern));
    __asm__ volatile("xsave64 [%0]" :: "r"(area), "a"(3), "d"(0) : "memory");
    u16 fcw = *(u16 *)area;
    u32 saved_mxcsr = *(u32 *)(area + 24);
    int xmm_ok = *(u64 *)(area + 160) == pattern[0] && *(u64 *)(area + 168) == pattern[1];
    u64 xstate_bv = *(u64 *)(area + 512);
    /* -mgeneral-regs-only: the compiler never uses XMM registers, so none is clobbered.
       movdqa, not pxor: the KVM here emulates supervisor code, and its emulator has no pxor. */
    static const u64 zero[2] __attribute__((aligned(16)));
    __asm__ volatile("movdqa xmm0, %0" :: "m"(zero));
    __asm__ volatile("xrstor64 [%0]" :: "r"(area), "a"(3), "d"(0) : "memory");
    u64 back[2] __attribute__((aligned(16)));
    __asm__ volatile("movdqa %0, xmm0" : "=m"(back));
    rt_printf("xsave_standard fcw %x mxcsr %x xmm0_saved %d sse_in_use %d restored %d\n", fcw,
              saved_mxcsr, xmm_ok, (int)((xstate_bv >> 1) & 1),
              back[0] == pattern[0] && back[1] == pattern[1]);
    /* XSTATE_BV[1] clear: the standard form initializes XMM0 yet loads MXCSR from the area
       (RFBM[1] set; SDM vol. 1 13.8.1), unlike the compacted form (1F80H). */
    *(u64 *)(area + 512) = 0;
    *(u32 *)(area + 24) = 0x1fa0;
    __asm__ volatile("xrstor64 [%0]" :: "r"(area), "a"(2), "d"(0) : "memory");
    static u8 again[4096] __attribute__((aligned(64)));  /* no stmxcsr: KVM's emulator lacks it */
    __asm__ volatile("movdqa %0, xmm0" : "=m"(back));
    __asm__ volatile("xsave64 [%0]" :: "r"(again), "a"(2), "d"(0) : "memory");
    rt_printf("xrstor_sse_init xmm0_zero %d mxcsr %x\n", back[0] == 0 && back[1] == 0,
              *(u32 *)(again + 24));
    return 0;
}

