/* `strata bench longctx`: decode speed after long contexts.
 *
 * For each context length N the sequence's KV state is set up by a linear-time
 * fill (window rings, compressed entries and indexer keys of N tokens with
 * random values; this is setup, not a model prefill, and no prefill numerics
 * apply: decode cost depends on how many entries there are, not on their
 * values), then D tokens are decoded through the real model. Printed per
 * context: tokens/s and its ratio to the first (shortest) context, compressed
 * entries per layer kind, KV bytes per tier, the KV bytes each decoded token
 * must read (all indexer keys and the top-k entries of CSA layers, every entry
 * of HCA layers, the window) plus the weights, and the bound that puts on
 * tokens/s at the DRAM read bandwidth measured in the same run; then the
 * multiply-adds the context costs a decoded token (indexer scores over every
 * key, attention scores and weighted sums over every candidate entry) and the
 * bound they put on tokens/s at the peak rates measured in the same run (int8
 * VNNI for the exact indexer of official numerics, F32 FMA otherwise, one
 * core's rate times the threads; the two add: they share the vector multiply
 * pipes). The last lines say which bound limits the long context against the
 * first one.
 */
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "bench/bench.h"
#include "cpu/pool.h"
#include "engine/attention.h"
#include "engine/cli.h"
#include "engine/model.h"
#include "offload/kv_pages.h"

typedef struct lc_args {
    const char *model, *kv_spill;
    const char *contexts;
    int decode;
    uint64_t kv_budget;
    st_model_opts opts;
} lc_args;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* n entries with random values, stored in the state's format (F32, or the
 * official compact layout), appended to a compressor state. tmp: (d) floats. */
static int fill_comp(st_comp_state *cs, const st_compressor_w *cw, int64_t n, float *tmp, int64_t tmp_rows) {
    const size_t eb = cs->entry_bytes;
    if (!cs->pages && n > cs->cap) {
        void *e = realloc(cs->entries, (size_t)(n + 16) * eb);
        if (!e) return st_error(ST_ERR_NOMEM, "bench longctx: out of memory for %lld entries", (long long)n);
        cs->entries = e;
        cs->cap = n + 16;
    }
    unsigned char *buf = cs->pages ? malloc((size_t)tmp_rows * eb) : NULL;
    if (cs->pages && !buf) return st_error(ST_ERR_NOMEM, "bench longctx: out of memory");
    int rc = 0;
    for (int64_t i = 0; !rc && i < n; i += tmp_rows) {
        const int64_t k = ST_MIN(tmp_rows, n - i);
        unsigned char *dst = buf ? buf : (unsigned char *)cs->entries + (size_t)i * eb;
        for (int64_t r = 0; r < k; r++) {
            for (int64_t j = 0; j < cw->d; j++) tmp[j] = rnd();
            st_comp_entry_encode(cs, cw, tmp, dst + (size_t)r * eb);
        }
        if (buf) rc = st_kv_pages_append(cs->pages, cs->stream, buf, k, NULL);
    }
    free(buf);
    if (!rc) cs->n_entries = n;
    return rc;
}

/* The KV state of an N-token context (see the top comment). */
static int fill_context(st_seq *s, int64_t N) {
    const st_model *m = s->m;
    enum { ROWS = 256 };
    int rc = 0;
    for (int l = 0; !rc && l < m->n_layers; l++) {
        const st_attn_w *w = &m->layers[l].attn;
        st_layer_state *ls = &s->state[l];
        for (int64_t j = 0; j < (int64_t)w->window * w->head_dim; j++) ls->window[j] = rnd();
        if (w->kind == ST_LAYER_WINDOW) continue;
        float *tmp = malloc((size_t)ROWS * (size_t)w->head_dim * sizeof(float));
        if (!tmp) return st_error(ST_ERR_NOMEM, "bench longctx: out of memory");
        rc = fill_comp(&ls->comp, &w->comp, N / w->comp.ratio, tmp, ROWS);
        if (!rc && w->kind == ST_LAYER_CSA) rc = fill_comp(&ls->icomp, &w->idx.comp, N / w->idx.comp.ratio, tmp, ROWS);
        free(tmp);
    }
    s->pos = N;
    return rc;
}

