/* A workload for `vlbr linux --with-perf --run`: runs Debian's perf tool on itself.
   `perf record -b` samples this program's loop (argument "loop"), then `perf script -F
   ip,brstack` prints every sample's branch stack and `perf report --sort
   symbol_from,symbol_to` summarises them. */
#include <stdio.h>
#include <stdlib.h>

#define ITERATIONS 300000

static int run(const char *command)
{
    fflush(stdout);
    return system(command);
}

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        for (volatile int i = 0; i < ITERATIONS; i++)
            ;
        return 0;
    }
    int status = run("/usr/bin/perf record -q -b -e instructions:u -c 100000 "
                     "-o /tmp/perf.data /workload loop");
    printf("perf record: %d\n", status);
    run("/usr/bin/perf script -i /tmp/perf.data -F ip,brstack | /bin/busybox sed 's/^/brstack: /'");
    status = run("/usr/bin/perf report -i /tmp/perf.data --stdio --sort symbol_from,symbol_to "
                 "2>/dev/null | /bin/busybox grep -c '%' | /bin/busybox sed 's/^/report lines: /'");
    return status;
}
