/* Small helpers shared by the commands. */
#include "engine/cli.h"
#include "engine/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/model.h"
#include "offload/policy.h"

bool cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return true;
    }
    return false;
}

int cli_fail(const char *cmd, int status) {
    const char *msg = st_last_error();
    fprintf(stderr, "strata %s: %s\n", cmd, *msg ? msg : st_status_str(status));
    return 1;
}

bool cli_int(const char *cmd, const char *opt, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "strata %s: %s must be an integer %lld..%lld, not '%s'\n", cmd, opt, lo, hi, v);
        return false;
    }
    *out = x;
    return true;
}

bool cli_spill_dir(const char *cmd, const char *dir) {
    struct stat st;
    const char *why = stat(dir, &st) ? strerror(errno) : !S_ISDIR(st.st_mode) ? "not a directory"
                                                      : access(dir, W_OK | X_OK) ? strerror(errno) : NULL;
    if (why) fprintf(stderr, "strata %s: --kv-spill %s: expected a writable directory: %s\n", cmd, dir, why);
    return !why;
}

bool cli_kv_size(const char *cmd, const char *opt, const char *v, uint64_t *out) {
    if (st_parse_size(v, 0, opt, out)) { fprintf(stderr, "strata %s: %s\n", cmd, st_last_error()); return false; }
    const char *why = !*out ? "must be more than 0" : !strcmp(opt, "--kv-page") && *out % 4096 ? "must be a multiple of 4 KiB" : NULL;
    if (why) fprintf(stderr, "strata %s: %s %s: %s\n", cmd, opt, v, why);
    return !why;
}

bool cli_numa(const char *cmd, const char *v, int *numa) {
    char *end;
    long node = strtol(v, &end, 10);
    if (!strcmp(v, "auto")) *numa = 0;
    else if (!strcmp(v, "off")) *numa = -1;
    else if (*v && !*end && node >= 0 && node < 1024) *numa = (int)node + 1;
    else { fprintf(stderr, "strata %s: --numa must be auto, off or a node number, not '%s'\n", cmd, v); return false; }
    return true;
}

bool cli_numerics(const char *cmd, const char *v, st_numerics *numerics) {
    if (!strcmp(v, "official")) *numerics = ST_NUMERICS_OFFICIAL;
    else if (!strcmp(v, "reference")) *numerics = ST_NUMERICS_REFERENCE;
    else { fprintf(stderr, "strata %s: --numerics must be official or reference, not '%s'\n", cmd, v); return false; }
    return true;
}

int64_t cli_text_vocab(const char *cmd, int64_t model_vocab, const struct st_tokenizer *tok) {
    const int64_t n = tok ? st_tokenizer_vocab_size(tok) : model_vocab;
    if (n >= model_vocab) return model_vocab;
    ST_WARN("%s: the model's vocabulary (%lld ids) is larger than its tokenizer's (%lld): the ids above "
            "have no text and are never sampled", cmd, (long long)model_vocab, (long long)n);
    return n;
}

const char cli_tier_help[] =
    "  --dram-budget SIZE   DRAM the weights may hold (e.g. 40G, a percentage is refused): what stays after\n"
    "                       the attention/shared/embedding weights caches routed experts, the rest\n"
    "                       streams from the checkpoint with O_DIRECT (default: no limit when every weight\n"
    "                       fits in 90% of the memory available, else that 90%: see strata info);\n"
    "                       unlimited: never stream, the page cache serves the mapped checkpoint\n"
    "  --expert-cache SIZE  DRAM for the routed-expert cache itself (instead of --dram-budget)\n"
    "  --gpu-mem SIZE       GPU tier: device memory for routed experts (slots of the largest) and their\n"
    "                       buffers, a hard limit; hits run on the GPU, misses on the CPU and are then\n"
    "                       copied in (default: no GPU tier; without a GPU: an info line, DRAM/NVMe only).\n"
    "                       STRATA_GPU=emulate (tests, debugging): a host-memory stand-in device with\n"
    "                       deferred work; STRATA_GPU=off: none\n"
    "  --numa auto|off|N    expert cache and threads: auto (default) every NUMA node, each node's experts\n"
    "                       in its memory and computed by its threads; off: no binding; N: all on node N\n"
    "  --prefetch on|off    predict the next layer's experts from the router (default on)\n"
    "  --cache-policy P     lru (default), lfu or lfru\n"
    "  --io-depth N         reads in flight (default 32)\n";

int cli_tier_option(const char *cmd, const char *o, const char *v, st_model_opts *opts) {
    const bool ours = !strcmp(o, "--dram-budget") || !strcmp(o, "--expert-cache") || !strcmp(o, "--gpu-mem") || !strcmp(o, "--numa") ||
                      !strcmp(o, "--prefetch") || !strcmp(o, "--cache-policy") || !strcmp(o, "--io-depth");
    if (!ours) return 0;
    if (!v) { fprintf(stderr, "strata %s: %s needs a value\n", cmd, o); return -1; }
    if (!strcmp(o, "--dram-budget") && !strcmp(v, "unlimited")) {
        opts->dram_budget = 0;
        opts->dram_unlimited = true;
    } else if (!strcmp(o, "--dram-budget") || !strcmp(o, "--expert-cache") || !strcmp(o, "--gpu-mem")) {
        uint64_t bytes;
        if (st_parse_size(v, 0, o, &bytes)) { fprintf(stderr, "strata %s: %s\n", cmd, st_last_error()); return -1; }
        *(!strcmp(o, "--dram-budget") ? &opts->dram_budget : !strcmp(o, "--gpu-mem") ? &opts->gpu_mem : &opts->expert_cache) = bytes;
    } else if (!strcmp(o, "--numa")) {
        if (!cli_numa(cmd, v, &opts->numa)) return -1;
    } else if (!strcmp(o, "--prefetch")) {
        if (strcmp(v, "on") && strcmp(v, "off")) { fprintf(stderr, "strata %s: --prefetch on|off, not '%s'\n", cmd, v); return -1; }
        opts->no_prefetch = !strcmp(v, "off");
    } else if (!strcmp(o, "--cache-policy")) {
        st_policy_kind k;
        if (st_policy_parse(v, &k) || k == ST_POLICY_BELADY || k == ST_POLICY_HOTSET) {
            st_error_clear();
            fprintf(stderr, "strata %s: --cache-policy must be lru, lfu or lfru, not '%s'\n", cmd, v);
            return -1;
        }
        opts->cache_policy = (int)k;
    } else {
        long long x;
        if (!cli_int(cmd, o, v, 1, 4096, &x)) return -1;
        opts->io_depth = (int)x;
    }
    return 1;
}
