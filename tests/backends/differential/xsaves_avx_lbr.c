/* XSAVES / XRSTORS of x87 | SSE | AVX | Arch LBR in one compacted image (RFBM 0x8007 where
   XCR0 can hold AVX, else 0x8003), its layout computed from CPUID as Linux does (SDM vol. 1
   13.4.3: components in index order from offset 576, each 64-byte aligned where
   CPUID.(0xD,i):ECX[1] says so). XRSTORS loads AVX bytes and LBR_CTL, LER_FROM and the
   newest record, which RDMSR reads back; XSAVES gives the same bytes back. */
#include "runtime.h"

#define LEGACY 3ull
#define AVX 4ull
#define LBR (1ull << 15)
#define COMPACTED (1ull << 63)
#define LBR_CTL_VALUE (LBR_CTL_OS | LBR_CTL_USR | LBR_CTL_BRANCH_BITS)  /* LBREn clear */

static u8 image[8192] __attribute__((aligned(64)));
static u8 saved[8192] __attribute__((aligned(64)));

static u32 compacted_offset(u64 rfbm, int component)
{
    u32 offset = 576;
    for (int i = 2; i <= component; i++) {
        if (!(rfbm >> i & 1))
            continue;
        struct cpuid_regs r = cpuid(0xD, i);
        if (r.ecx & 2)
            offset = (offset + 63) & ~63u;
        if (i == component)
            break;
        offset += r.eax;
    }
    return offset;
}

static int same(const u8 *a, const u8 *b, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

int guest_main(int cpu, int ncpus)
{
    int avx = (cpuid(0xD, 0).eax & AVX) != 0;
    u64 rfbm = LEGACY | LBR | (avx ? AVX : 0);
    wrmsr(MSR_XSS, LBR);
    if (avx)
        __asm__ volatile("xsetbv" :: "c"(0), "a"((u32)(LEGACY | AVX)), "d"(0));
    u32 avx_at = compacted_offset(rfbm, 2), avx_size = avx ? cpuid(0xD, 2).eax : 0;
    u32 lbr_at = compacted_offset(rfbm, 15), lbr_size = cpuid(0xD, 15).eax;
    u64 depth = rdmsr(MSR_LBR_DEPTH);

    *(u16 *)image = 0x37f;                  /* a valid legacy region: FCW, MXCSR */
    *(u32 *)(image + 24) = 0x1f80;
    *(u64 *)(image + 512) = rfbm;           /* XSTATE_BV */
    *(u64 *)(image + 520) = COMPACTED | rfbm;
    for (u32 i = 0; i < avx_size; i++)
        image[avx_at + i] = (u8)(i * 7 + 1);
    u64 *lbr = (u64 *)(image + lbr_at);     /* CTL, DEPTH, LER FROM/TO/INFO, then records */
    lbr[0] = LBR_CTL_VALUE;
    lbr[1] = depth;
    lbr[2] = 0x401111;
    lbr[5] = 0x402222;                      /* record 0: FROM, TO, INFO */
    lbr[6] = 0x403333;

    u32 v_rstor = xrstors_safe(image, rfbm);
    int loaded = rdmsr(MSR_LBR_CTL) == LBR_CTL_VALUE && rdmsr(MSR_LER_FROM) == 0x401111
                 && rdmsr(MSR_LBR_FROM(0)) == 0x402222 && rdmsr(MSR_LBR_TO(0)) == 0x403333;
    u32 v_save = xsaves_safe(saved, rfbm);
    u64 bv = *(u64 *)(saved + 512);
    rt_printf("xsaves_avx_lbr avx %d lbr_at %s vectors %x %x msrs %d xcomp_bv %lx "
              "avx_bv %d avx_same %d lbr_bv %d lbr_same %d\n",
              avx, lbr_at == (avx ? compacted_offset(rfbm, 2) + avx_size : 576u) ? "after" : "?",
              v_rstor, v_save, loaded, *(u64 *)(saved + 520) & ~AVX, (int)(bv >> 2 & 1),
              same(saved + avx_at, image + avx_at, avx_size), (int)(bv >> 15 & 1),
              same(saved + lbr_at, image + lbr_at, lbr_size));
    wrmsr(MSR_LBR_CTL, 0);
    if (avx)
        __asm__ volatile("xsetbv" :: "c"(0), "a"((u32)LEGACY), "d"(0));
    return 0;
}
