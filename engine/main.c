/* strata: the command-line entry point. Dispatches to one function per command
 * (engine/cli.h); lists only commands that work. */
#include <stdio.h>
#include <string.h>

#include "base/base.h"
#include "engine/cli.h"

static const st_command commands[] = {
    {"info", "describe this machine: CPU features, cores, NUMA, huge pages, io_uring, GPUs, libraries", cmd_info},
    {"synth", "write a random-weight V4 checkpoint (presets tiny, mini, flash-2l)", cmd_synth},
    {"logits", "logits at every position for token ids", cmd_logits},
    {"run", "generate tokens and report prefill/decode speed", cmd_run},
    {"plan", "weight and KV-cache bytes of a model from its config (per layer kind, vs V3.2)", cmd_plan},
    {"batch", "JSONL prompts to JSONL results, resumable after a crash", cmd_batch},
    {"chat", "interactive chat with line editing, /think, /reset, /stats", cmd_chat},
    {"tokenize", "token ids of a text or file with a model's tokenizer", cmd_tokenize},
    {"detokenize", "text of token ids with a model's tokenizer", cmd_detokenize},
    {"convert", "checkpoint to pack: 4096-aligned extents, one per routed expert, checksummed manifest", cmd_convert},
    {"inspect", "what a pack holds, bytes per tensor class; --verify checks every checksum", cmd_inspect},
    {"bench", "benchmarks (kernels) with ratios to limits measured in the same run", cmd_bench},
};

static void usage(FILE *f) {
    fprintf(f, "strata %s: run DeepSeek-V4-class MoE models with tiered offload\n\n", st_version());
    fprintf(f, "usage: strata COMMAND [options]     (strata COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < ST_ARRAY_LEN(commands); i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment: STRATA_CPU=generic|avx2|avx512  STRATA_THREADS=N  STRATA_LOG=error|warn|info|debug\n"
               "             STRATA_GPU=emulate|cuda|off (the device of --gpu-mem; emulate: host memory, tests/debug)\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) { printf("strata %s\n", st_version()); return 0; }
    for (size_t i = 0; i < ST_ARRAY_LEN(commands); i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "strata: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