typedef struct lc_row {
    int64_t ctx;
    double tok_s, kv_read, bound;
    double idx_macs, attn_macs, cbound; /* per decoded token; compute bound tok/s (0: no peak measured) */
    int64_t csa, idx, hca;
    uint64_t fast, dram, nvme;
} lc_row;

/* KV bytes one decoded token reads at context N (lower bound: each byte once). */
static double kv_read_per_token(const st_model *m, int64_t N, double *idx_per_layer) {
    double b = 0;
    *idx_per_layer = 0;
    for (int l = 0; l < m->n_layers; l++) {
        const st_attn_w *w = &m->layers[l].attn;
        b += (double)w->window * (double)w->head_dim * 4;
        const double eb = (double)st_comp_entry_bytes(&w->comp, w->rope_dims, m->numerics);
        if (w->kind == ST_LAYER_CSA) {
            const double idx = (double)(N / w->idx.comp.ratio) * (double)st_comp_entry_bytes(&w->idx.comp, w->rope_dims, m->numerics);
            *idx_per_layer = idx;
            b += idx + (double)ST_MIN((int64_t)w->idx.topk, N / w->comp.ratio) * eb;
        } else if (w->kind == ST_LAYER_HCA) {
            b += (double)(N / w->comp.ratio) * eb;
        }
    }
    return b;
}

/* Multiply-adds one decoded token at context N spends on the context: the
 * indexer scores every key of each CSA layer (keys x index heads x index
 * head_dim), attention scores and weighted sums over every candidate (window,
 * plus the top-k entries of CSA layers or every entry of HCA layers: heads x
 * candidates x head_dim, twice). Projections and experts are not counted (they
 * do not grow with the context; their weights are in the byte bound). */
static void macs_per_token(const st_model *m, int64_t N, double *idx, double *attn) {
    *idx = *attn = 0;
    for (int l = 0; l < m->n_layers; l++) {
        const st_attn_w *w = &m->layers[l].attn;
        double cand = (double)ST_MIN((int64_t)w->window, N);
        if (w->kind == ST_LAYER_CSA) {
            *idx += (double)(N / w->idx.comp.ratio) * w->idx.n_heads * (double)w->idx.head_dim;
            cand += (double)ST_MIN((int64_t)w->idx.topk, N / w->comp.ratio);
        } else if (w->kind == ST_LAYER_HCA) {
            cand += (double)(N / w->comp.ratio);
        }
        *attn += 2.0 * w->n_heads * cand * (double)w->head_dim;
    }
}

/* Peak multiply-adds per second of the pool (one core's measured rate times the threads). */
typedef struct lc_peak {
    double fma_macs, vnni_macs; /* 0: not measured (no AVX-512 kernels) */
} lc_peak;

static double compute_bound(const st_model *m, const lc_peak *pk, double idx_macs, double attn_macs) {
    if (pk->fma_macs <= 0) return 0;
    const double idx_rate = m->numerics == ST_NUMERICS_OFFICIAL ? pk->vnni_macs : pk->fma_macs;
    return 1.0 / (idx_macs / idx_rate + attn_macs / pk->fma_macs);
}

