/* The Arch LBR conformance suite, single-vCPU part: CPUID consistency, LBR_CTL and DEPTH
   rules, exact records of known branch scenarios, filtering, call-stack mode, LER, #DB,
   IA32_XSS and XSAVES. Facts from docs/arch-lbr-reference.md sections 1, 2 and 5. */
#include "runtime/runtime.h"

/* The checks this program reports, in order (the runner reads them from the image). */
VLBR_CHECKS(
    "cpuid_arch_lbr_enumerated cpuid_1c_depth_mask cpuid_1c_reserved_zero "
    "cpuid_d1_xss_bit15 cpuid_d_component15_size cpuid_d_component15_supervisor "
    "lbr_ctl_reset_zero lbr_depth_reset_max debugctl_lbr_reads_zero "
    "perf_capabilities_lbr_fmt lbr_ctl_reserved_bit4_gp lbr_ctl_reserved_bit15_gp "
    "lbr_ctl_reserved_bit23_gp lbr_ctl_reserved_bit32_gp lbr_ctl_reserved_bit63_gp "
    "lbr_ctl_lbren_accepted lbr_ctl_cpl_bits lbr_ctl_call_stack_bit "
    "lbr_ctl_branch_type_bits lbr_depth_legal lbr_depth_0_gp lbr_depth_7_gp lbr_depth_72_gp "
    "lbr_depth_not_enumerated_gp lbr_depth_write_clears lbr_record_beyond_depth_gp "
    "known_loop_records known_loop_newest_first lbr_ctl_write_keeps_records "
    "lbren_clear_records_nothing lbr_record_write_readback lbr_record_noncanonical_gp "
    "filter_jcc filter_near_rel_jmp filter_near_ind_jmp filter_near_rel_call "
    "filter_near_ret filter_near_ind_call filter_other branch_zoo_all_types "
    "br_type_encoding call_stack_off_records_all call_stack_mode ler_after_exception "
    "ler_info_br_type db_clears_lbren ring3_int_return cpl_os_only cpl_usr_only "
    "cpl_os_and_usr user_rdmsr_gp user_wrmsr_gp xss_other_bits_gp xss_bit15_write "
    "xsaves_component15 xrstors_component15 xrstors_depth_mismatch_clears");

#define ALL_BRANCHES (LBR_CTL_LBREN | LBR_CTL_OS | LBR_CTL_BRANCH_BITS)
#define XSS_ARCH_LBR (1ull << 15)

struct rec { u64 from, to; int type; };

/* Labels of lbr_scenarios.S. */
extern char known_loop[], kl_top[], kl_call[], kl_leaf[], kl_ret[], kl_after_call[], kl_jcc[];
extern char zoo_jcc[], zoo_t1[], zoo_jmp_rel[], zoo_t2[], zoo_jmp_ind[], zoo_t3[],
    zoo_call_rel[], zoo_fn_a[], zoo_ret_a[], zoo_after_a[], zoo_call_ind[], zoo_fn_b[],
    zoo_ret_b[], zoo_after_b[], zoo_lret[], zoo_t4[];
extern char cs_call_a[], cs_a[], cs_call_b[], cs_b[], cs_ret_b[], cs_after_b[], cs_call_c[],
    cs_c[];
extern char ler_jmp[], ler_target[], ler_ud2[], ler_recover[];
extern char db_icebp[], db_recover[];
extern char cplk_top[], cplk_jcc[], cplu_top[], cplu_jcc[];
void known_loop_fn(u64 ctl) __asm__("known_loop");
void branch_zoo(u64 ctl);
void call_stack_scenario(u64 ctl);
void ler_scenario(u64 ctl);
void db_scenario(u64 ctl);
u64 cpl_scenario(u64 ctl, u64 user_stack_top);
void user_rdmsr_lbr_ctl(void);
void user_wrmsr_lbr_ctl(void);

static struct lbr_caps caps;
static u64 xsave_area[4096 / 8] __attribute__((aligned(64)));

#define A(label) ((u64)(label))
#define REC(f, t, ty) { A(f), A(t), ty }

