/* The qplug subcommands; each lives in cli/cmd_<name>.c and returns the
 * process exit code. */
#ifndef QPLUG_CLI_COMMANDS_H
#define QPLUG_CLI_COMMANDS_H

int qplug_cmd_plan(int argc, char **argv);
int qplug_cmd_load(int argc, char **argv);
int qplug_cmd_run(int argc, char **argv);
int qplug_cmd_synth(int argc, char **argv);
int qplug_cmd_bench(int argc, char **argv);

#endif
