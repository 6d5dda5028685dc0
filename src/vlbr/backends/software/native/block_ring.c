/* vlbr's native UC_HOOK_BLOCK callback for the software backend. It bounds each stretch by
   the bytes of the blocks it ran (the step budget: unicorn's emu_start count would add a
   per-instruction hook) and, while recording, appends each block (start, size) to a ring the
   Python side drains. Both stops come before the block runs (it runs when unicorn resumes
   there); a full ring stops before logging the block, a spent budget after, as the branch
   into the block did retire. A stop leaves unicorn's CR2 at -2, so the hook keeps the
   guest's. Plain C, no Python headers: loaded with ctypes, passed to uc_hook_add as a
   function pointer, so no Python runs per block. */
#include <stdint.h>

enum { RUNNING, BUDGET_SPENT, RING_FULL };

struct vlbr_block_ring {
    uint64_t count;                /* entries written */
    uint64_t capacity;             /* entries the arrays hold */
    uint64_t record;               /* 0: count bytes only (the model does not record) */
    uint64_t bytes;                /* block bytes this stretch ran */
    uint64_t budget;               /* stop before a block once bytes reached it */
    uint64_t stopped;              /* RUNNING, BUDGET_SPENT or RING_FULL */
    int (*emu_stop)(void *uc);     /* unicorn's uc_emu_stop */
    int (*reg_read)(void *uc, int regid, void *value);  /* unicorn's uc_reg_read */
    int64_t cr2_regid;             /* UC_X86_REG_CR2 */
    uint64_t cr2;                  /* the guest's CR2 at the last stop */
    uint64_t *address;
    uint32_t *size;
};

static void stop(struct vlbr_block_ring *r, void *uc, uint64_t why)
{
    r->stopped = why;
    r->reg_read(uc, (int)r->cr2_regid, &r->cr2);
    r->emu_stop(uc);
}

void vlbr_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vlbr_block_ring *r = user_data;
    if (r->record) {
        if (r->count == r->capacity) {
            stop(r, uc, RING_FULL);
            return;
        }
        r->address[r->count] = address;  /* even if it does not run: the branch to it did */
        r->size[r->count] = size;
        r->count++;
    }
    if (r->bytes >= r->budget) {
        stop(r, uc, BUDGET_SPENT);
        return;
    }
    r->bytes += size;
}

/* A code hook that does nothing: QEMU looks for a stop request after every code hook, so
   one on the instruction after an OUT makes a port hook's emu_stop land there. */
void vlbr_fence_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    (void)uc, (void)address, (void)size, (void)user_data;
}