/* Newest first (IA32_LBR_0 holds the youngest branch). */
static const struct rec known_loop_expected[] = {
    REC(kl_ret, kl_after_call, BR_TYPE_NEAR_RET), REC(kl_call, kl_leaf, BR_TYPE_NEAR_REL_CALL),
    REC(kl_jcc, kl_top, BR_TYPE_JCC),
    REC(kl_ret, kl_after_call, BR_TYPE_NEAR_RET), REC(kl_call, kl_leaf, BR_TYPE_NEAR_REL_CALL),
    REC(kl_jcc, kl_top, BR_TYPE_JCC),
    REC(kl_ret, kl_after_call, BR_TYPE_NEAR_RET), REC(kl_call, kl_leaf, BR_TYPE_NEAR_REL_CALL),
};
#define KNOWN_LOOP_RECORDS 8

/* branch_zoo's branches, oldest first, with the LBR_CTL bit that lets each be recorded. */
static const struct { struct rec r; u64 filter; const char *check; } zoo[] = {
    { REC(zoo_jcc, zoo_t1, BR_TYPE_JCC), LBR_CTL_COND, "filter_jcc" },
    { REC(zoo_jmp_rel, zoo_t2, BR_TYPE_NEAR_REL_JMP), LBR_CTL_NEAR_REL_JMP, "filter_near_rel_jmp" },
    { REC(zoo_jmp_ind, zoo_t3, BR_TYPE_NEAR_IND_JMP), LBR_CTL_NEAR_IND_JMP, "filter_near_ind_jmp" },
    { REC(zoo_call_rel, zoo_fn_a, BR_TYPE_NEAR_REL_CALL), LBR_CTL_NEAR_REL_CALL, "filter_near_rel_call" },
    { REC(zoo_ret_a, zoo_after_a, BR_TYPE_NEAR_RET), LBR_CTL_NEAR_RET, "filter_near_ret" },
    { REC(zoo_call_ind, zoo_fn_b, BR_TYPE_NEAR_IND_CALL), LBR_CTL_NEAR_IND_CALL, "filter_near_ind_call" },
    { REC(zoo_ret_b, zoo_after_b, BR_TYPE_NEAR_RET), LBR_CTL_NEAR_RET, NULL },
    { REC(zoo_lret, zoo_t4, BR_TYPE_OTHER), LBR_CTL_OTHER_BRANCH, "filter_other" },
};
#define ZOO_BRANCHES 8

static u64 depth(void) { return rdmsr(MSR_LBR_DEPTH); }

/* Compare IA32_LBR_0..n-1 with want (newest first) and require the rest up to DEPTH zero.
   Returns 1 on match, else reports FAIL with the first difference. */
static int records_match(const char *name, const struct rec *want, int n, int check_type)
{
    u64 d = depth();
    for (u64 i = 0; i < d; i++) {
        u64 from = rdmsr(MSR_LBR_FROM(i)), to = rdmsr(MSR_LBR_TO(i));
        if ((int)i < n) {
            if (from != want[i].from || to != want[i].to) {
                check_fail(name, "record %lu is %lx->%lx, expected %lx->%lx", i, from, to,
                           want[i].from, want[i].to);
                return 0;
            }
            u64 type = LBR_INFO_BR_TYPE(rdmsr(MSR_LBR_INFO(i)));
            if (check_type && type != (u64)want[i].type) {
                check_fail(name, "record %lu (%lx->%lx) has BR_TYPE %lu, expected %d", i,
                           from, to, type, want[i].type);
                return 0;
            }
        } else if (from || to || rdmsr(MSR_LBR_INFO(i))) {
            check_fail(name, "record %lu is %lx->%lx, expected only %d records", i, from, to, n);
            return 0;
        }
    }
    check_pass(name);
    return 1;
}

