/* `strata bench e2e --roofline`: the whole forward pass on a checkpoint with every weight
 * in DRAM. Decode tokens/s is set against the roofline measured in the same
 * run: (weight bytes one decode token reads) x (tokens/s) / (DRAM read GB/s of
 * the same pool). Prefill of a long prompt is reported in tokens/s.
 * Weights are faulted in (every page touched) before anything is timed, so
 * page faults and disk reads never count as compute. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/base.h"
#include "bench/bench.h"
#include "engine/cli.h"
#include "engine/model.h"

typedef struct e2e_args {
    const char *model;
    st_model_opts opts;
    bool json, anon;
    int64_t context, decode, prefill;
    int reps;
    double dram_gib;
} e2e_args;

static void usage(FILE *f) {
    fprintf(f, "usage: strata bench e2e --roofline --model DIR [options]\n\n"
               "Decode tokens/s with the weight bytes each token reads and the ratio of the\n"
               "achieved weight bandwidth to DRAM read bandwidth measured in the same run;\n"
               "then prefill tokens/s of one long prompt (seeded random token ids).\n"
               "  --model DIR       checkpoint directory\n"
               "  --threads N       threads (default: one per core)\n"
               "  --numerics MODE   official (default) or reference\n"
               "  --context N       tokens prefilled before decode is timed (default 64)\n"
               "  --decode N        decode tokens timed per repetition (default 16)\n"
               "  --reps N          decode repetitions, the best is reported (default 5); DRAM\n"
               "                    bandwidth is measured before each, and the ratio uses the best\n"
               "                    bandwidth seen (a shared machine's bandwidth fluctuates)\n"
               "  --prefill N       prefill length (default 2048; 0 skips it)\n"
               "  --dram-gib G      buffer for the DRAM measurement (default 1)\n"
               "  --anon            first copy every weight but the routed experts out of the\n"
               "                    checkpoint's file mapping into anonymous 2 MiB-aligned huge-page\n"
               "                    memory, as a DRAM tier would hold them (shows what the page-cache\n"
               "                    mapping costs; the default measures the engine as it loads)\n"
               "  --json            one JSON object on stdout\n");
}

static int parse(int argc, char **argv, e2e_args *a) {
    memset(a, 0, sizeof *a);
    a->context = 64;
    a->decode = 16;
    a->prefill = 2048;
    a->reps = 5;
    a->dram_gib = 1;
    a->opts.quiet = true;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool has_v = v != NULL;
        if (!strcmp(o, "--json")) { a->json = true; continue; }
        if (!strcmp(o, "--anon")) { a->anon = true; continue; }
        if (!has_v) { fprintf(stderr, "strata bench e2e: unknown option or missing value '%s'\n", o); return 2; }
        i++;
        const char *C = "bench e2e --roofline";
        long long x;
        if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--threads")) { if (!cli_int(C, o, v, 1, 4096, &x)) return 2; a->opts.threads = (int)x; }
        else if (!strcmp(o, "--context")) { if (!cli_int(C, o, v, 1, INT32_MAX, &x)) return 2; a->context = x; }
        else if (!strcmp(o, "--decode")) { if (!cli_int(C, o, v, 1, INT32_MAX, &x)) return 2; a->decode = x; }
        else if (!strcmp(o, "--reps")) { if (!cli_int(C, o, v, 1, 1000, &x)) return 2; a->reps = (int)x; }
        else if (!strcmp(o, "--prefill")) { if (!cli_int(C, o, v, 0, INT32_MAX, &x)) return 2; a->prefill = x; }
        else if (!strcmp(o, "--dram-gib")) a->dram_gib = atof(v);
        else if (!strcmp(o, "--numerics")) {
            if (!strcmp(v, "official")) a->opts.numerics = ST_NUMERICS_OFFICIAL;
            else if (!strcmp(v, "reference")) a->opts.numerics = ST_NUMERICS_REFERENCE;
            else { fprintf(stderr, "strata bench e2e: --numerics must be official or reference, not '%s'\n", v); return 2; }
        } else { fprintf(stderr, "strata bench e2e: unknown option '%s'\n", o); return 2; }
    }
    if (!a->model) { fprintf(stderr, "strata bench e2e: --model DIR is required\n"); return 2; }
    if (a->opts.threads < 0 || a->context < 1 || a->decode < 1 || a->reps < 1 || a->prefill < 0 || a->dram_gib <= 0) {
        fprintf(stderr, "strata bench e2e: --threads >= 0, --context/--decode/--reps >= 1, --prefill >= 0, --dram-gib > 0\n");
        return 2;
    }
    return 0;
}

/* Read one byte of every page of a weight so it is resident before timing. */
static uint64_t touch(const st_weight *w) {
    uint64_t s = 0;
    const uint8_t *d = w->data, *sc = w->scale;
    uint64_t db = st_weight_data_bytes(w->fmt, w->rows, w->cols), sb = st_weight_scale_bytes(w->fmt, w->scale_fmt, w->rows, w->cols);
    for (uint64_t i = 0; d && i < db; i += 4096) s += d[i];
    for (uint64_t i = 0; sc && i < sb; i += 4096) s += sc[i];
    if (db) s += d[db - 1];
    if (sb) s += sc[sb - 1];
    return s;
}

