/* The `strata` command line: one function per command, each handling its own
 * --help. Commands return a process exit code (0 ok, 1 error, 2 usage). */
#ifndef ST_ENGINE_CLI_H
#define ST_ENGINE_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/layer.h" /* st_numerics */

typedef struct st_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} st_command;

int cmd_info(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_batch(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

/* True if argv holds -h or --help (before any "--"). */
bool cli_wants_help(int argc, char **argv);
/* Print "strata: <cmd>: <message>" and st_last_error() for a failed status; returns 1. */
int cli_fail(const char *cmd, int status);
/* Strict integer option value: all of v is a decimal integer in lo..hi. On
 * failure prints "strata <cmd>: <opt> must be an integer lo..hi, not 'v'"
 * and returns false (the caller returns 2). */
bool cli_int(const char *cmd, const char *opt, const char *v, long long lo, long long hi, long long *out);
/* --kv-spill DIR: an existing, writable directory; else prints why and returns false. */
bool cli_spill_dir(const char *cmd, const char *dir);
/* A KV tiering size (--kv-budget, --kv-dram, --kv-page): parses, more than 0, and for
 * --kv-page a multiple of 4 KiB; else prints why and returns false. */
bool cli_kv_size(const char *cmd, const char *opt, const char *v, uint64_t *out);
/* --numa auto|off|N as st_model_opts.numa (0 auto, -1 off, N + 1); else prints why, false. */
bool cli_numa(const char *cmd, const char *v, int *numa);
/* --numerics official|reference; else prints why and returns false. */
bool cli_numerics(const char *cmd, const char *v, st_numerics *numerics);
struct st_model_opts;
/* The tier options of every command that runs a model (run, logits, chat, batch):
 * --dram-budget, --expert-cache, --numa, --prefetch, --cache-policy, --io-depth,
 * into opts. 1: o is one of them and its value v was taken; 0: o is not one of
 * them; -1: a missing or bad value (said on stderr: the caller returns 2). */
int cli_tier_option(const char *cmd, const char *o, const char *v, struct st_model_opts *opts);
/* Their --help lines (22-column option field, as the commands' own). */
extern const char cli_tier_help[];
struct st_tokenizer;
/* The ids a command that writes text may sample: the model's vocabulary, or
 * the tokenizer's when that is smaller (a config whose vocab_size exceeds it:
 * ids with no text are never picked; warned once). tok NULL: the model's. */
int64_t cli_text_vocab(const char *cmd, int64_t model_vocab, const struct st_tokenizer *tok);

#endif
