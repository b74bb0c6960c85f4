/* `strata plan`: what a model costs, from its config alone: weight bytes by
 * class and KV bytes per layer kind for a context length, against V3.2's MLA
 * cache; then the placement plan over the tiers (offload/plan.h) for the given
 * budgets and the measured (or given) bandwidths, with the predicted decode
 * tokens per second. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model.h"
#include "engine/cli.h"
#include "engine/config.h"
#include "engine/kv_plan.h"
#include "engine/tensor_names.h"
#include "io/pack.h"
#include "io/uring.h"
#include "offload/plan.h"
#include "bench/bench.h"
#include "cpu/pool.h"
#include <unistd.h>

/* NVMe read bandwidth of the model's largest weight file: 4 MiB O_DIRECT reads,
 * 16 in flight, spread over the file, up to 512 MiB. 0 when there is no file. */
static double measure_nvme(const char *model) {
    st_config cfg;
    if (st_config_load(model, &cfg)) { st_error_clear(); return 0; }
    st_checkpoint *ck;
    double bw = 0;
    if (st_checkpoint_open(model, &cfg, &ck)) { st_error_clear(); st_config_free(&cfg); return 0; }
    struct st_pack *pk = st_checkpoint_pack(ck);
    st_sft *sf = st_checkpoint_files(ck);
    int nf = pk ? st_pack_file_count(pk) : st_sft_shard_count(sf), best = 0;
    uint64_t best_size = 0;
    for (int f = 0; f < nf; f++) {
        uint64_t sz = pk ? st_pack_file_size(pk, f) : st_sft_shard_size(sf, f);
        if (sz > best_size) { best_size = sz; best = f; }
    }
    const char *path = pk ? st_pack_file_path(pk, best) : st_sft_shard_path(sf, best);
    enum { CHUNK = 4 << 20, DEPTH = 16 };
    st_io *io;
    st_io_options o = {.queue_depth = DEPTH, .buffer_bytes = (size_t)CHUNK * DEPTH};
    if (best_size >= 2 * (uint64_t)CHUNK && !st_io_open(&path, 1, &o, &io)) {
        size_t have;
        char *buf = st_io_buffer(io, &have);
        uint64_t n = ST_MIN((uint64_t)128, best_size / CHUNK - 1), step = (best_size / CHUNK - 1) / n, done = 0;
        double t0 = st_time_s();
        st_io_completion c[DEPTH];
        for (uint64_t i = 0; i < n || st_io_outstanding(io);) {
            while (i < n && st_io_outstanding(io) < DEPTH) {
                st_io_read r = {.file = 0, .offset = (i * step) * (uint64_t)CHUNK, .length = CHUNK,
                                .dst = buf + (size_t)(i % DEPTH) * CHUNK, .tag = i};
                if (st_io_submit(io, &r, 1)) { n = i; break; }
                i++;
            }
            int k = st_io_wait(io, c, DEPTH, 1, 1000);
            for (int j = 0; j < k; j++) done += c[j].status ? 0 : c[j].bytes;
            if (k <= 0 && !st_io_outstanding(io)) break;
        }
        double t = st_time_s() - t0;
        bw = t > 0 && st_io_file_direct(io, 0) ? (double)done / t : 0; /* buffered reads measure the page cache */
        st_io_close(io);
    }
    st_error_clear();
    st_checkpoint_close(ck);
    st_config_free(&cfg);
    return bw;
}

static const char *kind_key[3] = {"window", "csa", "hca"};