static uint64_t touch_model(const st_model *m) {
    uint64_t s = touch(&m->embed) + touch(&m->head) + touch(&m->hc_head.fn);
    for (int l = 0; l < m->n_layers; l++) {
        const st_layer_w *L = &m->layers[l];
        const st_attn_w *a = &L->attn;
        const st_weight *ws[] = {&L->hc_attn.fn, &L->hc_ffn.fn, &a->wq_a, &a->wq_b, &a->wkv, &a->wo_a, &a->wo_b,
                                 &a->comp.wkv, &a->comp.wgate, &a->idx.wq_b, &a->idx.weights_proj, &a->idx.comp.wkv,
                                 &a->idx.comp.wgate, &L->moe.gate, &L->moe.shared.w1, &L->moe.shared.w2, &L->moe.shared.w3};
        for (size_t i = 0; i < ST_ARRAY_LEN(ws); i++) s += touch(ws[i]);
        for (int e = 0; e < L->moe.n_experts; e++)
            s += touch(&L->moe.experts[e].w1) + touch(&L->moe.experts[e].w2) + touch(&L->moe.experts[e].w3);
    }
    return s;
}

/* Copy a weight's data into anonymous huge-page memory; the copy is leaked on
 * purpose into `keep` so st_model_free (which frees only its own buffers) is
 * unaffected. */
static int to_anon(st_weight *w, void **keep, int *n_keep) {
    if (!w->data) return 0;
    const size_t b = st_weight_data_bytes(w->fmt, w->rows, w->cols), huge = (size_t)1 << 21;
    void *p = st_aligned_alloc(huge, (b + huge - 1) & ~(huge - 1));
    if (!p) return st_error(ST_ERR_NOMEM, "bench e2e: no memory for a %zu-byte weight copy", b);
    madvise(p, b, MADV_HUGEPAGE);
    memcpy(p, w->data, b);
    w->data = p;
    keep[(*n_keep)++] = p;
    return 0;
}

static int dense_to_anon(st_model *m, void ***keep, int *n_keep) {
    *keep = calloc((size_t)(2 + 17 * m->n_layers), sizeof(void *));
    if (!*keep) return st_error(ST_ERR_NOMEM, "bench e2e: out of memory");
    int rc = to_anon(&m->head, *keep, n_keep);
    if (!rc) rc = to_anon(&m->hc_head.fn, *keep, n_keep);
    for (int l = 0; !rc && l < m->n_layers; l++) {
        st_layer_w *L = &m->layers[l];
        st_attn_w *a = &L->attn;
        st_weight *ws[] = {&L->hc_attn.fn, &L->hc_ffn.fn, &a->wq_a, &a->wq_b, &a->wkv, &a->wo_a, &a->wo_b,
                           &a->comp.wkv, &a->comp.wgate, &a->idx.wq_b, &a->idx.weights_proj, &a->idx.comp.wkv,
                           &a->idx.comp.wgate, &L->moe.gate, &L->moe.shared.w1, &L->moe.shared.w2, &L->moe.shared.w3};
        for (size_t i = 0; !rc && i < ST_ARRAY_LEN(ws); i++) rc = to_anon(ws[i], *keep, n_keep);
    }
    return rc;
}

