/* A workload for `vlbr linux --with-perf --run`: runs Debian's perf tool on itself.
   Two `perf record -b` at once, each on its own copy of this program running a different
   loop ("a" or "b"), so the scheduler switches between two recording processes; then
   `perf script -F ip,brstack` prints every sample's branch stack (each line tagged with the
   recording it came from) and `perf report --sort symbol_from,symbol_to` summarises one.
   Then `perf record --call-graph lbr` on a known call chain, printed by `perf script`. */
#include <stdio.h>
#include <stdlib.h>

#define ITERATIONS 1000000

__attribute__((noinline)) static void loop_a(void)
{
    for (volatile int i = 0; i < ITERATIONS; i++)
        ;
}

__attribute__((noinline)) static void loop_b(void)
{
    for (volatile long j = ITERATIONS; j > 0; j--)
        ;
}

/* A call chain for --call-graph lbr: main -> outer -> middle -> inner (the loop). */
__attribute__((noinline)) static void inner(void)
{
    for (volatile int k = 0; k < ITERATIONS / 4; k++)
        ;
}

__attribute__((noinline)) static void middle(void)
{
    inner();
    __asm__ volatile("" ::: "memory");  /* no tail call: middle's frame stays */
}

__attribute__((noinline)) static void outer(void)
{
    middle();
    __asm__ volatile("" ::: "memory");
}

static int run(const char *command)
{
    fflush(stdout);
    return system(command);
}

#define RECORD "/usr/bin/perf record -q -b -e instructions:u -c 100000 "

int main(int argc, char **argv)
{
    if (argc > 1) {
        if (argv[1][0] == 'a')
            loop_a();
        else if (argv[1][0] == 'b')
            loop_b();
        else
            outer();
        return 0;
    }
    int status = run(RECORD "-o /tmp/a.data /workload a & " RECORD "-o /tmp/b.data /workload b & "
                     "wait");
    printf("perf record: %d\n", status);
    run("/usr/bin/perf script -i /tmp/a.data -F time,ip,brstack | /bin/busybox sed 's/^/brstack a: /'");
    run("/usr/bin/perf script -i /tmp/b.data -F time,ip,brstack | /bin/busybox sed 's/^/brstack b: /'");
    run("/usr/bin/perf record -q --call-graph lbr -e instructions:u -c 100000 "
        "-o /tmp/c.data /workload c");
    run("/usr/bin/perf script -i /tmp/c.data -F ip,sym | /bin/busybox sed 's/^/callchain: /'");
    status = run("/usr/bin/perf report -i /tmp/a.data --stdio --sort symbol_from,symbol_to "
                 "2>/dev/null | /bin/busybox grep -c '%' | /bin/busybox sed 's/^/report lines: /'");
    return status;
}
