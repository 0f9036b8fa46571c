/* qplug plan: not written yet (see the open issues). */
#include <stdio.h>

#include "commands.h"

int qplug_cmd_plan(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "qplug plan: not available in this build yet\n");
    return 2;
}
