/* vlbr's native UC_HOOK_CODE callback for the PC machine: count the instructions a unicorn
   CPU starts, and stop it (1) before the one that would pass a deadline (virtual time for
   timers and counters) and (2) before any instruction starting at a trap address (the
   kernel's RDMSR/WRMSR/RDTSC sites, which vlbr performs). A stopped instruction is not
   counted: unicorn calls the hook again when it resumes there. */
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
};

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
        c->stopped = 1;
        c->emu_stop(uc);
        return;
    }
    if (address == c->skip) {
        c->skip = 0;
    } else if (is_trap(c, address)) {
        c->stopped = 2;
        c->trapped_at = address;
        c->emu_stop(uc);
        return;
    }
    c->retired++;
}
