/* qplug bench: the implementation lives in bench/ (qplug_bench), which only
 * CUDA builds have; a CPU-only build says so and exits 2. */
#include <stdio.h>

#include "commands.h"
#ifdef QPLUG_HAVE_BENCH
#include "qplug_bench.h"
#endif

int qplug_cmd_bench(int argc, char **argv)
{
#ifdef QPLUG_HAVE_BENCH
    return qplug_bench_main(argc, argv);
#else
    (void)argc;
    (void)argv;
    fprintf(stderr, "qplug bench: this build has no CUDA support (rebuild with QPLUG_CUDA=ON "
                    "and the CUDA toolkit)\n");
    return 2;
#endif
}
