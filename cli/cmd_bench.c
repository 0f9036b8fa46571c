/* qplug bench: not written yet (see the open issues). */
#include <stdio.h>

#include "commands.h"

int qplug_cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "qplug bench: not available in this build yet\n");
    return 2;
}