static void check_cpuid(void)
{
    struct cpuid_regs max = cpuid(0, 0);
    check("cpuid_arch_lbr_enumerated", caps.arch_lbr && max.eax >= 0x1C,
          "CPUID.7.0:EDX[19]=%d, max basic leaf %x", caps.arch_lbr, max.eax);
    struct cpuid_regs r = cpuid(0x1C, 0);
    check("cpuid_1c_depth_mask", caps.depth_mask != 0, "CPUID.1C:EAX[7:0] is 0 (no legal depth)");
    check("cpuid_1c_reserved_zero",
          ((r.eax >> 8) & 0x3FFFFF) == 0 && (r.ebx >> 3) == 0 && ((r.ecx >> 3) & 0x1FFF) == 0
              && r.edx == 0,
          "reserved bits set: eax=%x ebx=%x ecx=%x edx=%x", r.eax, r.ebx, r.ecx, r.edx);
    struct cpuid_regs x1 = cpuid(0xD, 1), c15 = cpuid(0xD, 15);
    int xsaves = (x1.eax >> 3) & 1;
    if (!xsaves)
        check_skip("cpuid_d1_xss_bit15", "CPUID.(0xD,1):EAX[3] XSAVES not enumerated");
    else
        check("cpuid_d1_xss_bit15", (x1.ecx >> 15) & 1, "CPUID.(0xD,1):ECX=%x lacks bit 15", x1.ecx);
    if (!((x1.ecx >> 15) & 1) && c15.eax == 0) {
        check_skip("cpuid_d_component15_size", "XSAVE component 15 not enumerated");
        check_skip("cpuid_d_component15_supervisor", "XSAVE component 15 not enumerated");
        return;
    }
    u32 want = 40 + 24 * caps.max_depth;
    check("cpuid_d_component15_size", c15.eax == want,
          "CPUID.(0xD,0xF):EAX=%d, expected 40+24*%d=%d", c15.eax, caps.max_depth, want);
    check("cpuid_d_component15_supervisor", c15.ecx & 1,
          "CPUID.(0xD,0xF):ECX=%x: bit 0 (IA32_XSS component) clear", c15.ecx);
}

static void check_reset_and_misc_msrs(void)
{
    u64 v;
    u32 vec = rdmsr_safe(MSR_LBR_CTL, &v);
    check("lbr_ctl_reset_zero", vec == NO_FAULT && v == 0, "RDMSR IA32_LBR_CTL: vector %d value %lx",
          vec, v);
    vec = rdmsr_safe(MSR_LBR_DEPTH, &v);
    check("lbr_depth_reset_max", vec == NO_FAULT && v == caps.max_depth,
          "RDMSR IA32_LBR_DEPTH: vector %d value %lu, max depth %d", vec, v, caps.max_depth);
    vec = rdmsr_safe(MSR_DEBUGCTL, &v);
    check("debugctl_lbr_reads_zero", vec == NO_FAULT && (v & 1) == 0,
          "RDMSR IA32_DEBUGCTL: vector %d value %lx", vec, v);
    if (!((cpuid(1, 0).ecx >> 15) & 1)) {
        check_skip("perf_capabilities_lbr_fmt", "CPUID.1:ECX[15] PDCM clear: no IA32_PERF_CAPABILITIES");
    } else {
        vec = rdmsr_safe(MSR_PERF_CAPABILITIES, &v);
        check("perf_capabilities_lbr_fmt", vec == NO_FAULT && (v & 0x3F) == 0x3F,
              "RDMSR IA32_PERF_CAPABILITIES: vector %d value %lx (LBR_FMT must be 0x3f)", vec, v);
    }
}

static void check_ctl_reserved(void)
{
    static const struct { int bit; const char *name; } bits[] = {
        { 4, "lbr_ctl_reserved_bit4_gp" }, { 15, "lbr_ctl_reserved_bit15_gp" },
        { 23, "lbr_ctl_reserved_bit23_gp" }, { 32, "lbr_ctl_reserved_bit32_gp" },
        { 63, "lbr_ctl_reserved_bit63_gp" },
    };
    for (unsigned i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        u64 value = 1ull << bits[i].bit | LBR_CTL_OS;
        u32 vec = wrmsr_safe(MSR_LBR_CTL, value);
        u64 after = rdmsr(MSR_LBR_CTL);
        check(bits[i].name, vec == 13 && after == 0,
              "WRMSR IA32_LBR_CTL=%lx: vector %d (want 13), reads %lx after", value, vec, after);
        wrmsr(MSR_LBR_CTL, 0);
    }
}