static int run_context(st_model *m, const lc_args *a, int64_t N, double dram_gbs, const lc_peak *pk, lc_row *r) {
    st_seq *s = NULL;
    int rc = st_seq_new(m, &s);
    if (!rc && a->kv_budget) rc = st_seq_kv_tiering(s, a->kv_budget, 0, a->kv_spill, 0);
    if (!rc) rc = fill_context(s, N);
    float *logits = malloc((size_t)m->vocab * sizeof(float));
    if (!rc && !logits) rc = st_error(ST_ERR_NOMEM, "bench longctx: out of memory");
    int32_t tok = 7;
    for (int i = 0; !rc && i < 2; i++) rc = st_seq_forward(s, &tok, 1, logits, false); /* warm-up */
    const double t0 = st_time_s();
    for (int i = 0; !rc && i < a->decode; i++) {
        tok = (int32_t)((tok * 2654435761u + 11) % (uint32_t)m->vocab);
        rc = st_seq_forward(s, &tok, 1, logits, false);
    }
    const double dt = st_time_s() - t0;
    if (!rc) {
        memset(r, 0, sizeof *r);
        r->ctx = N;
        r->tok_s = a->decode / dt;
        for (int l = 0; l < m->n_layers; l++) {
            const st_attn_w *w = &m->layers[l].attn;
            const st_layer_state *ls = &s->state[l];
            if (w->kind == ST_LAYER_CSA) { r->csa = ls->comp.n_entries; r->idx = ls->icomp.n_entries; }
            if (w->kind == ST_LAYER_HCA) r->hca = ls->comp.n_entries;
            r->fast += (uint64_t)w->window * (uint64_t)w->head_dim * 4;
            if (w->kind != ST_LAYER_WINDOW && !ls->comp.pages) r->fast += (uint64_t)ls->comp.n_entries * ls->comp.entry_bytes;
            if (w->kind == ST_LAYER_CSA) r->fast += (uint64_t)ls->icomp.n_entries * ls->icomp.entry_bytes;
        }
        if (s->kv) {
            st_kv_pages_stats ks;
            st_kv_pages_get_stats(s->kv, &ks);
            r->fast += ks.bytes_fast;
            r->dram = ks.bytes_dram;
            r->nvme = ks.bytes_nvme;
        }
        double idx;
        r->kv_read = kv_read_per_token(m, s->pos, &idx);
        r->bound = dram_gbs * 1e9 / (r->kv_read + (double)m->bytes_per_token);
        macs_per_token(m, s->pos, &r->idx_macs, &r->attn_macs);
        r->cbound = compute_bound(m, pk, r->idx_macs, r->attn_macs);
    }
    free(logits);
    st_seq_free(s);
    return rc;
}

/* Size of the first L3 hwloc sees (the cache the threads share; the whole
 * socket's total that sysconf reports would overstate it), 0 if unknown. */
static double l3_bytes(void) {
    hwloc_topology_t t;
    double size = 0;
    if (hwloc_topology_init(&t) != 0) return 0;
    if (hwloc_topology_load(t) == 0) {
        hwloc_obj_t o = hwloc_get_obj_by_type(t, HWLOC_OBJ_L3CACHE, 0);
        if (o && o->attr) size = (double)o->attr->cache.size;
    }
    hwloc_topology_destroy(t);
    return size;
}

/* The goal "decode at the last context >= 0.5 x decode at the first": the
 * tightest bound measured on the last context's tok/s, set against half the
 * first context's measured tok/s. The DRAM bound only binds when the KV read
 * set does not stay in the last-level cache. */
static void print_goal(const st_model *m, const lc_row *r0, const lc_row *r) {
    const double need = 0.5 * r0->tok_s;
    const double l3 = l3_bytes();
    const double set = r->kv_read + (double)m->bytes_per_token;
    const bool in_llc = l3 > 0 && set < 0.75 * l3; /* others share it: room kept */
    printf("goal at %lld: >= 0.5 x %.1f = %.1f tok/s; measured %.1f (%.3f x)\n", (long long)r->ctx, r0->tok_s, need,
           r->tok_s, r->tok_s / r0->tok_s);
    printf("  DRAM byte bound %.1f tok/s (%.2f MiB read a token", r->bound, set / (1 << 20));
    if (l3 > 0) printf(in_llc ? "; fits in the %.0f MiB L3: not a bound there)\n" : "; over 3/4 of the %.0f MiB L3)\n",
                       l3 / (1 << 20));
    else printf(")\n");
    if (r->cbound > 0) {
        printf("  compute bound %.1f tok/s (%.2fM indexer + %.2fM attention multiply-adds a token); measured at %.1f%% of it\n",
               r->cbound, r->idx_macs / 1e6, r->attn_macs / 1e6, 100 * r->tok_s / r->cbound);
        const double tight = in_llc ? r->cbound : ST_MIN(r->cbound, r->bound);
        printf("  tightest bound %.1f tok/s = %.3f x the first context's measured rate: the goal is %s\n"
               "  (the bounds count the context's work only: the per-token work every context has lowers them further)\n",
               tight, tight / r0->tok_s, tight >= need ? "within the bounds" : "out of reach even at the bound");
    }
}

