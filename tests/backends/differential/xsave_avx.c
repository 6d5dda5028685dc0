/* XSAVES / XRSTORS and XSAVE of AVX state (component 2, SDM vol. 1 13.5.3) where the guest
   CPUID lets XCR0 enable it: AVX in its initial configuration is not written (XSTATE_BV[2]
   clear); a compacted image with AVX bytes restores them, and both XSAVES (compacted, right
   after the 576-byte legacy region and header) and XSAVE (standard, at CPUID.(0xD,2).EBX)
   give those bytes back with XSTATE_BV[2] set. Without XCR0 AVX the program says so. */
#include "runtime.h"

#define AVX 4ull
#define LEGACY 3ull
#define COMPACTED (1ull << 63)

static u8 image[4096] __attribute__((aligned(64)));
static u8 saved[4096] __attribute__((aligned(64)));
static u8 standard[4096] __attribute__((aligned(64)));

static void xsetbv0(u64 v)
{
    __asm__ volatile("xsetbv" :: "c"(0), "a"((u32)v), "d"((u32)(v >> 32)));
}

static int same(const u8 *a, const u8 *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

int guest_main(int cpu, int ncpus)
{
    if (!(cpuid(0xD, 0).eax & AVX)) {
        rt_printf("xsave_avx not enumerated\n");
        return 0;
    }
    struct cpuid_regs avx = cpuid(0xD, 2);  /* EAX size, EBX standard offset */
    xsetbv0(LEGACY | AVX);
    u32 v_init = xsaves_safe(saved, LEGACY | AVX);
    int init_bv = (int)(*(u64 *)(saved + 512) >> 2 & 1);
    *(u16 *)image = 0x37f;                  /* a valid legacy region: FCW, MXCSR */
    *(u32 *)(image + 24) = 0x1f80;
    *(u64 *)(image + 512) = AVX;
    *(u64 *)(image + 520) = COMPACTED | LEGACY | AVX;
    for (u32 i = 0; i < avx.eax; i++) image[576 + i] = (u8)(i * 7 + 1);
    u32 v_rstor = xrstors_safe(image, LEGACY | AVX);
    for (int i = 0; i < 4096; i++) saved[i] = 0;
    u32 v_save = xsaves_safe(saved, LEGACY | AVX);
    __asm__ volatile("xsave64 [%0]" :: "r"(standard), "a"((u32)(LEGACY | AVX)), "d"(0) : "memory");
    rt_printf("xsave_avx init_bv %d vectors %x %x %x xsaves_bv %d same %d xsave_bv %d same %d\n",
              init_bv, v_init, v_rstor, v_save, (int)(*(u64 *)(saved + 512) >> 2 & 1),
              same(saved + 576, image + 576, avx.eax),
              (int)(*(u64 *)(standard + 512) >> 2 & 1),
              same(standard + avx.ebx, image + 576, avx.eax));
    xsetbv0(LEGACY);
    return 0;
}