static void random_ids(uint64_t seed, int64_t vocab, int64_t n, int32_t *ids) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)vocab);
    }
}

typedef struct e2e_result {
    double dram_gbs, best_rep_ratio, decode_tok_s, decode_ms_min, decode_ms_median, prefill_tok_s, prefill_s;
    uint64_t bytes_per_token;
} e2e_result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Best of reps: a fresh sequence, `context` tokens prefilled, then `decode`
 * tokens one at a time with last-position logits (the head is part of a token).
 * DRAM bandwidth is measured right before every repetition (the machine may be
 * shared): the roofline is the best bandwidth seen, and the best repetition's
 * ratio to the bandwidth measured next to it is kept too. */
static int run_decode(st_model *m, const e2e_args *a, e2e_result *r) {
    int32_t *ids = malloc((size_t)(a->context + a->decode) * sizeof *ids);
    float *lg = malloc((size_t)m->vocab * sizeof *lg);
    double *ms = malloc((size_t)a->decode * sizeof *ms);
    st_seq *s = NULL;
    int rc = (!ids || !lg || !ms) ? st_error(ST_ERR_NOMEM, "bench e2e: out of memory") : st_seq_new(m, &s);
    const size_t dram_bytes = (size_t)(a->dram_gib * (double)(1ull << 30));
    for (int rep = 0; !rc && rep < a->reps; rep++) {
        const double dram = bench_dram_read_gbs(m->pool, dram_bytes);
        if (dram > r->dram_gbs) r->dram_gbs = dram;
        random_ids(100 + (uint64_t)rep, m->vocab, a->context + a->decode, ids);
        st_seq_reset(s);
        if ((rc = st_seq_forward(s, ids, a->context, lg, false))) break;
        double t0 = st_time_s();
        for (int64_t t = 0; !rc && t < a->decode; t++) {
            double t1 = st_time_s();
            rc = st_seq_forward(s, &ids[a->context + t], 1, lg, false);
            ms[t] = (st_time_s() - t1) * 1e3;
        }
        if (rc) break;
        double tok_s = (double)a->decode / (st_time_s() - t0);
        const double rep_ratio = (double)m->bytes_per_token * tok_s / 1e9 / dram;
        if (rep_ratio > r->best_rep_ratio) r->best_rep_ratio = rep_ratio;
        if (tok_s > r->decode_tok_s) {
            r->decode_tok_s = tok_s;
            qsort(ms, (size_t)a->decode, sizeof *ms, cmp_double);
            r->decode_ms_min = ms[0];
            r->decode_ms_median = ms[a->decode / 2];
        }
    }
    st_seq_free(s);
    free(ids); free(lg); free(ms);
    return rc;
}

static int run_prefill(st_model *m, const e2e_args *a, e2e_result *r) {
    int32_t *ids = malloc((size_t)a->prefill * sizeof *ids);
    float *lg = malloc((size_t)m->vocab * sizeof *lg);
    st_seq *s = NULL;
    int rc = (!ids || !lg) ? st_error(ST_ERR_NOMEM, "bench e2e: out of memory") : st_seq_new(m, &s);
    if (!rc) {
        random_ids(7, m->vocab, a->prefill, ids);
        double t0 = st_time_s();
        rc = st_seq_forward(s, ids, a->prefill, lg, false);
        r->prefill_s = st_time_s() - t0;
        r->prefill_tok_s = (double)a->prefill / r->prefill_s;
    }
    st_seq_free(s);
    free(ids); free(lg);
    return rc;
}

