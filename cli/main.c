/* qplug: the command-line tool. Dispatches to one subcommand. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"plan", qplug_cmd_plan, "--checkpoint DIR [--policy FILE] [--json]"},
    {"load", qplug_cmd_load, "--checkpoint DIR [--policy FILE] [--device cpu|cuda]"},
    {"run", qplug_cmd_run,
     "--checkpoint DIR [--policy FILE] [--device cpu|cuda] [--precision reference|native] "
     "(--tokens 1,2,3 | --prompt-file FILE) [--logits OUT.safetensors] [--generate N] "
     "[--speculative mtp] [--threads N] [--compare-reference]"},
    {"synth", qplug_cmd_synth, "--preset tiny|flash-shapes --format bf16|flash|flash-base|nvfp4 --out DIR [--seed N]"},
    {"bench", qplug_cmd_bench, "[--plugin P] [--shapes flash|pro] [--json OUT]"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: qplug COMMAND [options]\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  qplug %-6s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "qplug: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
