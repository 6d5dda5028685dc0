/* vlbr's native UC_HOOK_BLOCK callback: append each executed block (start, size) to a ring
   the Python side drains at stretch ends. Plain C, no Python headers: loaded with ctypes,
   passed to uc_hook_add as a function pointer, so no Python runs per block. */
#include <stdint.h>

struct vlbr_block_ring {
    uint64_t count;       /* entries written */
    uint64_t capacity;    /* entries the arrays hold */
    uint64_t dropped;     /* blocks seen with the ring full (the stretch must be bounded) */
    uint64_t *address;
    uint32_t *size;
};

void vlbr_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vlbr_block_ring *r = user_data;
    (void)uc;
    if (r->count < r->capacity) {
        r->address[r->count] = address;
        r->size[r->count] = size;
        r->count++;
    } else {
        r->dropped++;
    }
}