int cmd_plan(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata plan --model DIR|config.json [--ctx N] [--kv-dtype official|f32] [budgets] [--json]\n\n"
               "Weight bytes by class and KV-cache bytes for N tokens of context (default 1M),\n"
               "per layer kind, from config.json alone (no weights needed), with the comparison\n"
               "to a DeepSeek-V3.2 MLA cache of the same context.\n"
               "  --ctx N        tokens: 4096, 64K, 1M (K and M are 1024 and 1048576)\n"
               "  --dram-budget SIZE, --gpu-mem SIZE   tier budgets (default: 90%% of available DRAM, no GPU)\n"
               "  --dram-bw G, --nvme-bw G, --gpu-bw G  bandwidths in GB/s (default: DRAM and the model's\n"
               "                 weight file measured now; NVMe 3 GB/s assumed without weights)\n");
        return 0;
    }
    const char *model = NULL;
    uint64_t ctx = 1048576, gpu_mem = 0, dram_budget = 0;
    double bw[ST_TIER_COUNT] = {0};
    bool json = false, f32 = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--json")) { json = true; continue; }
        if (!v) { fprintf(stderr, "strata plan: '%s' needs a value (strata plan --help)\n", o); return 2; }
        if (!strcmp(o, "--model")) model = v;
        else if (!strcmp(o, "--ctx")) {
            if (st_parse_size(v, 0, "--ctx", &ctx) || ctx == 0) { fprintf(stderr, "strata plan: --ctx %s is not a token count\n", v); return 2; }
        } else if (!strcmp(o, "--kv-dtype")) {
            if (strcmp(v, "official") && strcmp(v, "f32")) { fprintf(stderr, "strata plan: --kv-dtype official|f32\n"); return 2; }
            f32 = !strcmp(v, "f32");
        } else if (!strcmp(o, "--gpu-mem") || !strcmp(o, "--dram-budget")) {
            uint64_t b;
            if (st_parse_size(v, 0, o, &b)) { fprintf(stderr, "strata plan: %s\n", st_last_error()); return 2; }
            *(!strcmp(o, "--gpu-mem") ? &gpu_mem : &dram_budget) = b;
        } else if (!strcmp(o, "--gpu-bw") || !strcmp(o, "--dram-bw") || !strcmp(o, "--nvme-bw")) {
            double g = strtod(v, NULL);
            if (!(g > 0)) { fprintf(stderr, "strata plan: %s wants GB/s > 0, not '%s'\n", o, v); return 2; }
            bw[!strcmp(o, "--gpu-bw") ? ST_TIER_GPU : !strcmp(o, "--dram-bw") ? ST_TIER_DRAM : ST_TIER_NVME] = g * 1e9;
        } else if (!strcmp(o, "--numa")) {
            /* accepted for symmetry with run: the plan counts bytes, not nodes */
        } else { fprintf(stderr, "strata plan: unknown option '%s' (strata plan --help)\n", o); return 2; }
        i++;
    }
    if (!model) { fprintf(stderr, "strata plan: --model DIR is required\n"); return 2; }
    st_config cfg;
    int rc = st_config_load(model, &cfg);
    if (rc) return cli_fail("plan", rc);
    st_kv_plan kv;
    st_weight_plan w;
    st_kv_plan_compute(&cfg, (int64_t)ctx, f32, &kv);
    if ((rc = st_weight_plan_compute(&cfg, &w))) { st_config_free(&cfg); return cli_fail("plan", rc); }
    /* tiers: budgets (default DRAM: 90% of what is available now), bandwidths measured unless given */
    bool measured[ST_TIER_COUNT] = {false, !bw[ST_TIER_DRAM], !bw[ST_TIER_NVME]};
    if (!dram_budget) dram_budget = st_model_default_dram_budget(NULL); /* as runs default to (strata info) */
    if (!bw[ST_TIER_DRAM]) {
        st_pool *pool = NULL;
        if (!st_pool_new(0, true, &pool)) bw[ST_TIER_DRAM] = bench_dram_read_gbs(pool, 256u << 20) * 1e9;
        st_pool_free(pool);
        if (!(bw[ST_TIER_DRAM] > 0)) { bw[ST_TIER_DRAM] = 20e9; measured[ST_TIER_DRAM] = false; }
    }
    if (!bw[ST_TIER_NVME] && !(bw[ST_TIER_NVME] = measure_nvme(model))) { bw[ST_TIER_NVME] = 3e9; measured[ST_TIER_NVME] = false; }
    if (!bw[ST_TIER_GPU]) bw[ST_TIER_GPU] = 1e12;
    st_plan_input pin = {.budget = {gpu_mem, dram_budget, 0}, .bandwidth = {bw[0], bw[1], bw[2]}};
    st_plan_input_from_model(&cfg, &w, &kv, &pin);
    st_plan pl;
    int prc = st_plan_compute(&pin, &pl);
    if (json) {
        cJSON *o = cJSON_CreateObject(), *k = cJSON_AddObjectToObject(o, "kv"), *bk = cJSON_AddObjectToObject(k, "by_kind");
        cJSON_AddNumberToObject(o, "ctx", (double)ctx);
        cJSON_AddStringToObject(k, "dtype", f32 ? "f32" : "official");
        cJSON_AddNumberToObject(k, "total_bytes", (double)kv.total_bytes);
        for (int i = 0; i < 3; i++) {
            cJSON *e = cJSON_AddObjectToObject(bk, kind_key[i]);
            cJSON_AddNumberToObject(e, "layers", kv.n_layers[i]);
            cJSON_AddNumberToObject(e, "bytes", (double)kv.kind_bytes[i]);
        }
        cJSON_AddNumberToObject(k, "window_bytes", (double)kv.window_bytes);
        cJSON_AddNumberToObject(k, "entry_bytes", kv.entry_bytes);
        cJSON_AddNumberToObject(k, "index_key_bytes", kv.index_key_bytes);
        cJSON_AddNumberToObject(k, "v32_mla_bytes", (double)kv.v32_mla_bytes);
        cJSON_AddNumberToObject(k, "same_depth_mla_bytes", (double)kv.same_depth_mla_bytes);
        cJSON *wj = cJSON_AddObjectToObject(o, "weights");
        cJSON_AddNumberToObject(wj, "total_bytes", (double)w.total);
        cJSON_AddNumberToObject(wj, "routed_experts", (double)w.routed);
        cJSON_AddNumberToObject(wj, "one_routed_expert", (double)w.routed_one);
        cJSON_AddNumberToObject(wj, "shared_experts", (double)w.shared);
        cJSON_AddNumberToObject(wj, "attention", (double)w.attention);
        cJSON_AddNumberToObject(wj, "embed_head", (double)w.embed_head);
        cJSON_AddNumberToObject(wj, "other", (double)w.other);
        cJSON *pj = cJSON_AddObjectToObject(o, "plan");
        if (prc) cJSON_AddStringToObject(pj, "error", st_last_error());
        else {
            cJSON *tiers = cJSON_AddArrayToObject(pj, "tiers");
            for (int t = 0; t < ST_TIER_COUNT; t++) {
                if (t == ST_TIER_GPU && !gpu_mem) continue;
                cJSON *tj = cJSON_CreateObject();
                cJSON_AddStringToObject(tj, "tier", st_tier_name((st_tier_kind)t));
                cJSON_AddNumberToObject(tj, "budget_bytes", (double)pin.budget[t]);
                cJSON_AddNumberToObject(tj, "bytes", (double)pl.bytes[t]);
                cJSON_AddNumberToObject(tj, "routed_experts", (double)pl.experts[t]);
                cJSON_AddNumberToObject(tj, "read_per_token_bytes", pl.read[t]);
                cJSON_AddNumberToObject(tj, "bandwidth_bytes_s", bw[t]);
                cJSON_AddBoolToObject(tj, "bandwidth_measured", measured[t]);
                cJSON_AddItemToArray(tiers, tj);
            }
            cJSON *cj = cJSON_AddObjectToObject(pj, "pinned");
            for (int c = 0; c < ST_PLAN_CLASSES; c++) cJSON_AddStringToObject(cj, st_plan_class_name(c), st_tier_name((st_tier_kind)pl.class_tier[c]));
            cJSON_AddNumberToObject(pj, "expert_cache_bytes", (double)pl.expert_cache_bytes);
            cJSON_AddNumberToObject(pj, "fast_tier_share", pl.fast_share);
            cJSON_AddNumberToObject(pj, "decode_tok_s", pl.tok_s);
            cJSON_AddNumberToObject(pj, "decode_tok_s_no_overlap", pl.tok_s_serial);
            cJSON_AddNumberToObject(pj, "decode_tok_s_head_serial", pl.tok_s_dependent);
            cJSON_AddNumberToObject(pj, "decode_tok_s_predicted", pl.tok_s_dependent);
        }
        char *t = cJSON_Print(o);
        puts(t);
        free(t);
        cJSON_Delete(o);
    } else {
        char a[32], b[32];
        printf("model: %lld layers (+%d MTP), dim %lld, %d routed experts\n", (long long)cfg.n_layers, cfg.n_mtp_layers,
               (long long)cfg.dim, cfg.n_routed_experts);
        printf("weights: %s  (routed experts %s, ", st_fmt_size(w.total, a, sizeof a), st_fmt_size(w.routed, b, sizeof b));
        printf("one expert %s, ", st_fmt_size(w.routed_one, a, sizeof a));
        printf("shared %s, ", st_fmt_size(w.shared, a, sizeof a));
        printf("attention %s, ", st_fmt_size(w.attention, a, sizeof a));
        printf("embed+head %s)\n", st_fmt_size(w.embed_head, a, sizeof a));
        printf("KV cache at %llu tokens (%s layout: %.0f B an entry, %.0f B an indexer key):\n", (unsigned long long)ctx,
               f32 ? "f32" : "official", kv.entry_bytes, kv.index_key_bytes);
        static const char *names[3] = {"window-only", "CSA", "HCA"};
        for (int i = 0; i < 3; i++)
            printf("  %-12s %3d layers  %s\n", names[i], kv.n_layers[i], st_fmt_size(kv.kind_bytes[i], a, sizeof a));
        printf("  %-12s %3s         %s\n", "windows", "", st_fmt_size(kv.window_bytes, a, sizeof a));
        printf("  total                   %s\n", st_fmt_size(kv.total_bytes, a, sizeof a));
        printf("V3.2 MLA cache at the same context: %s (this model: %.1f%% of it); with this model's layer count: %s\n",
               st_fmt_size(kv.v32_mla_bytes, a, sizeof a), 100.0 * (double)kv.total_bytes / (double)kv.v32_mla_bytes,
               st_fmt_size(kv.same_depth_mla_bytes, b, sizeof b));
        if (prc) {
            printf("placement: %s\n", st_last_error());
        } else {
            printf("placement (budgets: %s%s DRAM %s; NVMe the rest):\n", gpu_mem ? "GPU " : "",
                   gpu_mem ? st_fmt_size(gpu_mem, a, sizeof a) : "", st_fmt_size(dram_budget, b, sizeof b));
            for (int t = 0; t < ST_TIER_COUNT; t++) {
                if (t == ST_TIER_GPU && !gpu_mem) continue;
                char c1[32], c2[32];
                printf("  %-5s holds %10s: %6lld routed experts", st_tier_name((st_tier_kind)t), st_fmt_size(pl.bytes[t], c1, sizeof c1),
                       (long long)pl.experts[t]);
                for (int c = 0; c < ST_PLAN_CLASSES; c++)
                    if (pl.class_tier[c] == t && t != ST_TIER_NVME) printf(", %s", st_plan_class_name(c));
                printf("; reads %s/token at %.1f GB/s (%s)\n", st_fmt_size((uint64_t)pl.read[t], c2, sizeof c2), bw[t] / 1e9,
                       measured[t] ? "measured" : t == ST_TIER_GPU ? "assumed" : "given or assumed");
            }
            printf("  expert cache in DRAM: %s; routed-expert reads served by GPU/DRAM: %.1f%% (uniform use)\n",
                   st_fmt_size(pl.expert_cache_bytes, a, sizeof a), 100.0 * pl.fast_share);
            printf("predicted decode: %.2f tok/s (memory-bound cost model: prefetch overlaps every tier's reads but the\n"
                   "                  head's, which must pick the next token before its experts can be read)\n"
                   "                  %.2f tok/s if the head overlapped too (a bound: the next token known early)\n"
                   "                  %.2f tok/s without prefetch (every read in turn)\n",
                   pl.tok_s_dependent, pl.tok_s, pl.tok_s_serial);
        }
    }
    st_config_free(&cfg);
    return 0;
}
