/* A workload for `vlbr linux --run`: counts its own user-mode instructions with
   perf_event_open (counting mode) over a loop of known size, then asks for a branch-stack
   sampling event (what perf record -b opens) and says whether the kernel gives it. */
#include <errno.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ITERATIONS 100000

static int open_event(struct perf_event_attr *attr)
{
    return (int)syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
}

static void count_instructions(void)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_HARDWARE;
    attr.size = sizeof attr;
    attr.config = PERF_COUNT_HW_INSTRUCTIONS;
    attr.disabled = 1;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
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

static void ask_for_branch_stacks(void)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_HARDWARE;
    attr.size = sizeof attr;
    attr.config = PERF_COUNT_HW_INSTRUCTIONS;
    attr.sample_period = 100000;
    attr.sample_type = PERF_SAMPLE_IP | PERF_SAMPLE_BRANCH_STACK;
    attr.branch_sample_type = PERF_SAMPLE_BRANCH_USER | PERF_SAMPLE_BRANCH_ANY;
    attr.exclude_kernel = 1;
    attr.disabled = 1;
    int fd = open_event(&attr);
    printf("branch stacks: %s\n", fd >= 0 ? "available" : strerror(errno));
    if (fd >= 0)
        close(fd);
}

int main(void)
{
    count_instructions();
    ask_for_branch_stacks();
    return 0;
}
