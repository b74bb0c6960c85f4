/* `strata bench batch`: total decode tokens/s of batched decode
 * (st_seq_forward_batch) at several batch sizes on a model whose routed
 * experts stream from disk into a cache of a fraction of their bytes.
 *
 * The limit, measured in the same run: the unique experts each step needs
 * (a batch shares the reads of experts its tokens have in common) and the
 * expert bytes actually read per token, set against the O_DIRECT read
 * bandwidth (4 MiB reads, 8 in flight) of the checkpoint's disk, measured
 * before the decode runs and again after (the disk is shared: see both).
 * disk-bound tok/s = disk GB/s / (expert bytes read per token): the rate the
 * disk alone would allow if nothing else took time.
 *
 * Fairness between sizes: every size starts from the same state. The model is
 * reopened (an empty expert cache) after the checkpoint's page cache was
 * dropped (POSIX_FADV_DONTNEED), so the dense weights (mapped) are faulted in
 * by the prefill and the warm-up of every size alike, never timed. Warm-up:
 * at least --warmup steps and until the expert cache has been filled once (the
 * same rule for every size), so each size is timed in its steady state. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/bench.h"
#include "bench/memcg.h"
#include "engine/cli.h"
#include "engine/model.h"
#include "engine/model_stream.h"

#define MAX_SIZES 8

typedef struct batch_args {
    const char *model;
    st_model_opts opts;
    double cache_frac;
    int sizes[MAX_SIZES], n_sizes;
    int decode, prompt, warmup, warmup_max;
    uint64_t seed;
    double disk_mib;
    bool json, no_drop;
} batch_args;

static void usage(FILE *f) {
    fprintf(f, "usage: strata bench batch [options]\n\n"
               "Batched decode throughput with streamed experts: for each batch size B, B sequences\n"
               "are prefilled with short seeded prompts, then --decode steps of B tokens are timed.\n"
               "Prints total tokens/s, the ratio to batch 1, unique experts needed per step, expert\n"
               "bytes read from disk per token, and the disk-bound tokens/s (O_DIRECT read GB/s of\n"
               "the checkpoint measured in the same run / bytes read per token) and the speed-ups\n"
               "the disk allows over batch 1.\n"
               "  --model DIR        checkpoint (default models/flash-2l)\n"
               "  --cache-frac F     expert cache as a fraction of the routed-expert bytes (default 0.25)\n"
               "  --batch LIST       batch sizes, comma separated (default 1,8,32)\n"
               "  --decode N         timed decode steps per batch size (default 6)\n"
               "  --warmup N         untimed decode steps first, at least (default 2); warm-up goes on until\n"
               "                     the expert cache has been filled once, up to --warmup-max steps (default 40)\n"
               "  --warmup-max N     see --warmup\n"
               "  --no-drop          keep the checkpoint's page cache between sizes (default: dropped)\n"
               "  --json             one JSON object on stdout\n"
               "  --prompt N         prompt tokens per sequence (default 4)\n"
               "  --threads N        threads (default: one per core)\n"
               "  --numerics MODE    official (default) or reference\n"
               "  --seed S           token ids (default 1)\n"
               "  --disk-mib M       MiB read by the two disk measurements (default 1024; 0 skips them)\n");
}

static int parse(int argc, char **argv, batch_args *a) {
    *a = (batch_args){.model = "models/flash-2l", .cache_frac = 0.25, .sizes = {1, 8, 32}, .n_sizes = 3, .decode = 6,
                      .prompt = 4, .warmup = 2, .warmup_max = 40, .seed = 1, .disk_mib = 1024, .opts = {.quiet = true}};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--json")) { a->json = true; continue; }
        if (!strcmp(o, "--no-drop")) { a->no_drop = true; continue; }
        if (!v) { fprintf(stderr, "strata bench batch: unknown option or missing value '%s'\n", o); return 2; }
        i++;
        const char *C = "bench batch";
        long long x;
        if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--cache-frac")) a->cache_frac = atof(v);
        else if (!strcmp(o, "--decode")) { if (!cli_int(C, o, v, 1, 1 << 20, &x)) return 2; a->decode = (int)x; }
        else if (!strcmp(o, "--warmup")) { if (!cli_int(C, o, v, 0, 1 << 20, &x)) return 2; a->warmup = (int)x; }
        else if (!strcmp(o, "--warmup-max")) { if (!cli_int(C, o, v, 0, 1 << 20, &x)) return 2; a->warmup_max = (int)x; }
        else if (!strcmp(o, "--prompt")) { if (!cli_int(C, o, v, 1, 1 << 20, &x)) return 2; a->prompt = (int)x; }
        else if (!strcmp(o, "--threads")) { if (!cli_int(C, o, v, 1, 4096, &x)) return 2; a->opts.threads = (int)x; }
        else if (!strcmp(o, "--seed")) { if (!cli_int(C, o, v, 0, INT64_MAX, &x)) return 2; a->seed = (uint64_t)x; }
        else if (!strcmp(o, "--disk-mib")) a->disk_mib = atof(v);
        else if (!strcmp(o, "--numerics")) {
            if (!strcmp(v, "official")) a->opts.numerics = ST_NUMERICS_OFFICIAL;
            else if (!strcmp(v, "reference")) a->opts.numerics = ST_NUMERICS_REFERENCE;
            else { fprintf(stderr, "strata bench batch: --numerics must be official or reference, not '%s'\n", v); return 2; }
        } else if (!strcmp(o, "--batch")) {
            a->n_sizes = 0;
            for (const char *p = v; *p;) {
                char *e;
                long n = strtol(p, &e, 10);
                if (e == p || n < 1 || n > 1024 || a->n_sizes == MAX_SIZES || (*e && *e != ',')) {
                    fprintf(stderr, "strata bench batch: --batch wants up to %d sizes 1..1024 like 1,8,32, not '%s'\n", MAX_SIZES, v);
                    return 2;
                }
                a->sizes[a->n_sizes++] = (int)n;
                p = *e ? e + 1 : e;
            }
        } else { fprintf(stderr, "strata bench batch: unknown option '%s'\n", o); return 2; }
    }
    if (a->n_sizes < 1 || a->decode < 1 || a->warmup < 0 || a->warmup_max < a->warmup || a->prompt < 1 || a->cache_frac <= 0 || a->cache_frac >= 1 ||
        a->disk_mib < 0) {
        fprintf(stderr, "strata bench batch: --decode >= 1, 0 <= --warmup <= --warmup-max, --prompt >= 1, 0 < --cache-frac < 1\n");
        return 2;
    }
    return 0;
}

typedef struct disk_job {
    int fd;
    off_t start, size;
    uint64_t want, got;
} disk_job;

static void *disk_reader(void *arg) {
    disk_job *j = arg;
    const size_t chunk = 4u << 20;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, chunk)) return NULL;
    off_t off = j->start;
    while (j->got < j->want) {
        if (off + (off_t)chunk > j->size) off = 0;
        ssize_t r = pread(j->fd, buf, chunk, off);
        if (r <= 0) break;
        j->got += (uint64_t)r;
        off += r;
    }
    free(buf);
    return NULL;
}

/* O_DIRECT reads of 4 MiB, 8 at a time (one per thread, spread over the file),
 * from the largest .safetensors / .pack file of dir (the experts live there):
 * GB/s, or 0 when it cannot measure. */