/* A capability bit group is writable exactly when CPUID enumerates it. */
static void check_ctl_bits(const char *name, u64 bits, int supported, const char *cpuid_bit)
{
    int ok = 1;
    for (int b = 0; b < 64 && ok; b++) {
        if (!(bits >> b & 1))
            continue;
        u64 value = 1ull << b;
        u32 vec = wrmsr_safe(MSR_LBR_CTL, value);
        u64 after = rdmsr(MSR_LBR_CTL);
        wrmsr(MSR_LBR_CTL, 0);
        if (supported && (vec != NO_FAULT || after != value)) {
            check_fail(name, "bit %d (enumerated by %s): vector %d, reads %lx", b, cpuid_bit, vec, after);
            ok = 0;
        } else if (!supported && vec != 13) {
            check_fail(name, "bit %d without %s: vector %d, want #GP", b, cpuid_bit, vec);
            ok = 0;
        }
    }
    if (ok)
        check_pass(name);
}

static void check_ctl(void)
{
    check_ctl_reserved();
    check_ctl_bits("lbr_ctl_lbren_accepted", LBR_CTL_LBREN, 1, "Arch LBR");
    check_ctl_bits("lbr_ctl_cpl_bits", LBR_CTL_OS | LBR_CTL_USR, caps.cpl_filter, "CPUID.1C:EBX[0]");
    check_ctl_bits("lbr_ctl_call_stack_bit", LBR_CTL_CALL_STACK, caps.call_stack, "CPUID.1C:EBX[2]");
    check_ctl_bits("lbr_ctl_branch_type_bits", LBR_CTL_BRANCH_BITS, caps.branch_filter,
                   "CPUID.1C:EBX[1]");
}

static void check_depth(void)
{
    u64 max = caps.max_depth;
    int ok = 1;
    for (u64 d = 8; d <= 64 && ok; d += 8) {
        if (!depth_legal(&caps, d))
            continue;
        u32 vec = wrmsr_safe(MSR_LBR_DEPTH, d);
        if (vec != NO_FAULT || depth() != d) {
            check_fail("lbr_depth_legal", "depth %lu: vector %d, reads %lu", d, vec, depth());
            ok = 0;
        }
    }
    if (ok)
        check_pass("lbr_depth_legal");
    wrmsr(MSR_LBR_DEPTH, max);

    static const struct { u64 value; const char *name; } bad[] = {
        { 0, "lbr_depth_0_gp" }, { 7, "lbr_depth_7_gp" }, { 72, "lbr_depth_72_gp" },
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        u32 vec = wrmsr_safe(MSR_LBR_DEPTH, bad[i].value);
        check(bad[i].name, vec == 13 && depth() == max,
              "WRMSR IA32_LBR_DEPTH=%lu: vector %d (want 13), reads %lu", bad[i].value, vec, depth());
    }
    u64 missing = 0;
    for (u64 d = 8; d <= 64; d += 8)
        if (!depth_legal(&caps, d)) {
            missing = d;
            break;
        }
    if (!missing) {
        check_skip("lbr_depth_not_enumerated_gp", "every depth 8..64 is enumerated");
    } else {
        u32 vec = wrmsr_safe(MSR_LBR_DEPTH, missing);
        check("lbr_depth_not_enumerated_gp", vec == 13 && depth() == max,
              "WRMSR IA32_LBR_DEPTH=%lu (CPUID.1C:EAX=%x): vector %d, reads %lu", missing,
              caps.depth_mask, vec, depth());
    }

    known_loop_fn(ALL_BRANCHES);
    u64 before = rdmsr(MSR_LBR_FROM(0));
    wrmsr(MSR_LBR_DEPTH, max);
    int clear = before != 0;
    for (u64 i = 0; i < max && clear; i++)
        clear = !rdmsr(MSR_LBR_FROM(i)) && !rdmsr(MSR_LBR_TO(i)) && !rdmsr(MSR_LBR_INFO(i));
    check("lbr_depth_write_clears", clear,
          before ? "a record survived the IA32_LBR_DEPTH write" : "known_loop left no record");

    u64 least = 0;
    for (u64 d = 8; d <= 64; d += 8)
        if (depth_legal(&caps, d)) {
            least = d;
            break;
        }
    if (least == 64) {
        check_skip("lbr_record_beyond_depth_gp", "only depth 64 is enumerated");
    } else {
        wrmsr(MSR_LBR_DEPTH, least);
        u64 v;
        u32 vf = rdmsr_safe(MSR_LBR_FROM(least), &v), vt = rdmsr_safe(MSR_LBR_TO(least), &v);
        u32 vi = rdmsr_safe(MSR_LBR_INFO(least), &v), vw = wrmsr_safe(MSR_LBR_FROM(least), 0);
        u32 inside = rdmsr_safe(MSR_LBR_FROM(least - 1), &v);
        check("lbr_record_beyond_depth_gp",
              vf == 13 && vt == 13 && vi == 13 && vw == 13 && inside == NO_FAULT,
              "DEPTH=%lu: record %lu FROM/TO/INFO read vectors %d/%d/%d, write %d; record %lu: %d",
              least, least, vf, vt, vi, vw, least - 1, inside);
        wrmsr(MSR_LBR_DEPTH, max);
    }
}