/* `strata bench e2e --roofline ...`: argv without the flag. */
static int bench_e2e_roofline(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) { usage(stdout); return 0; }
    e2e_args a;
    int rc = parse(argc, argv, &a);
    if (rc) { usage(stderr); return rc; }
    st_model *m = NULL;
    if ((rc = st_model_load(a.model, &a.opts, &m))) return cli_fail("bench e2e", rc);
    const int nth = st_pool_size(m->pool);
    const char *num = a.opts.numerics == ST_NUMERICS_OFFICIAL ? "official" : "reference";
    if (!a.json) fprintf(stderr, "e2e: %s, %d layers, %s numerics, %d threads, %s; faulting weights in...\n", a.model,
                         m->n_layers, num, nth, st_isa_name(st_cpu_isa()));
    volatile uint64_t sink = touch_model(m);
    (void)sink;
    void **keep = NULL;
    int n_keep = 0;
    if (a.anon && (rc = dense_to_anon(m, &keep, &n_keep))) {
        st_model_free(m);
        return cli_fail("bench e2e", rc);
    }
    e2e_result r = {.bytes_per_token = m->bytes_per_token};
    if (!a.json) fprintf(stderr, "e2e: decode (DRAM bandwidth measured before each repetition)...\n");
    rc = run_decode(m, &a, &r);
    if (!rc && a.prefill > 0) {
        if (!a.json) fprintf(stderr, "e2e: prefill of %lld tokens...\n", (long long)a.prefill);
        rc = run_prefill(m, &a, &r);
    }
    const int n_layers = m->n_layers;
    st_model_free(m);
    for (int i = 0; i < n_keep; i++) free(keep[i]);
    free(keep);
    if (rc) return cli_fail("bench e2e", rc);
    const double achieved = (double)r.bytes_per_token * r.decode_tok_s / 1e9, ratio = achieved / r.dram_gbs;
    if (a.json) {
        printf("{\"model\": \"%s\", \"layers\": %d, \"numerics\": \"%s\", \"threads\": %d, \"isa\": \"%s\", \"anon\": %s, "
               "\"dram_read_gbs\": %.3f, \"decode\": {\"context\": %lld, \"tokens\": %lld, \"tokens_per_s\": %.3f, "
               "\"ms_min\": %.3f, \"ms_median\": %.3f, \"bytes_per_token\": %llu, \"weight_gbs\": %.3f, "
               "\"ratio_to_dram\": %.4f, \"best_rep_ratio_to_dram\": %.4f}",
               a.model, n_layers, num, nth, st_isa_name(st_cpu_isa()), a.anon ? "true" : "false", r.dram_gbs, (long long)a.context,
               (long long)a.decode, r.decode_tok_s, r.decode_ms_min, r.decode_ms_median,
               (unsigned long long)r.bytes_per_token, achieved, ratio, r.best_rep_ratio);
        if (a.prefill > 0)
            printf(", \"prefill\": {\"tokens\": %lld, \"seconds\": %.3f, \"tokens_per_s\": %.3f}", (long long)a.prefill,
                   r.prefill_s, r.prefill_tok_s);
        printf("}\n");
        return 0;
    }
    printf("DRAM read: %.2f GB/s (best of %d measurements, %d threads, %s)\n", r.dram_gbs, a.reps, nth, st_isa_name(st_cpu_isa()));
    printf("decode:  %.2f tokens/s (best of %d x %lld tokens after %lld of context; per token min %.1f ms, median %.1f ms)\n",
           r.decode_tok_s, a.reps, (long long)a.decode, (long long)a.context, r.decode_ms_min, r.decode_ms_median);
    printf("         %.1f MB of weights per token -> %.2f GB/s\n", (double)r.bytes_per_token / 1e6, achieved);
    printf("ratio to DRAM bandwidth: %.3f (best decode / best DRAM; best repetition against the DRAM run next to it: %.3f)\n",
           ratio, r.best_rep_ratio);
    if (a.prefill > 0)
        printf("prefill: %.2f tokens/s (%lld tokens in %.2f s)\n", r.prefill_tok_s, (long long)a.prefill, r.prefill_s);
    return 0;
}

/* The offload comparison (bench_offload.c) unless --roofline is given. */
int bench_e2e(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--roofline")) {
            char **rest = malloc((size_t)argc * sizeof *rest);
            if (!rest) return cli_fail("bench e2e", st_error(ST_ERR_NOMEM, "out of memory"));
            int n = 0;
            for (int j = 0; j < argc; j++)
                if (j != i) rest[n++] = argv[j];
            int rc = bench_e2e_roofline(n, rest);
            free(rest);
            return rc;
        }
    return bench_e2e_offload(argc, argv);
}
