/* `strata bench e2e` (default section): routed-expert streaming against its
 * baselines in one run. Each configuration is a child `strata run --json`
 * (this same binary) on the same seeded prompt, greedy, so every run routes
 * the same experts:
 *   (a) every weight in DRAM: no budget, the checkpoint pre-read into the page
 *       cache first (warm), in an unlimited memory cgroup that measures the
 *       process's own peak memory (the heap headroom of (c));
 *   per budget B (a share of the routed-expert bytes), each from a cold cache:
 *   (b) the expert cache of B with --prefetch off (loads on demand);
 *       streaming with prefetch on (the default);
 *   (c) plain mmap of the checkpoint (no budget: the page cache does the work,
 *       as llama.cpp), in a memory cgroup limited to dense bytes + B + heap.
 * Limits measured in the same run: DRAM read bandwidth (bench/dram.c) and NVMe
 * reads of the checkpoint's own expert extents (io_uring, O_DIRECT, one expert
 * per read, depth 32). These feed the placement plan's decode cost model
 * (offload/plan.h). Prints the goals with PASS/FAIL. Never edits the engine:
 * it measures whatever the scheduler does. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/bench.h"
#include "bench/memcg.h"
#include "cpu/pool.h"
#include "engine/cli.h"
#include "engine/config.h"
#include "engine/kv_plan.h"
#include "engine/tensor_names.h"
#include "io/pack.h"
#include "io/safetensors.h"
#include "io/uring.h"
#include "offload/plan.h"

enum { MAX_BUDGETS = 8, NVME_DEPTH = 32 };

typedef struct off_args {
    const char *model;
    int budgets[MAX_BUDGETS], n_budgets; /* percent of the routed-expert bytes */
    int n_decode, n_prompt, threads, reps;
    uint64_t headroom;                  /* heap allowance of the mmap cgroup (default 64 MiB) */
    double nvme_seconds;
    bool no_mmap;
} off_args;

static void usage(FILE *f) {
    fprintf(f, "usage: strata bench e2e --model DIR [options]       (streaming vs baselines, default)\n"
               "       strata bench e2e --roofline --model DIR [...] (all-DRAM decode vs DRAM bandwidth, prefill;\n"
               "                                                    strata bench e2e --roofline --help)\n\n"
               "Decode with the routed experts streamed through a DRAM cache of a share of their bytes,\n"
               "against (a) every weight in DRAM (warm), (b) the same cache with prefetch off, (c) plain mmap\n"
               "of the checkpoint with the page cache limited by a memory cgroup to the same memory. Each\n"
               "configuration is a child `strata run --json`; streaming and mmap runs start with the\n"
               "checkpoint's pages dropped from the page cache. The cost model (offload/plan.h) is fed the\n"
               "DRAM and NVMe bandwidths measured in this run.\n"
               "  --model DIR       checkpoint directory\n"
               "  --budgets P,Q     expert cache sizes in percent of the routed-expert bytes (default 25,50)\n"
               "  -n N              tokens generated per run (default 48; N-1 decode steps are timed)\n"
               "  --prompt N        prompt tokens (seeded random ids, default 16)\n"
               "  --threads N       threads of every run (default: one per core)\n"
               "  --reps R          run every configuration R times, keep the fastest (default 1; the\n"
               "                    machine's load average is printed at the start and the end)\n"
               "  --headroom SIZE   memory for the process's own heap on top of dense + cache in the mmap\n"
               "                    cgroup (default 64M; the all-DRAM run's peak in its own cgroup is printed)\n"
               "  --nvme-seconds S  time spent measuring expert reads (default 3)\n"
               "  --no-mmap         skip the mmap baseline\n");
}

static int parse(int argc, char **argv, off_args *a) {
    memset(a, 0, sizeof *a);
    a->budgets[0] = 25, a->budgets[1] = 50, a->n_budgets = 2;
    a->n_decode = 48, a->n_prompt = 16, a->nvme_seconds = 3, a->reps = 1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--no-mmap")) { a->no_mmap = true; continue; }
        if (!v) { fprintf(stderr, "strata bench e2e: unknown option or missing value '%s'\n", o); return 2; }
        i++;
        if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "-n")) a->n_decode = atoi(v);
        else if (!strcmp(o, "--prompt")) a->n_prompt = atoi(v);
        else if (!strcmp(o, "--threads")) a->threads = atoi(v);
        else if (!strcmp(o, "--reps")) a->reps = atoi(v);
        else if (!strcmp(o, "--nvme-seconds")) a->nvme_seconds = atof(v);
        else if (!strcmp(o, "--headroom")) {
            if (st_parse_size(v, 0, "--headroom", &a->headroom)) { fprintf(stderr, "strata bench e2e: %s\n", st_last_error()); return 2; }
        } else if (!strcmp(o, "--budgets")) {
            a->n_budgets = 0;
            for (const char *p = v; *p;) {
                char *end;
                long x = strtol(p, &end, 10);
                if (end == p || x < 1 || x > 99 || a->n_budgets == MAX_BUDGETS) {
                    fprintf(stderr, "strata bench e2e: --budgets wants up to %d percentages 1..99 like 25,50, not '%s'\n", MAX_BUDGETS, v);
                    return 2;
                }
                a->budgets[a->n_budgets++] = (int)x;
                p = *end == ',' ? end + 1 : end;
                if (*end && *end != ',') { fprintf(stderr, "strata bench e2e: --budgets: junk in '%s'\n", v); return 2; }
            }
        } else { fprintf(stderr, "strata bench e2e: unknown option '%s'\n", o); return 2; }
    }
    if (!a->model) { fprintf(stderr, "strata bench e2e: --model DIR is required\n"); return 2; }
    if (a->n_decode < 3 || a->n_prompt < 1 || a->threads < 0 || !(a->nvme_seconds > 0) || !a->n_budgets || a->reps < 1) {
        fprintf(stderr, "strata bench e2e: -n >= 3, --prompt >= 1, --threads >= 0, --nvme-seconds > 0, --reps >= 1, "
                        "--budgets not empty\n");
        return 2;
    }
    return 0;
}

