/* vlbr's native UC_HOOK_CODE callback for the PC machine: count the instructions a unicorn
   CPU starts, and stop it (1) before the one that would pass a deadline (virtual time for
   timers and counters) and (2) before any instruction starting at a trap address (the
   kernel's RDMSR/WRMSR/RDTSC sites, which vlbr performs). A stopped instruction is not
   counted: unicorn calls the hook again when it resumes there. A stop leaves unicorn's CR2
   at -2, so the hook keeps the guest's CR2 as it was when it stopped. */
#include <stdint.h>

struct vlbr_insn_clock {
    uint64_t retired;              /* instructions started and not stopped */
    uint64_t deadline;             /* stop before retired would exceed this */
    uint64_t stopped;              /* 1: deadline, 2: trap address */
    int (*emu_stop)(void *uc);     /* unicorn's uc_emu_stop */
    uint64_t trap_base;            /* trap_bits covers [trap_base, trap_base + trap_span) */
    uint64_t trap_span;
    const uint8_t *trap_bits;      /* one bit per byte address */
    uint64_t trapped_at;           /* the trap address that stopped the CPU */
    uint64_t skip;                 /* run the instruction here once without trapping */
    int (*reg_read)(void *uc, int regid, void *value);  /* unicorn's uc_reg_read */
    int64_t cr2_regid;             /* UC_X86_REG_CR2 */
    uint64_t cr2;                  /* the guest's CR2 at the last stop */
};

static void stop(struct vlbr_insn_clock *c, void *uc, uint64_t why)
{
    c->stopped = why;
    c->reg_read(uc, (int)c->cr2_regid, &c->cr2);
    c->emu_stop(uc);
}

static int is_trap(const struct vlbr_insn_clock *c, uint64_t address)
{
    uint64_t offset = address - c->trap_base;
    return offset < c->trap_span && (c->trap_bits[offset >> 3] >> (offset & 7)) & 1;
}

void vlbr_insn_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vlbr_insn_clock *c = user_data;
    (void)size;
    if (c->retired >= c->deadline) {
        stop(c, uc, 1);
        return;
    }
    if (address == c->skip) {
        c->skip = 0;
    } else if (is_trap(c, address)) {
        c->trapped_at = address;
        stop(c, uc, 2);
        return;
    }
    c->retired++;
}