static double disk_read_gbs(const char *dir, double mib) {
    DIR *d = opendir(dir);
    if (!d || mib <= 0) { if (d) closedir(d); return 0; }
    char best[4096] = "", path[4096];
    off_t best_size = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        bool st_file = n > 12 && !strcmp(e->d_name + n - 12, ".safetensors"), pack = n > 5 && !strcmp(e->d_name + n - 5, ".pack");
        if (!st_file && !pack) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (!stat(path, &sb) && sb.st_size > best_size) { best_size = sb.st_size; snprintf(best, sizeof best, "%s", path); }
    }
    closedir(d);
    int fd = best[0] ? open(best, O_RDONLY | O_DIRECT) : -1;
    if (fd < 0 || best_size < (64 << 20)) { if (fd >= 0) close(fd); return 0; }
    enum { NJ = 8 };
    disk_job jobs[NJ];
    pthread_t th[NJ];
    const uint64_t want = (uint64_t)(mib * 1048576.0);
    double t0 = st_time_s();
    int started = 0;
    for (int i = 0; i < NJ; i++) {
        jobs[i] = (disk_job){.fd = fd, .start = best_size / NJ * i / 4096 * 4096, .size = best_size, .want = want / NJ};
        if (!pthread_create(&th[i], NULL, disk_reader, &jobs[i])) started++;
        else break;
    }
    uint64_t got = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        got += jobs[i].got;
    }
    double el = st_time_s() - t0;
    close(fd);
    return started == NJ && got >= want / NJ * NJ && el > 0 ? (double)got / el / 1e9 : 0;
}