/* ---- the model's shapes and files ------------------------------------------------ */

typedef struct model_info {
    st_config cfg;
    st_weight_plan w;
    st_plan_input pin;        /* budgets and bandwidths filled per prediction */
    uint64_t dense;           /* dense weights resident in every configuration: all but the routed experts
                                 and the embedding table (one row per token) */
    uint64_t routed;          /* all routed experts */
    const char **paths;       /* the checkpoint's data files */
    int n_files;
    st_checkpoint *ck;
} model_info;

/* The plan's inputs from the config, as `strata plan` makes them. */
static void fill_plan_input(model_info *mi, int64_t ctx) {
    st_kv_plan kv;
    st_kv_plan_compute(&mi->cfg, ctx, false, &kv);
    memset(&mi->pin, 0, sizeof mi->pin);
    st_plan_input_from_model(&mi->cfg, &mi->w, &kv, &mi->pin);
}

static int model_info_open(const char *dir, int64_t ctx, model_info *mi) {
    memset(mi, 0, sizeof *mi);
    int rc;
    if ((rc = st_config_load(dir, &mi->cfg))) return rc;
    if ((rc = st_weight_plan_compute(&mi->cfg, &mi->w)) || (rc = st_checkpoint_open(dir, &mi->cfg, &mi->ck))) return rc;
    mi->routed = mi->w.routed;
    fill_plan_input(mi, ctx);
    /* what stays resident of the dense weights: all but the embedding table, of which a token reads one row */
    mi->dense = mi->w.total - mi->w.routed - mi->pin.class_bytes[ST_PLAN_EMBED];
    struct st_pack *pk = st_checkpoint_pack(mi->ck);
    st_sft *sf = st_checkpoint_files(mi->ck);
    mi->n_files = pk ? st_pack_file_count(pk) : st_sft_shard_count(sf);
    if (!(mi->paths = calloc((size_t)mi->n_files, sizeof *mi->paths))) return st_error(ST_ERR_NOMEM, "out of memory");
    for (int f = 0; f < mi->n_files; f++) mi->paths[f] = pk ? st_pack_file_path(pk, f) : st_sft_shard_path(sf, f);
    return 0;
}

static void model_info_close(model_info *mi) {
    free(mi->paths);
    st_checkpoint_close(mi->ck);
    st_config_free(&mi->cfg);
}

/* The plan's decode prediction for an expert cache of cache_bytes (UINT64_MAX: every expert in DRAM). */
static int predict(model_info *mi, uint64_t cache_bytes, double dram_bw, double nvme_bw, st_plan *pl) {
    uint64_t pinned = 0;
    for (int c = 0; c < ST_PLAN_CLASSES; c++) pinned += mi->pin.class_bytes[c];
    mi->pin.budget[ST_TIER_DRAM] = cache_bytes == UINT64_MAX ? pinned + mi->routed + (1ull << 30) : pinned + cache_bytes;
    mi->pin.bandwidth[ST_TIER_DRAM] = dram_bw;
    mi->pin.bandwidth[ST_TIER_NVME] = nvme_bw;
    return st_plan_compute(&mi->pin, pl);
}

/* ---- NVMe: the checkpoint's expert extents ----------------------------------------- */

typedef struct extent { int file; uint64_t offset, length; } extent;

static const char *const piece_names[6] = {"w1.weight", "w1.scale", "w3.weight", "w3.scale", "w2.weight", "w2.scale"};

/* One expert's bytes as one 4096-aligned extent of its file (as the expert stream
 * reads pieces that lie together). ST_ERR_UNSUPPORTED when they do not. */