static void check_records(void)
{
    lbr_clear();
    known_loop_fn(ALL_BRANCHES);
    records_match("known_loop_records", known_loop_expected, KNOWN_LOOP_RECORDS, 0);
    u64 newest = rdmsr(MSR_LBR_FROM(0)), oldest = rdmsr(MSR_LBR_FROM(KNOWN_LOOP_RECORDS - 1));
    check("known_loop_newest_first", newest == A(kl_ret) && oldest == A(kl_call),
          "IA32_LBR_0_FROM=%lx (want kl_ret %lx), IA32_LBR_7_FROM=%lx (want kl_call %lx)",
          newest, A(kl_ret), oldest, A(kl_call));

    wrmsr(MSR_LBR_CTL, LBR_CTL_OS | LBR_CTL_COND);
    wrmsr(MSR_LBR_CTL, 0);
    records_match("lbr_ctl_write_keeps_records", known_loop_expected, KNOWN_LOOP_RECORDS, 0);

    lbr_clear();
    branch_zoo(ALL_BRANCHES & ~LBR_CTL_LBREN);
    records_match("lbren_clear_records_nothing", 0, 0, 0);

    /* Record MSRs are writable (state restore); IPs must be canonical (1 << 56 is not, at
       48 or 57 bits). */
    const u64 from = A(zoo_jcc), to = A(zoo_t1), info = (u64)BR_TYPE_JCC << 56;
    u32 vf = wrmsr_safe(MSR_LBR_FROM(0), from), vt = wrmsr_safe(MSR_LBR_TO(0), to);
    u32 vi = wrmsr_safe(MSR_LBR_INFO(0), info);
    u64 rf = rdmsr(MSR_LBR_FROM(0)), rt = rdmsr(MSR_LBR_TO(0)), ri = rdmsr(MSR_LBR_INFO(0));
    check("lbr_record_write_readback",
          vf == NO_FAULT && vt == NO_FAULT && vi == NO_FAULT && rf == from && rt == to && ri == info,
          "wrote %lx/%lx/%lx (vectors %d/%d/%d), read %lx/%lx/%lx", from, to, info, vf, vt, vi,
          rf, rt, ri);
    u32 vn = wrmsr_safe(MSR_LBR_FROM(0), 1ull << 56);
    check("lbr_record_noncanonical_gp", vn == 13 && rdmsr(MSR_LBR_FROM(0)) == from,
          "WRMSR IA32_LBR_0_FROM_IP=1<<56: vector %d (want 13), reads %lx", vn,
          rdmsr(MSR_LBR_FROM(0)));
    lbr_clear();

    if (!caps.branch_filter) {
        for (int i = 0; i < ZOO_BRANCHES; i++)
            if (zoo[i].check)
                check_skip(zoo[i].check, "CPUID.1C:EBX[1] branch filtering not enumerated");
    } else {
        for (int i = 0; i < ZOO_BRANCHES; i++) {
            if (!zoo[i].check)
                continue;
            struct rec want[ZOO_BRANCHES];
            int n = 0;
            for (int j = ZOO_BRANCHES - 1; j >= 0; j--)
                if (zoo[j].filter == zoo[i].filter)
                    want[n++] = zoo[j].r;
            lbr_clear();
            branch_zoo(LBR_CTL_LBREN | LBR_CTL_OS | zoo[i].filter);
            records_match(zoo[i].check, want, n, 0);
        }
    }

    struct rec all[ZOO_BRANCHES];
    for (int j = 0; j < ZOO_BRANCHES; j++)
        all[j] = zoo[ZOO_BRANCHES - 1 - j].r;
    lbr_clear();
    branch_zoo(ALL_BRANCHES);
    records_match("branch_zoo_all_types", all, ZOO_BRANCHES, 0);
    if (!caps.br_type)
        check_skip("br_type_encoding", "CPUID.1C:ECX[2] BR_TYPE not enumerated");
    else
        records_match("br_type_encoding", all, ZOO_BRANCHES, 1);
}

