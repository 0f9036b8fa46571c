/* qplug_bench_run: the bench without the rest of the CLI, so that the GPU
 * check can time the kernels even while other parts of the tree are being
 * rebuilt. Same options as `qplug bench`. */
#include "qplug_bench.h"

int main(int argc, char **argv)
{
    return qplug_bench_main(argc, argv);
}