static int expert_extent(const model_info *mi, int layer, int expert, extent *x) {
    uint64_t lo = UINT64_MAX, hi = 0, sum = 0;
    int file = -1;
    for (int i = 0; i < 6; i++) {
        char name[160];
        snprintf(name, sizeof name, "layers.%d.ffn.experts.%d.%s", layer, expert, piece_names[i]);
        st_tensor_view v;
        int rc = st_checkpoint_locate(mi->ck, name, &v);
        if (rc == ST_ERR_NOT_FOUND && (i & 1)) continue; /* unquantised: no scales */
        if (rc) return rc == ST_ERR_NOT_FOUND ? st_error(rc, "tensor %s: missing", name) : rc;
        if (file >= 0 && v.shard != file) return st_error(ST_ERR_UNSUPPORTED, "expert %d.%d spans two files", layer, expert);
        file = v.shard;
        lo = ST_MIN(lo, v.file_offset);
        hi = ST_MAX(hi, v.file_offset + v.nbytes);
        sum += v.nbytes;
    }
    if (hi - lo > 2 * sum) return st_error(ST_ERR_UNSUPPORTED, "expert %d.%d: its tensors are not together", layer, expert);
    x->file = file;
    x->offset = lo & ~4095ull;
    x->length = ((hi + 4095) & ~4095ull) - x->offset;
    return 0;
}

typedef struct nvme_result { double gbs, seconds; uint64_t bytes, reads, block; bool direct; } nvme_result;

/* Random experts (seeded order), one O_DIRECT read each, NVME_DEPTH in flight,
 * for about `seconds`. The reads bypass the page cache. */
static int measure_nvme(const model_info *mi, double seconds, nvme_result *r) {
    memset(r, 0, sizeof *r);
    const int L = mi->cfg.n_layers, E = mi->cfg.n_routed_experts, n = L * E;
    extent *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    if (!x) return st_error(ST_ERR_NOMEM, "out of memory");
    int rc = 0;
    for (int i = 0; !rc && i < n; i++) {
        rc = expert_extent(mi, i / E, i % E, &x[i]);
        r->block = ST_MAX(r->block, x[i].length);
    }
    uint64_t s = 0x2545F4914F6CDD1Dull;
    for (int i = n - 1; !rc && i > 0; i--) { /* shuffle */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int j = (int)(s % (uint64_t)(i + 1));
        extent t = x[i]; x[i] = x[j]; x[j] = t;
    }
    st_io *io = NULL;
    st_io_options o = {.queue_depth = NVME_DEPTH, .buffer_bytes = (size_t)r->block * NVME_DEPTH};
    if (!rc) rc = st_io_open(mi->paths, mi->n_files, &o, &io);
    int kept = 0; /* an extent rounded up past its file's end cannot be read with O_DIRECT: left out */
    for (int i = 0; !rc && i < n; i++)
        if (x[i].offset + x[i].length <= st_io_file_size(io, x[i].file)) x[kept++] = x[i];
    if (!rc) {
        size_t have;
        char *buf = st_io_buffer(io, &have);
        r->direct = true;
        for (int f = 0; f < mi->n_files; f++) r->direct &= st_io_file_direct(io, f);
        int free_slot[NVME_DEPTH], n_free = NVME_DEPTH, next = 0;
        for (int i = 0; i < NVME_DEPTH; i++) free_slot[i] = i;
        st_io_completion c[NVME_DEPTH];
        const double t0 = st_time_s();
        bool stop = false;
        while (!rc) {
            stop = stop || st_time_s() - t0 > seconds;
            while (!stop && n_free && next < kept) {
                const int slot = free_slot[--n_free];
                st_io_read q = {.file = x[next].file, .offset = x[next].offset, .length = x[next].length,
                                .dst = buf + (size_t)slot * r->block, .tag = (uint64_t)slot};
                if ((rc = st_io_submit(io, &q, 1))) break;
                next++;
            }
            if (rc || !st_io_outstanding(io)) break;
            int k = st_io_wait(io, c, NVME_DEPTH, 1, 5000);
            if (k < 0) { rc = k; break; }
            for (int j = 0; j < k; j++) {
                if (c[j].status) { rc = st_error(ST_ERR_IO, "%s", c[j].message); break; }
                r->bytes += c[j].bytes;
                r->reads++;
                free_slot[n_free++] = (int)c[j].tag;
            }
            if (next == kept) stop = true;
        }
        r->seconds = st_time_s() - t0;
        r->gbs = r->seconds > 0 ? (double)r->bytes / r->seconds / 1e9 : 0;
    }
    st_io_close(io);
    free(x);
    return rc;
}

/* ---- one configuration as a child process -------------------------------------------- */