typedef struct batch_result {
    int B, warmup_steps;
    double tok_s, unique_per_step, read_per_token, hit_rate, stall_frac, read_gbs, seconds;
    double wasted_per_token, loads_per_step; /* prefetched bytes never used; experts read per step */
    uint64_t kept_evictions, wanted_evictions;
} batch_result;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The checkpoint's data files (.safetensors / .pack) of dir: n, paths owned by the caller. */
static int data_files(const char *dir, char ***out) {
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    char **v = NULL;
    for (struct dirent *e; (e = readdir(d));) {
        size_t k = strlen(e->d_name);
        if (!(k > 12 && !strcmp(e->d_name + k - 12, ".safetensors")) && !(k > 5 && !strcmp(e->d_name + k - 5, ".pack"))) continue;
        if (n == cap) {
            char **w = realloc(v, (size_t)(cap = cap ? 2 * cap : 8) * sizeof *v);
            if (!w) break;
            v = w;
        }
        size_t len = strlen(dir) + k + 2;
        if (!(v[n] = malloc(len))) break;
        snprintf(v[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    *out = v;
    return n;
}

/* One batch size on a freshly opened model: B prompts prefilled, warm-up
 * (untimed), then a.decode timed steps of B tokens. */
static int run_size(const batch_args *a, int B, batch_result *r) {
    st_model *m = NULL;
    int rc = st_model_load(a->model, &a->opts, &m);
    if (rc) return rc;
    st_seq **s = calloc((size_t)B, sizeof *s);
    int32_t *toks = malloc((size_t)(B > a->prompt ? B : a->prompt) * sizeof *toks);
    float *logits = malloc((size_t)B * (size_t)m->vocab * sizeof(float));
    uint64_t rng = a->seed * 1000003u + (uint64_t)B;
    if (!s || !toks || !logits) rc = st_error(ST_ERR_NOMEM, "bench batch: out of memory for batch %d", B);
    for (int i = 0; !rc && i < B; i++) {
        for (int k = 0; k < a->prompt; k++) toks[k] = (int32_t)(2 + splitmix(&rng) % (uint64_t)(m->vocab - 2));
        if (!(rc = st_seq_new(m, &s[i]))) rc = st_seq_forward(s[i], toks, a->prompt, NULL, false);
    }
    st_stream_stats s0, s1;
    double t0 = 0;
    int warm = 0, timed = 0;
    while (!rc && timed < a->decode) {
        if (t0 == 0) {
            /* warm: at least --warmup steps, and every slot has been filled once (or --warmup-max) */
            st_model_offload_stats(m, &s0);
            bool filled = s0.bytes_read >= (uint64_t)s0.n_slots * s0.span_bytes;
            if (warm >= a->warmup && (filled || warm >= a->warmup_max)) t0 = st_time_s();
        }
        /* random next tokens: uniform over the vocabulary like the synthetic routing */
        for (int i = 0; i < B; i++) toks[i] = (int32_t)(2 + splitmix(&rng) % (uint64_t)(m->vocab - 2));
        rc = st_seq_forward_batch(s, toks, B, logits);
        if (t0 == 0) warm++;
        else timed++;
    }
    if (!rc) {
        double el = st_time_s() - t0;
        st_model_offload_stats(m, &s1);
        double tokens = (double)B * a->decode, needs = (double)(s1.pf.needs - s0.pf.needs);
        *r = (batch_result){.B = B,
                            .warmup_steps = warm,
                            .seconds = el,
                            .tok_s = tokens / el,
                            .unique_per_step = needs / a->decode,
                            .read_per_token = (double)(s1.bytes_read - s0.bytes_read) / tokens,
                            .hit_rate = needs > 0 ? (double)(s1.pf.hits - s0.pf.hits) / needs : 0,
                            .stall_frac = (double)(s1.pf.stall_ns - s0.pf.stall_ns) / 1e9 / el,
                            .read_gbs = (double)(s1.bytes_read - s0.bytes_read) / el / 1e9,
                            .wasted_per_token = (double)(s1.pf.wasted_bytes - s0.pf.wasted_bytes) / tokens,
                            .loads_per_step = (double)(s1.pf.issued + s1.pf.demand_loads - s0.pf.issued - s0.pf.demand_loads) / a->decode,
                            .kept_evictions = s1.kept_evictions - s0.kept_evictions,
                            .wanted_evictions = s1.wanted_evictions - s0.wanted_evictions};
    }
    for (int i = 0; s && i < B; i++) st_seq_free(s[i]);
    free(s);
    free(toks);
    free(logits);
    st_model_free(m);
    return rc;
}

/* Needs served without a read: 1 - experts read / experts needed (prefetches count as reads). */
static double reuse(const batch_result *r) {
    return r->unique_per_step > 0 ? 1 - r->loads_per_step / r->unique_per_step : 0;
}

int bench_batch(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) { usage(stdout); return 0; }
    batch_args a;
    int rc = parse(argc, argv, &a);
    if (rc) return rc;
    st_model *m = NULL;
    /* the routed bytes from the resident descriptors (nothing is read), then the streamed load */
    if ((rc = st_model_load(a.model, &a.opts, &m))) {
        fprintf(stderr, "strata bench batch: %s (make it with: strata synth --preset flash-2l --out models/flash-2l)\n", st_last_error());
        return 1;
    }
    const uint64_t routed = st_model_routed_bytes(m);
    int top_k = 0, n_layers = m->n_layers, n_experts = m->layers[0].moe.n_experts;
    for (int l = 0; l < m->n_layers; l++) top_k = m->layers[l].moe.top_k > top_k ? m->layers[l].moe.top_k : top_k;
    st_model_free(m);
    m = NULL;
    a.opts.expert_cache = (uint64_t)((double)routed * a.cache_frac);
    if ((rc = st_model_load(a.model, &a.opts, &m))) { fprintf(stderr, "strata bench batch: %s\n", st_last_error()); return 1; }
    st_stream_stats ss;
    rc = st_model_offload_stats(m, &ss);
    st_model_free(m);
    if (rc) {
        fprintf(stderr, "strata bench batch: the experts are not streamed (no offload stats)\n");
        return 1;
    }
    char **files = NULL;
    const int n_files = data_files(a.model, &files);
    const double load0 = bench_load_average();
    const double disk = disk_read_gbs(a.model, a.disk_mib / 2);
    char c1[32], c2[32], c3[32];
    if (!a.json) {
        printf("strata bench batch: %s, %d layers x top-%d of %d experts; expert cache %s of %s routed (%.0f%%, %d slots of %s), "
               "%s reads; disk (O_DIRECT 4 MiB x 8 in flight) %.2f GB/s; load average %.2f\n",
               a.model, n_layers, top_k, n_experts, st_fmt_size(ss.cache_bytes, c1, sizeof c1),
               st_fmt_size(routed, c2, sizeof c2), 100.0 * (double)ss.cache_bytes / (double)routed, ss.n_slots,
               st_fmt_size(ss.slot_bytes, c3, sizeof c3), ss.io_backend, disk, load0);
        printf("every size: model reopened (empty expert cache), %s; warm-up >= %d steps and until the cache was filled\n",
               a.no_drop ? "page cache kept" : "checkpoint page cache dropped first (dense weights faulted in untimed)", a.warmup);
        printf("%6s %6s %9s %8s %9s %13s %11s %11s %12s %7s %6s %6s %9s %10s %9s\n", "batch", "warmup", "tok/s", "vs B=1",
               "uniq ceil", "uniq exp/step", "uniq/(B*kL)", "read MB/tok", "wasted MB/tok", "hit", "reuse", "stall", "read GB/s",
               "disk tok/s", "read ceil");
        fflush(stdout);
    }
    batch_result res[MAX_SIZES];
    int done = 0;
    for (int i = 0; i < a.n_sizes; i++) {
        if (!a.no_drop && n_files > 0) bench_cache_drop((const char *const *)files, n_files);
        if ((rc = run_size(&a, a.sizes[i], &res[i]))) { fprintf(stderr, "strata bench batch: %s\n", st_last_error()); break; }
        done++;
        const batch_result *r = &res[i];
        if (a.json) continue;
        double disk_tok = r->read_per_token > 0 && disk > 0 ? disk * 1e9 / r->read_per_token : 0;
        /* the ratio to batch 1 the disk alone allows: batch 1's read bytes per token over this size's */
        double ceiling = res[0].read_per_token > 0 && r->read_per_token > 0 ? res[0].read_per_token / r->read_per_token : 0;
        /* ... and from the routing alone: B tokens need U(B) unique experts where one token needs U(1) */
        double uceil = r->unique_per_step > 0 ? r->B * res[0].unique_per_step / r->unique_per_step : 0;
        printf("%6d %6d %9.2f %7.2fx %8.2fx %13.1f %11.3f %11.1f %12.1f %6.1f%% %5.1f%% %5.0f%% %9.2f %10.2f %8.2fx\n", r->B,
               r->warmup_steps, r->tok_s, r->tok_s / res[0].tok_s, uceil, r->unique_per_step,
               r->unique_per_step / ((double)r->B * top_k * n_layers), r->read_per_token / 1e6, r->wasted_per_token / 1e6,
               100 * r->hit_rate, 100 * reuse(r),
               100 * r->stall_frac, r->read_gbs, disk_tok, ceiling);
        fflush(stdout);
    }
    const double disk2 = disk_read_gbs(a.model, a.disk_mib / 2), load1 = bench_load_average();
    if (a.json) {
        printf("{\"model\": \"%s\", \"layers\": %d, \"top_k\": %d, \"experts\": %d, \"routed_bytes\": %llu, "
               "\"cache_bytes\": %llu, \"slots\": %d, \"slot_bytes\": %llu, \"io_backend\": \"%s\", \"page_cache_dropped\": %s, "
               "\"disk_gbs_before\": %.3f, \"disk_gbs_after\": %.3f, \"load_average_before\": %.2f, \"load_average_after\": %.2f, "
               "\"decode_steps\": %d, \"sizes\": [",
               a.model, n_layers, top_k, n_experts, (unsigned long long)routed, (unsigned long long)ss.cache_bytes, ss.n_slots,
               (unsigned long long)ss.slot_bytes, ss.io_backend, a.no_drop ? "false" : "true", disk, disk2, load0, load1, a.decode);
        for (int i = 0; i < done; i++) {
            const batch_result *r = &res[i];
            printf("%s{\"batch\": %d, \"warmup_steps\": %d, \"seconds\": %.3f, \"tokens_per_s\": %.4f, \"ratio_to_batch1\": %.4f, "
                   "\"unique_experts_per_step\": %.2f, \"routing_bound_ratio\": %.4f, \"read_bound_ratio\": %.4f, "
                   "\"hit_rate\": %.4f, \"reuse\": %.4f, \"read_bytes_per_token\": %.0f, \"wasted_bytes_per_token\": %.0f, "
                   "\"expert_loads_per_step\": %.2f, \"read_gbs\": %.4f, \"stall_fraction\": %.4f, \"kept_evictions\": %llu, "
                   "\"wanted_evictions\": %llu}",
                   i ? ", " : "", r->B, r->warmup_steps, r->seconds, r->tok_s, r->tok_s / res[0].tok_s, r->unique_per_step,
                   r->unique_per_step > 0 ? r->B * res[0].unique_per_step / r->unique_per_step : 0,
                   r->read_per_token > 0 ? res[0].read_per_token / r->read_per_token : 0, r->hit_rate, reuse(r), r->read_per_token,
                   r->wasted_per_token, r->loads_per_step, r->read_gbs, r->stall_frac, (unsigned long long)r->kept_evictions,
                   (unsigned long long)r->wanted_evictions);
        }
        printf("]}\n");
    } else {
        if (disk2 > 0) printf("disk again after the runs: %.2f GB/s; load average %.2f\n", disk2, load1);
        if (!rc)
            printf("uniq ceil: B*U(1)/U(B), the speed-up over batch 1 the routing allows when expert reads bound both\n"
                   "  (U = unique experts a step needs; uniq/(B*kL): U over the B*top_k*layers it would need without sharing);\n"
                   "read ceil: the same from the bytes actually read (batch 1's per token over this size's);\n"
                   "wasted MB/tok: prefetched expert bytes evicted or dropped before any use;\n"
                   "hit: needed experts resident when the layer began (a prefetch in time counts);\n"
                   "reuse: 1 - experts read / experts needed (what the cache saved, prefetches count as reads);\n"
                   "disk tok/s: disk GB/s / expert bytes read per token (what the disk alone allows);\n"
                   "read GB/s: expert bytes read from NVMe per second of the timed decode.\n");
    }
    for (int i = 0; i < n_files; i++) free(files[i]);
    free(files);
    return rc ? 1 : 0;
}