static void check_call_stack(void)
{
    u64 ctl = LBR_CTL_LBREN | LBR_CTL_OS | LBR_CTL_NEAR_REL_CALL | LBR_CTL_NEAR_RET;
    /* Branches in order: call a, call b, ret b, call c. */
    const struct rec plain[] = {
        REC(cs_call_c, cs_c, BR_TYPE_NEAR_REL_CALL), REC(cs_ret_b, cs_after_b, BR_TYPE_NEAR_RET),
        REC(cs_call_b, cs_b, BR_TYPE_NEAR_REL_CALL), REC(cs_call_a, cs_a, BR_TYPE_NEAR_REL_CALL),
    };
    const struct rec stack[] = {
        REC(cs_call_c, cs_c, BR_TYPE_NEAR_REL_CALL), REC(cs_call_a, cs_a, BR_TYPE_NEAR_REL_CALL),
    };
    if (!caps.branch_filter) {
        check_skip("call_stack_off_records_all", "CPUID.1C:EBX[1] branch filtering not enumerated");
    } else {
        lbr_clear();
        call_stack_scenario(ctl);
        records_match("call_stack_off_records_all", plain, 4, 0);
    }
    if (!caps.call_stack || !caps.branch_filter) {
        check_skip("call_stack_mode", "CPUID.1C:EBX[2] call-stack mode not enumerated");
        return;
    }
    lbr_clear();
    call_stack_scenario(ctl | LBR_CTL_CALL_STACK);
    records_match("call_stack_mode", stack, 2, 0);
}

static void check_ler_and_db(void)
{
    struct fault_ctx *f = rt_fault();
    lbr_clear();
    f->vector = NO_FAULT;
    f->recover = A(ler_recover);
    ler_scenario(ALL_BRANCHES);
    f->recover = 0;
    u64 from = rdmsr(MSR_LER_FROM), to = rdmsr(MSR_LER_TO);
    check("ler_after_exception", f->vector == 6 && from == A(ler_jmp) && to == A(ler_target),
          "#UD vector %ld; IA32_LER_FROM_IP=%lx TO_IP=%lx, expected the last branch %lx->%lx",
          f->vector, from, to, A(ler_jmp), A(ler_target));
    u64 ler_type = LBR_INFO_BR_TYPE(rdmsr(MSR_LER_INFO));
    if (!caps.br_type)
        check_skip("ler_info_br_type", "CPUID.1C:ECX[2] BR_TYPE not enumerated");
    else
        check("ler_info_br_type", ler_type == BR_TYPE_NEAR_REL_JMP,
              "IA32_LER_INFO.BR_TYPE=%lu, expected %d (near relative JMP)", ler_type,
              BR_TYPE_NEAR_REL_JMP);

    lbr_clear();
    f->vector = NO_FAULT;
    f->recover = A(db_recover);
    db_scenario(ALL_BRANCHES);
    f->recover = 0;
    u64 ctl = rdmsr(MSR_LBR_CTL);
    wrmsr(MSR_LBR_CTL, 0);
    check("db_clears_lbren", f->vector == 1 && ctl == (ALL_BRANCHES & ~LBR_CTL_LBREN),
          "after INT1: vector %ld, IA32_LBR_CTL=%lx (want %lx)", f->vector, ctl,
          ALL_BRANCHES & ~LBR_CTL_LBREN);
}