typedef struct run_result {
    bool ok, streamed;
    char why[200];
    double decode_tok_s, prefill_tok_s, decode_s, wall_s;
    int steps;                                /* decode steps timed */
    double needs, hits, late, misses, stall_s, wasted, read, predictions, used; /* decode only */
    uint64_t disk_bytes, peak_rss, cg_peak, resident_at_start, bytes_per_token;
} run_result;

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void parse_run(const char *text, run_result *r) {
    cJSON *js = cJSON_Parse(text);
    const cJSON *gen = js ? cJSON_GetObjectItemCaseSensitive(js, "generated") : NULL;
    if (!js || !cJSON_IsArray(gen)) {
        snprintf(r->why, sizeof r->why, "child printed no run JSON (%.60s)", text);
        cJSON_Delete(js);
        return;
    }
    r->ok = true;
    r->decode_tok_s = jnum(js, "decode_tok_s");
    r->prefill_tok_s = jnum(js, "prefill_tok_s");
    r->peak_rss = (uint64_t)jnum(js, "peak_rss_bytes");
    r->bytes_per_token = (uint64_t)jnum(js, "weight_bytes_per_token");
    r->steps = cJSON_GetArraySize(gen) - 1;
    r->decode_s = r->decode_tok_s > 0 ? r->steps / r->decode_tok_s : 0;
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(js, "experts");
    const cJSON *d = ex ? cJSON_GetObjectItemCaseSensitive(ex, "decode") : NULL;
    if (ex && !d) snprintf(r->why, sizeof r->why, "the run's JSON has no experts.decode (an older strata run?)");
    if (d) {
        r->streamed = true;
        r->needs = jnum(d, "needs"), r->hits = jnum(d, "hits"), r->late = jnum(d, "late"), r->misses = jnum(d, "misses");
        r->stall_s = jnum(d, "stall_s"), r->wasted = jnum(d, "wasted_bytes"), r->read = jnum(d, "bytes_read");
        r->predictions = jnum(d, "predictions"), r->used = jnum(d, "predictions_used");
        if (jnum(d, "seconds") > 0) r->decode_s = jnum(d, "seconds");
    }
    cJSON_Delete(js);
}

/* Runs `strata run` (this binary) with the prompt, in cg when given. */
static void run_child(const off_args *a, const char *ids, uint64_t cache, bool prefetch_off, const bench_memcg *cg,
                      run_result *r) {
    const uint64_t resident = r->resident_at_start; /* measured by the caller just before */
    memset(r, 0, sizeof *r);
    r->resident_at_start = resident;
    char n[16], th[16], cb[32];
    snprintf(n, sizeof n, "%d", a->n_decode);
    snprintf(th, sizeof th, "%d", a->threads);
    snprintf(cb, sizeof cb, "%llu", (unsigned long long)cache);
    const char *argv[20] = {"strata", "run", "--model", a->model, "--ids", ids, "-n", n, "--json"};
    int k = 9;
    if (a->threads) argv[k++] = "--threads", argv[k++] = th;
    if (cache) argv[k++] = "--expert-cache", argv[k++] = cb;
    else argv[k++] = "--dram-budget", argv[k++] = "unlimited"; /* (a) and (c): the mapping, even in a small cgroup */
    if (prefetch_off) argv[k++] = "--prefetch", argv[k++] = "off";
    argv[k] = NULL;
    int fd[2];
    if (pipe2(fd, O_CLOEXEC)) { snprintf(r->why, sizeof r->why, "pipe: %s", strerror(errno)); return; }
    fflush(NULL);
    const double t0 = st_time_s();
    pid_t pid = fork();
    if (pid < 0) { snprintf(r->why, sizeof r->why, "fork: %s", strerror(errno)); close(fd[0]); close(fd[1]); return; }
    if (pid == 0) {
        if (cg && cg->dir[0] && bench_memcg_join(cg)) _exit(126);
        dup2(fd[1], 1);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    size_t len = 0, cap = 1 << 16;
    char *out = malloc(cap);
    ssize_t got;
    while (out && (got = read(fd[0], out + len, cap - len - 1)) != 0) {
        if (got < 0) { if (errno == EINTR) continue; break; }
        len += (size_t)got;
        if (len + 1 == cap) {
            char *t = realloc(out, cap *= 2);
            if (!t) { free(out); out = NULL; }
            out = t;
        }
    }
    close(fd[0]);
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {}
    r->wall_s = st_time_s() - t0;
    r->disk_bytes = (uint64_t)ru.ru_inblock * 512;
    if (cg) r->cg_peak = bench_memcg_peak(cg);
    if (out) out[len] = 0;
    if (WIFSIGNALED(status))
        snprintf(r->why, sizeof r->why, "killed by signal %d%s", WTERMSIG(status),
                 WTERMSIG(status) == SIGKILL && cg ? " (out of memory in its cgroup?)" : "");
    else if (WEXITSTATUS(status) == 126) snprintf(r->why, sizeof r->why, "could not join the memory cgroup");
    else if (WEXITSTATUS(status)) snprintf(r->why, sizeof r->why, "exit status %d (its stderr is above)", WEXITSTATUS(status));
    else if (out) parse_run(out, r);
    else snprintf(r->why, sizeof r->why, "out of memory reading its output");
    free(out);
}

/* ---- the report ----------------------------------------------------------------------- */

static char *mib(uint64_t b, char *buf, size_t n) { snprintf(buf, n, "%.0f MiB", (double)b / 1048576.0); return buf; }

static void print_row(const char *name, const run_result *r, double predicted, double steps) {
    if (!r->ok) { printf("  %-22s failed: %s\n", name, r->why); return; }
    printf("  %-22s %7.2f", name, r->decode_tok_s);
    if (predicted > 0) printf(" %6.3f", r->decode_tok_s / predicted);
    else printf(" %6s", "-");
    if (r->streamed && r->needs > 0)
        printf(" %6.1f%% %6.1f%% %5.1f%% %5.1f%% %6.1f%% %7.1f %6.1f%%", 100 * r->stall_s / r->decode_s,
               100 * r->hits / r->needs, 100 * r->late / r->needs, 100 * r->misses / r->needs,
               r->predictions > 0 ? 100 * r->used / r->predictions : 0, r->read / 1e6 / steps,
               r->read > 0 ? 100 * r->wasted / r->read : 0);
    else
        printf(" %7s %7s %6s %6s %7s %7s %7s", "-", "-", "-", "-", "-", "-", "-");
    printf("   peak %s", mib(r->cg_peak ? r->cg_peak : r->peak_rss, (char[32]){0}, 32));
    printf(", disk %s, cached at start %s, %.0f s\n", mib(r->disk_bytes, (char[32]){0}, 32),
           mib(r->resident_at_start, (char[32]){0}, 32), r->wall_s);
}

static void random_ids(int vocab, int n, char *out, size_t cap) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    size_t len = 0;
    for (int i = 0; i < n && len + 12 < cap; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        len += (size_t)snprintf(out + len, cap - len, "%s%llu", i ? "," : "", (unsigned long long)(x % (uint64_t)vocab));
    }
}

