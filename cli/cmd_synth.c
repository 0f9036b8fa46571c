/* qplug synth: not written yet (see the open issues). */
#include <stdio.h>

#include "commands.h"

int qplug_cmd_synth(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "qplug synth: not available in this build yet\n");
    return 2;
}