static void check_user_msrs(void)
{
    u64 vector = rt_enter_user(user_rdmsr_lbr_ctl, rt_user_stack_top());
    check("user_rdmsr_gp", vector == 13, "RDMSR IA32_LBR_CTL at CPL3 ended with vector %ld, want 13",
          vector);
    vector = rt_enter_user(user_wrmsr_lbr_ctl, rt_user_stack_top());
    u64 ctl = rdmsr(MSR_LBR_CTL);
    wrmsr(MSR_LBR_CTL, 0);
    check("user_wrmsr_gp", vector == 13 && ctl == 0,
          "WRMSR IA32_LBR_CTL at CPL3 ended with vector %ld (want 13), IA32_LBR_CTL=%lx", vector, ctl);
}

static void check_cpl(void)
{
    static const char *names[] = { "cpl_os_only", "cpl_usr_only", "cpl_os_and_usr",
                                   "ring3_int_return" };
    if (!caps.cpl_filter || !caps.branch_filter) {
        for (int i = 0; i < 4; i++)
            check_skip(names[i], "CPUID.1C:EBX[0] or EBX[1] not enumerated");
        return;
    }
    const struct rec k = REC(cplk_jcc, cplk_top, BR_TYPE_JCC);
    const struct rec u = REC(cplu_jcc, cplu_top, BR_TYPE_JCC);
    const struct rec os[] = { k, k }, usr[] = { u, u }, both[] = { u, u, k, k };
    const u64 base = LBR_CTL_LBREN | LBR_CTL_COND;

    lbr_clear();
    u64 exit_vector = cpl_scenario(base | LBR_CTL_OS, rt_user_stack_top());
    check("ring3_int_return", exit_vector == RT_USER_RETURN_VECTOR,
          "ring 3 ended with vector %ld, not by INT 0x80 through its DPL3 gate", exit_vector);
    records_match(names[0], os, 2, 0);
    lbr_clear();
    cpl_scenario(base | LBR_CTL_USR, rt_user_stack_top());
    records_match(names[1], usr, 2, 0);
    lbr_clear();
    cpl_scenario(base | LBR_CTL_OS | LBR_CTL_USR, rt_user_stack_top());
    records_match(names[2], both, 4, 0);
}