typedef struct budget_runs { run_result off, on, mmap; uint64_t cache, cg_limit; bool mmap_skipped; char skip[240]; } budget_runs;

/* One cold run (the checkpoint's pages dropped first; cg_limit > 0: in a fresh
 * memory cgroup of that limit), kept in *best when it is the first or faster.
 * 0, or the cgroup's error (nothing was run). */
static int run_cold(const off_args *a, const model_info *mi, const char *ids, uint64_t cache, bool prefetch_off,
                    uint64_t cg_limit, bool first, run_result *best) {
    bench_memcg cg;
    int rc = cg_limit ? bench_memcg_create("mmap", cg_limit, &cg) : 0;
    if (rc) return rc;
    run_result r = {.resident_at_start = bench_cache_drop(mi->paths, mi->n_files)};
    run_child(a, ids, cache, prefetch_off, cg_limit ? &cg : NULL, &r);
    if (cg_limit) bench_memcg_remove(&cg);
    if (first || (r.ok && (!best->ok || r.decode_tok_s > best->decode_tok_s))) *best = r;
    return 0;
}

int bench_e2e_offload(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) { usage(stdout); return 0; }
    off_args a;
    int rc = parse(argc, argv, &a);
    if (rc) { usage(stderr); return rc; }
    model_info mi;
    if ((rc = model_info_open(a.model, a.n_prompt + a.n_decode, &mi))) { model_info_close(&mi); return cli_fail("bench e2e", rc); }
    char b1[32], b2[32], b3[32];
    const double t_start = st_time_s(), load0 = bench_load_average();
    /* limits */
    st_pool *pool = NULL;
    double dram = 0;
    if (!(rc = st_pool_new(a.threads, true, &pool))) dram = bench_dram_read_gbs(pool, (size_t)1 << 30) * 1e9;
    const int nth = pool ? st_pool_size(pool) : 0;
    st_pool_free(pool);
    nvme_result nv;
    if (!rc && (rc = measure_nvme(&mi, a.nvme_seconds, &nv))) { model_info_close(&mi); return cli_fail("bench e2e", rc); }
    if (rc || !(dram > 0) || !(nv.gbs > 0)) { model_info_close(&mi); return cli_fail("bench e2e", rc ? rc : st_error(ST_ERR_IO, "bench e2e: no bandwidth measured")); }
    printf("model: %s: %d layers, %d routed experts x %s (top-%d), routed %s, dense resident %s (all other weights but\n"
           "       the embedding table)\n", a.model, mi.cfg.n_layers,
           mi.cfg.n_routed_experts, st_fmt_size(mi.w.routed_one, b1, sizeof b1), mi.cfg.n_activated_experts,
           st_fmt_size(mi.routed, b2, sizeof b2), st_fmt_size(mi.dense, b3, sizeof b3));
    printf("DRAM read: %.2f GB/s (%d threads, best of 5 over 1 GiB)\n", dram / 1e9, nth);
    printf("NVMe read: %.2f GB/s (the checkpoint's expert extents, one %s read per expert, io_uring depth %d, %s, "
           "%llu reads in %.1f s)\n", nv.gbs, st_fmt_size(nv.block, b1, sizeof b1), NVME_DEPTH,
           nv.direct ? "O_DIRECT" : "BUFFERED: the page cache, not the disk", (unsigned long long)nv.reads, nv.seconds);
    const size_t ids_cap = (size_t)a.n_prompt * 12 + 16;
    char *ids = malloc(ids_cap);
    if (!ids) { model_info_close(&mi); return cli_fail("bench e2e", st_error(ST_ERR_NOMEM, "out of memory")); }
    random_ids(mi.cfg.vocab_size, a.n_prompt, ids, ids_cap);
    printf("runs: strata run --ids <%d seeded ids> -n %d --json%s (greedy: every run routes the same experts), "
           "best of %d\n\n", a.n_prompt, a.n_decode, a.threads ? " --threads N" : "", a.reps);
    fflush(stdout);

    /* (a) all in DRAM, warm, in an unlimited cgroup measuring its own memory */
    uint64_t pre = 0;
    double tp = st_time_s();
    if ((rc = bench_cache_preread(mi.paths, mi.n_files, &pre))) { free(ids); model_info_close(&mi); return cli_fail("bench e2e", rc); }
    tp = st_time_s() - tp;
    run_result all = {0};
    bench_memcg probe;
    const bool have_probe = !bench_memcg_create("probe", 0, &probe);
    if (!have_probe) st_error_clear();
    all.resident_at_start = bench_cache_resident(mi.paths, mi.n_files);
    for (int rep = 0; rep < a.reps; rep++) { /* warm: the best of reps */
        run_result r = {.resident_at_start = rep ? bench_cache_resident(mi.paths, mi.n_files) : all.resident_at_start};
        run_child(&a, ids, 0, false, have_probe ? &probe : NULL, &r);
        if (!rep || (r.ok && (!all.ok || r.decode_tok_s > all.decode_tok_s))) all = r;
    }
    uint64_t heap = have_probe ? bench_memcg_peak(&probe) : 0;
    bench_memcg_remove(&probe);
    /* measured again right after (a): this VM's bandwidth drifts over minutes (48 to 67 GB/s seen), and the
       all-DRAM decode was seen reading faster than the first measurement; the limit is the best seen */
    const double dram_first = dram;
    double dram_after = 0;
    if (!st_pool_new(a.threads, true, &pool)) {
        dram_after = bench_dram_read_gbs(pool, (size_t)1 << 30) * 1e9;
        st_pool_free(pool);
    } else {
        st_error_clear();
    }
    dram = ST_MAX(dram, dram_after);
    all.cg_peak = 0; /* the row shows its RSS (the group saw only its heap: the weights were cached before) */
    const uint64_t headroom = a.headroom ? a.headroom : 64ull << 20;

    st_plan pl_all;
    if ((rc = predict(&mi, UINT64_MAX, dram, nv.gbs * 1e9, &pl_all))) { free(ids); model_info_close(&mi); return cli_fail("bench e2e", rc); }
    budget_runs br[MAX_BUDGETS];
    memset(br, 0, sizeof br);
    for (int i = 0; i < a.n_budgets; i++) {
        budget_runs *b = &br[i];
        b->cache = mi.routed / 100 * (uint64_t)a.budgets[i];
        fprintf(stderr, "e2e: budget %d%%: prefetch off, prefetch on%s...\n", a.budgets[i], a.no_mmap ? "" : ", mmap");
        b->cg_limit = mi.dense + b->cache + headroom;
        if (a.no_mmap) b->mmap_skipped = true, snprintf(b->skip, sizeof b->skip, "--no-mmap");
        for (int rep = 0; rep < a.reps; rep++) { /* repetitions interleaved: a slow spell hits every configuration */
            run_cold(&a, &mi, ids, b->cache, true, 0, !rep, &b->off);
            run_cold(&a, &mi, ids, b->cache, false, 0, !rep, &b->on);
            if (!b->mmap_skipped && run_cold(&a, &mi, ids, 0, false, b->cg_limit, !rep, &b->mmap)) {
                b->mmap_skipped = true;
                snprintf(b->skip, sizeof b->skip, "%s", st_last_error());
                st_error_clear();
            }
        }
    }

    printf("(a) all weights in DRAM (no budget; %s pre-read in %.1f s, %s resident at start; peak process memory "
           "in its cgroup %s):\n", st_fmt_size(pre, b1, sizeof b1), tp, mib(all.resident_at_start, b2, sizeof b2),
           have_probe ? mib(heap, b3, sizeof b3) : "not measured (no cgroup)");
    if (heap > mi.dense + headroom) /* resident runs copy the dense weights into their own memory (model_load.c) */
        printf("  note: that is more than the dense weights %s + the mmap cgroup's heap headroom %s (it also counts "
               "pages the run faulted in again); see --headroom\n", mib(mi.dense, b2, sizeof b2), mib(headroom, b1, sizeof b1));
    printf("  %-22s %7s %6s\n", "", "tok/s", "/model");
    print_row("all in DRAM", &all, pl_all.tok_s, 1);
    printf("  cost model: %.1f MB per token from DRAM -> %.2f tok/s (the engine counts %.1f MB of weights per token)\n",
           pl_all.read[ST_TIER_DRAM] / 1e6, pl_all.tok_s, (double)all.bytes_per_token / 1e6);
    const double compute_s = all.ok && all.decode_tok_s > 0 ? 1 / all.decode_tok_s : 0;
    /* the DRAM rate the engine reaches when nothing streams: the cost model's DRAM tier at that rate says
       what streaming costs on top of this engine's compute (the goal uses the measured bandwidth) */
    const double dram_eff = pl_all.read[ST_TIER_DRAM] * (all.ok ? all.decode_tok_s : 0);
    if (dram_eff > 0)
        printf("  achieved/model %.2f: the engine reads its weights at %.2f GB/s of the %.2f GB/s DRAM can give\n"
               "  (DRAM read %.2f GB/s at the start, %.2f right after (a): the cost model uses the better)\n",
               all.decode_tok_s / pl_all.tok_s, dram_eff / 1e9, dram / 1e9, dram_first / 1e9, dram_after / 1e9);
    bool goal_stall = true, goal_model = true, goal_mmap = true, any_mmap = false;
    for (int i = 0; i < a.n_budgets; i++) {
        budget_runs *b = &br[i];
        st_plan pl;
        if (predict(&mi, b->cache, dram, nv.gbs * 1e9, &pl)) { printf("cost model: %s\n", st_last_error()); st_error_clear(); continue; }
        printf("\nbudget %d%%: expert cache %s of %s routed (mmap cgroup limit %s = dense %s + cache + headroom %s)\n",
               a.budgets[i], st_fmt_size(b->cache, b1, sizeof b1), st_fmt_size(mi.routed, b2, sizeof b2),
               mib(b->cg_limit, b3, sizeof b3), mib(mi.dense, (char[32]){0}, 32), mib(headroom, (char[32]){0}, 32));
        printf("  %-22s %7s %6s %7s %7s %6s %6s %7s %7s %7s\n", "", "tok/s", "/model", "stall", "hit", "late", "miss",
               "pred ok", "MB/tok", "waste");
        const double steps_off = b->off.steps > 0 ? b->off.steps : 1, steps_on = b->on.steps > 0 ? b->on.steps : 1;
        print_row("(b) prefetch off", &b->off, pl.tok_s_serial, steps_off);
        print_row("stream, prefetch on", &b->on, pl.tok_s_dependent, steps_on);
        if (b->mmap_skipped) printf("  %-22s skipped: %s\n", "(c) mmap + page cache", b->skip);
        else print_row("(c) mmap + page cache", &b->mmap, 0, 1);
        printf("  cost model (strata plan): %.0f%% of expert reads from DRAM; per token %.1f MB DRAM + %.1f MB NVMe ->\n"
               "    %.2f tok/s predicted (every read overlapped but the head's, which picks the next token first: the goal)\n"
               "    %.2f tok/s if the head overlapped too (a bound needing the next token early; achieved/that %.2f)\n"
               "    %.2f tok/s serial (prefetch off)\n", 100 * pl.fast_share, pl.read[ST_TIER_DRAM] / 1e6,
               pl.read[ST_TIER_NVME] / 1e6, pl.tok_s_dependent, pl.tok_s,
               b->on.ok && pl.tok_s > 0 ? b->on.decode_tok_s / pl.tok_s : 0, pl.tok_s_serial);
        st_plan pe;
        if (dram_eff > 0 && !predict(&mi, b->cache, dram_eff, nv.gbs * 1e9, &pe))
            printf("  cost model at the engine's DRAM rate of (a) (%.2f GB/s): %.2f tok/s predicted (achieved/that %.2f), "
                   "%.2f serial (prefetch off: %.2f)\n", dram_eff / 1e9, pe.tok_s_dependent,
                   b->on.ok && pe.tok_s_dependent > 0 ? b->on.decode_tok_s / pe.tok_s_dependent : 0,
                   pe.tok_s_serial, b->off.ok ? b->off.decode_tok_s / pe.tok_s_serial : 0);
        /* the goals */
        const double stall_off = b->off.ok ? b->off.stall_s / steps_off : 0, stall_on = b->on.ok ? b->on.stall_s / steps_on : 0;
        const double nvme_s = b->off.ok ? b->off.read / steps_off / (nv.gbs * 1e9) : 0;
        const double floor_s = ST_MAX(0, nvme_s - compute_s);
        printf("  stall per token: %.1f ms on demand, %.1f ms with prefetch; physical floor max(0, NVMe %.1f ms - "
               "compute %.1f ms) = %.1f ms\n    (NVMe: the %.1f MB the on-demand run read per token at %.2f GB/s; compute: "
               "a token of (a)) -> halving the on-demand stall is %s on this disk\n", stall_off * 1e3, stall_on * 1e3,
               nvme_s * 1e3, compute_s * 1e3, floor_s * 1e3, b->off.ok ? b->off.read / steps_off / 1e6 : 0, nv.gbs,
               floor_s <= 0.5 * stall_off ? "reachable" : "NOT reachable");
        /* The next token's experts are known only once the head has picked it (the hash layers' ids
           come from the token; learned layers' routing is predicted from the hidden state the head
           ends): the disk can overlap the layers' compute but not the head's, unless routing carries
           over from token to token, which a random-weight model's does not. Head time: its share of
           the bytes a token of (a) reads (decode is memory-bound). */
        const double head_s = pl_all.read[ST_TIER_DRAM] > 0
                                  ? compute_s * (double)mi.pin.class_read[ST_PLAN_HEAD] / pl_all.read[ST_TIER_DRAM] : 0;
        const double floor_nohead = ST_MAX(0, nvme_s - (compute_s - head_s));
        const double tok_nohead = 1.0 / (head_s + ST_MAX(nvme_s, compute_s - head_s));
        printf("  without next-token prediction (the head's %.1f ms cannot overlap): floor %.1f ms -> halving is %s; "
               "best %.2f tok/s, achieved/that %.2f\n", head_s * 1e3, floor_nohead * 1e3,
               floor_nohead <= 0.5 * stall_off ? "reachable" : "NOT reachable", tok_nohead,
               b->on.ok ? b->on.decode_tok_s / tok_nohead : 0);
        /* everything streaming costs, counted or not as waiting by the engine (the reads' CPU work,
           page-cache and memory-bandwidth effects): the time per token beyond the all-DRAM run's */
        if (b->off.ok && b->on.ok && compute_s > 0 && b->off.decode_tok_s > 0 && b->on.decode_tok_s > 0) {
            const double x_off = 1 / b->off.decode_tok_s - compute_s, x_on = 1 / b->on.decode_tok_s - compute_s;
            printf("  time per token beyond all-DRAM's %.1f ms: %.1f ms on demand, %.1f ms with prefetch (%.0f%% less; "
                   "information)\n", compute_s * 1e3, x_off * 1e3, x_on * 1e3, x_off > 0 ? 100 * (1 - x_on / x_off) : 0);
        }
        const bool g1 = b->off.ok && b->on.ok && stall_on <= 0.5 * stall_off;
        const double ratio = b->on.ok && pl.tok_s_dependent > 0 ? b->on.decode_tok_s / pl.tok_s_dependent : 0;
        const bool g2 = ratio >= 0.8;
        goal_stall &= g1, goal_model &= g2;
        printf("  [%s] prefetch removes >= half of the on-demand stall: %.0f%% removed\n", g1 ? "PASS" : "FAIL",
               stall_off > 0 ? 100 * (1 - stall_on / stall_off) : 0);
        printf("  [%s] achieved >= 0.8 x cost model: %.2f / %.2f = %.2f\n", g2 ? "PASS" : "FAIL",
               b->on.decode_tok_s, pl.tok_s_dependent, ratio);
        if (!b->mmap_skipped) {
            if (b->mmap.ok) {
                const bool g3 = b->on.ok && b->on.decode_tok_s > b->mmap.decode_tok_s;
                goal_mmap &= g3;
                any_mmap = true;
                printf("  [%s] streaming beats mmap + page cache: %.2f vs %.2f tok/s\n", g3 ? "PASS" : "FAIL",
                       b->on.decode_tok_s, b->mmap.decode_tok_s);
            } else { /* e.g. killed by its limit when the heap outgrew --headroom: no comparison */
                printf("  [SKIP] streaming beats mmap + page cache: the mmap run failed (%s)\n", b->mmap.why);
            }
        } else {
            printf("  [SKIP] streaming beats mmap + page cache: %s\n", b->skip);
        }
    }
    uint64_t warm_max = 0; /* pages a cold run found cached: another process maps the checkpoint */
    for (int i = 0; i < a.n_budgets; i++)
        warm_max = ST_MAX(warm_max, ST_MAX(br[i].off.resident_at_start, ST_MAX(br[i].on.resident_at_start, br[i].mmap.resident_at_start)));
    if (warm_max > (64ull << 20))
        printf("\nnote: up to %s of the checkpoint stayed in the page cache after the drop (another process maps it):\n"
               "      those runs did not start cold, and the mmap run's pages beyond its cgroup were free to it\n",
               mib(warm_max, b1, sizeof b1));
    printf("\ngoals over budgets");
    for (int i = 0; i < a.n_budgets; i++) printf("%s%d%%", i ? "," : " ", a.budgets[i]);
    printf(": [%s] prefetch halves the stall  [%s] >= 0.8 x cost model  [%s] streaming beats mmap\n"
           "(%.0f s; load average %.2f at the start, %.2f at the end: other work on the machine slows every run)\n",
           goal_stall ? "PASS" : "FAIL", goal_model ? "PASS" : "FAIL", any_mmap ? goal_mmap ? "PASS" : "FAIL" : "SKIP",
           st_time_s() - t_start, load0, bench_load_average());
    free(ids);
    model_info_close(&mi);
    return 0;
}
