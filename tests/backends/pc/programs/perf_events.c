/* A workload for `vlbr linux --run`: perf_event_open on the guest's PMU.
   1. Counting: its own user-mode instructions over a loop of known size.
   2. Sampling with branch stacks (PERF_SAMPLE_BRANCH_STACK, user branches: what perf record -b
      opens) every PERIOD instructions over another loop; prints what the ring buffer holds.
      The PMIs come through the local APIC's LVTPC as NMIs at the exact overflow. */
#include <errno.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ITERATIONS 100000
#define PERIOD 100000
#define SAMPLED_ITERATIONS 200000
#define DATA_PAGES 16

static int open_event(struct perf_event_attr *attr)
{
    return (int)syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
}

/* User-mode instructions retired of this process, disabled until enabled. */
static void user_instructions(struct perf_event_attr *attr)
{
    memset(attr, 0, sizeof *attr);
    attr->type = PERF_TYPE_HARDWARE;
    attr->size = sizeof *attr;
    attr->config = PERF_COUNT_HW_INSTRUCTIONS;
    attr->disabled = 1;
    attr->exclude_kernel = 1;
    attr->exclude_hv = 1;
}

static void count_instructions(void)
{
    struct perf_event_attr attr;
    user_instructions(&attr);
    int fd = open_event(&attr);
    if (fd < 0) {
        printf("instructions: unavailable (%s)\n", strerror(errno));
        return;
    }
    ioctl(fd, PERF_EVENT_IOC_RESET, 0);
    ioctl(fd, PERF_EVENT_IOC_ENABLE, 0);
    for (volatile int i = 0; i < ITERATIONS; i++)
        ;
    ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
    uint64_t count = 0;
    if (read(fd, &count, sizeof count) != sizeof count)
        printf("instructions: read failed (%s)\n", strerror(errno));
    else
        printf("instructions: %llu for %d iterations\n", (unsigned long long)count, ITERATIONS);
    close(fd);
}

struct sample {
    struct perf_event_header header;
    uint64_t ip;
    uint64_t nr;
    struct perf_branch_entry branches[];
};

static int open_sampling(void)
{
    struct perf_event_attr attr;
    user_instructions(&attr);
    attr.sample_period = PERIOD;
    attr.sample_type = PERF_SAMPLE_IP | PERF_SAMPLE_BRANCH_STACK;
    attr.branch_sample_type = PERF_SAMPLE_BRANCH_USER | PERF_SAMPLE_BRANCH_ANY;
    return open_event(&attr);
}

static void report(struct perf_event_mmap_page *page)
{
    unsigned char *data = (unsigned char *)page + page->data_offset;
    uint64_t head = page->data_head, samples = 0, records = 0;
    __sync_synchronize();
    for (uint64_t at = page->data_tail; at < head;) {
        struct perf_event_header *h = (void *)(data + at % page->data_size);
        if (h->type == PERF_RECORD_SAMPLE) {
            struct sample *s = (void *)h;
            if (samples < 3) {
                printf("sample %llu: ip %#llx, %llu branches", (unsigned long long)samples,
                       (unsigned long long)s->ip, (unsigned long long)s->nr);
                for (uint64_t i = 0; i < s->nr && i < 4; i++)
                    printf(" [%#llx -> %#llx]", (unsigned long long)s->branches[i].from,
                           (unsigned long long)s->branches[i].to);
                printf("\n");
            }
            samples++;
        }
        records++;
        at += h->size;
    }
    printf("samples: %llu of %llu records\n", (unsigned long long)samples,
           (unsigned long long)records);
}

static void sample_with_branch_stacks(void)
{
    int fd = open_sampling();
    if (fd < 0) {
        printf("samples: unavailable (%s)\n", strerror(errno));
        return;
    }
    long page_size = sysconf(_SC_PAGESIZE);
    void *ring = mmap(NULL, (DATA_PAGES + 1) * page_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                      fd, 0);
    if (ring == MAP_FAILED) {
        printf("samples: mmap failed (%s)\n", strerror(errno));
        return;
    }
    ioctl(fd, PERF_EVENT_IOC_ENABLE, 0);
    for (volatile int i = 0; i < SAMPLED_ITERATIONS; i++)
        ;
    ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
    report(ring);
    close(fd);
}

int main(void)
{
    count_instructions();
    sample_with_branch_stacks();
    return 0;
}