static void check_xss_and_xsaves(void)
{
    struct cpuid_regs x1 = cpuid(0xD, 1);
    int xsaves = (x1.eax >> 3) & 1, xss15 = (x1.ecx >> 15) & 1;
    const char *why = !xsaves ? "CPUID.(0xD,1):EAX[3] XSAVES not enumerated"
                              : "CPUID.(0xD,1):ECX[15] Arch LBR XSS bit not enumerated";
    if (!xsaves) {
        check_skip("xss_other_bits_gp", "%s", why);
    } else {
        u64 supported = (u64)x1.edx << 32 | x1.ecx;
        static const int bits[] = { 0, 1, 8, 14, 16, 63 };
        int ok = 1;
        for (unsigned i = 0; i < sizeof(bits) / sizeof(bits[0]) && ok; i++) {
            if (supported >> bits[i] & 1)
                continue;
            u32 vec = wrmsr_safe(MSR_XSS, 1ull << bits[i]);
            if (vec != 13) {
                check_fail("xss_other_bits_gp", "WRMSR IA32_XSS bit %d: vector %d, want 13",
                           bits[i], vec);
                ok = 0;
            }
        }
        wrmsr_safe(MSR_XSS, 0);
        if (ok)
            check_pass("xss_other_bits_gp");
    }
    if (!xsaves || !xss15) {
        check_skip("xss_bit15_write", "%s", why);
        check_skip("xsaves_component15", "%s", why);
        check_skip("xrstors_component15", "%s", why);
        check_skip("xrstors_depth_mismatch_clears", "%s", why);
        return;
    }
    u64 v = 0;
    u32 vec = wrmsr_safe(MSR_XSS, XSS_ARCH_LBR);
    u32 rvec = rdmsr_safe(MSR_XSS, &v);
    if (!check("xss_bit15_write", vec == NO_FAULT && rvec == NO_FAULT && v == XSS_ARCH_LBR,
               "WRMSR IA32_XSS=0x8000: vector %d; reads %lx (vector %d)", vec, v, rvec)) {
        check_skip("xsaves_component15", "IA32_XSS bit 15 not accepted");
        check_skip("xrstors_component15", "IA32_XSS bit 15 not accepted");
        check_skip("xrstors_depth_mismatch_clears", "IA32_XSS bit 15 not accepted");
        return;
    }

    const u64 saved_ctl = LBR_CTL_OS | LBR_CTL_COND;  /* LBREn clear: nothing moves meanwhile */
    lbr_clear();
    known_loop_fn(ALL_BRANCHES);
    wrmsr(MSR_LBR_CTL, saved_ctl);
    for (unsigned i = 0; i < sizeof(xsave_area) / 8; i++)
        xsave_area[i] = 0;
    vec = xsaves_safe(xsave_area, XSS_ARCH_LBR);
    /* Compacted format: components 0/1 live in the legacy area, so 15 starts right after
       the 64-byte header at 576 (64-byte aligned either way). */
    const u64 *lbr = (const u64 *)((const u8 *)xsave_area + 576);
    u64 xstate_bv = xsave_area[512 / 8], xcomp_bv = xsave_area[512 / 8 + 1];
    check("xsaves_component15",
          vec == NO_FAULT && (xstate_bv & XSS_ARCH_LBR) && (xcomp_bv >> 63)
              && (xcomp_bv & XSS_ARCH_LBR) && lbr[0] == saved_ctl && lbr[1] == depth()
              && lbr[5] == A(kl_ret) && lbr[6] == A(kl_after_call),
          "XSAVES vector %d, XSTATE_BV %lx XCOMP_BV %lx; saved CTL %lx DEPTH %lu record0 %lx->%lx",
          vec, xstate_bv, xcomp_bv, lbr[0], lbr[1], lbr[5], lbr[6]);

    wrmsr(MSR_LBR_CTL, 0);
    lbr_clear();
    vec = xrstors_safe(xsave_area, XSS_ARCH_LBR);
    u64 ctl = rdmsr(MSR_LBR_CTL), from = rdmsr(MSR_LBR_FROM(0)), to = rdmsr(MSR_LBR_TO(0));
    check("xrstors_component15",
          vec == NO_FAULT && ctl == saved_ctl && from == A(kl_ret) && to == A(kl_after_call),
          "XRSTORS vector %d; IA32_LBR_CTL=%lx record0 %lx->%lx", vec, ctl, from, to);

    /* A saved DEPTH other than the current one: XRSTORS restores LBR_CTL but clears every
       record and leaves IA32_LBR_DEPTH alone (reference section 2). */
    u64 current = depth(), other = current == 8 ? 16 : 8;
    for (u64 d = 8; d <= 64; d += 8)
        if (d != current && depth_legal(&caps, d))
            other = d;
    ((u64 *)((u8 *)xsave_area + 576))[1] = other;
    wrmsr(MSR_LBR_CTL, 0);
    vec = xrstors_safe(xsave_area, XSS_ARCH_LBR);
    ctl = rdmsr(MSR_LBR_CTL);
    from = rdmsr(MSR_LBR_FROM(0));
    check("xrstors_depth_mismatch_clears",
          vec == NO_FAULT && ctl == saved_ctl && from == 0 && depth() == current,
          "XRSTORS of saved DEPTH %lu at DEPTH %lu: vector %d, IA32_LBR_CTL=%lx, record0 FROM %lx, "
          "DEPTH now %lu", other, current, vec, ctl, from, depth());
    wrmsr(MSR_LBR_CTL, 0);
    wrmsr_safe(MSR_XSS, 0);
}

int guest_main(int cpu, int ncpus)
{
    (void)ncpus;
    if (cpu != 0)
        return 0;
    caps = lbr_caps();
    check_cpuid();
    if (!caps.arch_lbr || !caps.max_depth) {
        /* cpuid_arch_lbr_enumerated has failed; the MSR checks cannot run. */
        rt_printf("SKIP rest: no Arch LBR enumerated (CPUID.7.0:EDX[19] or CPUID.1C:EAX[7:0])\n");
        return 1;
    }
    check_reset_and_misc_msrs();
    check_ctl();
    check_depth();
    check_records();
    check_call_stack();
    check_ler_and_db();
    check_cpl();
    check_user_msrs();
    check_xss_and_xsaves();
    wrmsr(MSR_LBR_CTL, 0);
    return 0;
}