int bench_longctx(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata bench longctx --model DIR [--contexts 4K,64K,1M] [--decode N] [--threads N]\n"
               "                            [--numerics official|reference] [--kv-budget SIZE [--kv-spill DIR]]\n\n"
               "Decode tokens/s after each context length. The context's KV (window rings, compressed\n"
               "entries, indexer keys) is filled in linear time with random values: setup, not a model\n"
               "prefill (decode cost depends on the number of entries, not their values). Prints per\n"
               "context tokens/s and its ratio to the first context, entries per layer kind, KV bytes\n"
               "per tier, KV bytes read per decoded token (every indexer key and the top-k entries of\n"
               "CSA layers, every entry of HCA layers, the window) and the tokens/s bound that gives\n"
               "with the weights at the DRAM read bandwidth measured in the same run; the context's\n"
               "multiply-adds per decoded token (indexer over every key, attention scores and weighted\n"
               "sums over every candidate) and the tokens/s bound they give at the peak int8 VNNI / F32\n"
               "FMA rates measured in the same run (one core times the threads; AVX-512 CPUs only).\n\n"
               "  --contexts LIST   context lengths (default 4K,64K,1M for models of dim < 256,\n"
               "                    else 4K,64K)\n"
               "  --decode N        tokens decoded per context (default 16, after 2 warm-up tokens)\n"
               "  --kv-budget SIZE  KV tiering of the CSA entries (as strata run); --kv-spill DIR\n");
        return 0;
    }
    lc_args a = {.decode = 16, .opts = {.quiet = true}};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!v) { fprintf(stderr, "strata bench longctx: %s needs a value\n", o); return 2; }
        if (!strcmp(o, "--model")) a.model = v;
        else if (!strcmp(o, "--contexts")) a.contexts = v;
        else if (!strcmp(o, "--decode")) { if (!cli_int("bench longctx", o, v, 1, INT32_MAX, &x)) return 2; a.decode = (int)x; }
        else if (!strcmp(o, "--threads")) { if (!cli_int("bench longctx", o, v, 1, 4096, &x)) return 2; a.opts.threads = (int)x; }
        else if (!strcmp(o, "--kv-spill")) a.kv_spill = v;
        else if (!strcmp(o, "--numerics")) {
            if (!strcmp(v, "official")) a.opts.numerics = ST_NUMERICS_OFFICIAL;
            else if (!strcmp(v, "reference")) a.opts.numerics = ST_NUMERICS_REFERENCE;
            else { fprintf(stderr, "strata bench longctx: --numerics official|reference, not '%s'\n", v); return 2; }
        } else if (!strcmp(o, "--kv-budget")) {
            if (st_parse_size(v, 0, o, &a.kv_budget)) { fprintf(stderr, "strata bench longctx: %s\n", st_last_error()); return 2; }
            if (!a.kv_budget) { fprintf(stderr, "strata bench longctx: --kv-budget %s: must be more than 0\n", v); return 2; }
        } else { fprintf(stderr, "strata bench longctx: unknown option '%s' (--help)\n", o); return 2; }
        i++;
    }
    if (!a.model) { fprintf(stderr, "strata bench longctx: --model DIR is required\n"); return 2; }
    if (a.decode < 1) { fprintf(stderr, "strata bench longctx: --decode must be >= 1\n"); return 2; }
    if (a.kv_spill && !a.kv_budget) { fprintf(stderr, "strata bench longctx: --kv-spill needs --kv-budget\n"); return 2; }
    st_model *m = NULL;
    int rc = st_model_load(a.model, &a.opts, &m);
    if (rc) return cli_fail("bench longctx", rc);
    const char *list = a.contexts ? a.contexts : m->dim < 256 ? "4K,64K,1M" : "4K,64K";
    int64_t ctx[16];
    int nctx = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        /* sizes in tokens: K = 1024 tokens */
        if (nctx == 16 || st_parse_size(t, 0, "--contexts", &v) || v < 1 || v > (1ull << 30)) {
            fprintf(stderr, "strata bench longctx: --contexts: '%s' is not a token count like 4K (at most 16)\n", t);
            st_model_free(m);
            return 2;
        }
        ctx[nctx++] = (int64_t)v;
    }
    const double dram = bench_dram_read_gbs(m->pool, (size_t)1 << 30);
    lc_peak pk = {0};
    double fma1 = 0, vnni1 = 0, bf16 = 0;
    if (st_cpu_isa_best() == ST_ISA_AVX512) {
        for (int i = 0; i < 3; i++) { /* the best of three: other load on the core only lowers a rate */
            double f, v;
            bench_peak_avx512(&f, &v, &bf16);
            fma1 = ST_MAX(fma1, f);
            vnni1 = ST_MAX(vnni1, v);
        }
        pk.fma_macs = fma1 / 2 * 1e9 * st_pool_size(m->pool); /* the rates count 2 ops a multiply-add */
        pk.vnni_macs = vnni1 / 2 * 1e9 * st_pool_size(m->pool);
    }
    printf("longctx: %s, %d layers, %s numerics, %d threads; DRAM read %.2f GB/s; weights %.2f MiB per token;\n"
           "context KV filled with random values (setup, not timed); %d decoded tokens per context%s\n",
           a.model, m->n_layers, m->numerics == ST_NUMERICS_OFFICIAL ? "official" : "reference", st_pool_size(m->pool),
           dram, (double)m->bytes_per_token / (1 << 20), a.decode, a.kv_budget ? " (KV tiering on)" : "");
    if (pk.fma_macs > 0)
        printf("peak per core: F32 FMA %.1f GFLOP/s, int8 VNNI %.1f GOP/s (x %d threads); compute bound: the context's\n"
               "multiply-adds (indexer %s, attention F32) at those rates\n",
               fma1, vnni1, st_pool_size(m->pool), m->numerics == ST_NUMERICS_OFFICIAL ? "int8" : "F32");
    else
        printf("compute bound: not measured (no AVX-512 kernels on this CPU)\n");
    printf("%9s %9s %7s %9s %9s %9s %10s %10s %10s %11s %9s %8s %9s %9s %9s %8s\n", "context", "tok/s", "vs 1st", "CSA ent",
           "idx keys", "HCA ent", "KV fast", "KV dram", "KV nvme", "KV rd/tok", "bound", "of bnd", "idx MAC", "attn MAC",
           "cmp bnd", "of cmp");
    double first = 0;
    lc_row r0 = {0}, r = {0};
    for (int i = 0; i < nctx && !rc; i++) {
        if ((rc = run_context(m, &a, ctx[i], dram, &pk, &r))) break;
        if (i == 0) { first = r.tok_s; r0 = r; }
        char f[32], d[32], n[32], k[32], cb[32] = "n/a", co[32] = "n/a";
        if (r.cbound > 0) {
            snprintf(cb, sizeof cb, "%.1f", r.cbound);
            snprintf(co, sizeof co, "%.1f%%", 100 * r.tok_s / r.cbound);
        }
        printf("%9lld %9.1f %7.3f %9lld %9lld %9lld %10s %10s %10s %11s %9.1f %7.1f%% %8.6gM %8.6gM %9s %8s\n",
               (long long)r.ctx, r.tok_s, r.tok_s / first, (long long)r.csa, (long long)r.idx, (long long)r.hca,
               st_fmt_size(r.fast, f, sizeof f), st_fmt_size(r.dram, d, sizeof d), st_fmt_size(r.nvme, n, sizeof n),
               st_fmt_size((uint64_t)r.kv_read, k, sizeof k), r.bound, 100 * r.tok_s / r.bound, r.idx_macs / 1e6,
               r.attn_macs / 1e6, cb, co);
        fflush(stdout);
    }
    if (!rc && nctx > 1) print_goal(m, &r0, &r);
    if (!rc) {
        double idx;
        kv_read_per_token(m, ctx[nctx - 1], &idx);
        char b[32];
        printf("indexer keys read per token per CSA layer at %lld: %s (%.3f ms at %.2f GB/s)\n", (long long)ctx[nctx - 1],
               st_fmt_size((uint64_t)idx, b, sizeof b), idx / (dram * 1e9) * 1e3, dram);
    }
    st_model_free(m);
    return rc ? cli_fail("bench longctx", rc) : 0;
}
