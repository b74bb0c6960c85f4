/* KV tiering (st_seq_kv_tiering: CSA main entries in offload/kv_pages.h):
 * logits are bit-identical to the resident arrays while pages really move to
 * DRAM and NVMe, st_seq_reset empties the store, kv save/load refuse. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "base/base.h"
#include "cpu/formats.h"
#include "cpu/quant.h"
#include "engine/attention.h"
#include "engine/kv_store.h"
#include "offload/kv_pages.h"

#define FIX "tests/data/fixtures/v4_tiny_a/official"
#define N_TOK 2800 /* CSA ratio 4: 700 entries of 57 bytes (official layout), 71 a page: 10 pages */
#define N_CLI 700   /* the command-line runs */

/* Logits of every position, fed in chunks of 61 then 1 (prefill and decode paths). */
static void run(st_seq *s, const int32_t *ids, int64_t V, float *lg) {
    int64_t t = 0;
    while (t < N_TOK - 20) {
        int64_t n = ST_MIN(61, N_TOK - 20 - t);
        assert_int_equal(st_seq_forward(s, ids + t, n, lg + t * V, true), 0);
        t += n;
    }
    for (; t < N_TOK; t++) assert_int_equal(st_seq_forward(s, ids + t, 1, lg + t * V, true), 0);
}

static void tiered_equals_resident(void **state) {
    (void)state;
    st_model_opts o = {.numerics = ST_NUMERICS_OFFICIAL, .threads = 2, .quiet = true};
    st_model *m;
    assert_int_equal(st_model_load(FIX, &o, &m), 0);
    const int64_t V = m->vocab;
    int n_csa = 0;
    for (int l = 0; l < m->n_layers; l++) n_csa += m->layers[l].attn.kind == ST_LAYER_CSA;
    assert_true(n_csa > 0);
    int32_t *ids = malloc(N_TOK * sizeof *ids);
    for (int i = 0; i < N_TOK; i++) ids[i] = (int32_t)((i * 2654435761u + 17) % (uint32_t)V);
    float *want = malloc((size_t)(N_TOK * V) * sizeof(float)), *got = malloc((size_t)(N_TOK * V) * sizeof(float));

    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    run(s, ids, V, want);
    st_seq_free(s);

    /* fast: 6 pages a CSA layer (tail + top-5 on distinct pages at worst), DRAM 2 pages, then NVMe */
    char dir[] = "/tmp/strata-kvt-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(st_seq_new(m, &s), 0);
    assert_int_equal(st_seq_kv_tiering(s, (uint64_t)n_csa * 6 * 4096, 2 * 4096, dir, 4096), 0);
    run(s, ids, V, got);
    assert_memory_equal(want, got, (size_t)(N_TOK * V) * sizeof(float));
    st_kv_pages_stats st;
    st_kv_pages_get_stats(s->kv, &st);
    assert_true(st.spilled_dram > 0);
    assert_true(st.spilled_nvme > 0);
    assert_true(st.fetched_dram + st.fetched_nvme > 0); /* top-k did read spilled pages back */
    /* reads were queued ahead (right after the top-k, and for the next token during this one's attention) */
    assert_true(st.prefetched > 0);
    print_message("kv pages: %llu fetched (%llu prefetched), %llu hits, "
                  "%.1f%% of the pages a get named were named by the get before, stall %.3f ms;\n  %llu pages missing at their get, %llu of them named by the get before\n",
                  (unsigned long long)(st.fetched_dram + st.fetched_nvme), (unsigned long long)st.prefetched,
                  (unsigned long long)st.hits,
                  100.0 * (double)st.get_repeat / (double)ST_MAX(st.get_pages, 1), st.stall_ns / 1e6,
                  (unsigned long long)st.get_missing, (unsigned long long)st.get_missing_repeat);
    assert_true(st.bytes_fast <= (uint64_t)n_csa * 6 * 4096);
    int64_t per_page = 0;
    for (int l = 0; l < m->n_layers; l++)
        if (s->state[l].comp.pages) {
            assert_int_equal(st_kv_pages_entry_bytes(s->kv, s->state[l].comp.stream), 57); /* 40 e4m3 + 1 scale + 8 bf16 */
            per_page = st_kv_pages_page_entries(s->kv, s->state[l].comp.stream);
        }
    assert_int_equal(per_page, 4096 / 57);
    assert_int_equal(st.pages_fast + st.pages_dram + st.pages_nvme, n_csa * ((N_TOK / 4 + per_page - 1) / per_page));

    /* reset empties the store; the same tokens again give the same logits */
    st_seq_reset(s);
    for (int l = 0; l < m->n_layers; l++) {
        const st_comp_state *cs = &s->state[l].comp;
        if (cs->pages) assert_int_equal(st_kv_pages_count(s->kv, cs->stream), 0);
    }
    memset(got, 0, (size_t)(N_TOK * V) * sizeof(float));
    run(s, ids, V, got);
    assert_memory_equal(want, got, (size_t)(N_TOK * V) * sizeof(float));

    /* prefix save/load read the state arrays: refused, nothing written */
    assert_int_equal(st_kv_save(s, ids, N_TOK, got + (N_TOK - 1) * V, 1, dir), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "not supported with --kv-budget"));
    int64_t loaded = -1;
    assert_int_equal(st_kv_load_prefix(s, ids, N_TOK, 1, dir, got, &loaded), ST_ERR_UNSUPPORTED);
    assert_int_equal(loaded, 0);
    assert_int_equal(rmdir(dir), 0); /* empty: the spill file was unlinked, no kv file written */
    st_seq_free(s);

    /* only on a fresh sequence */
    assert_int_equal(st_seq_new(m, &s), 0);
    assert_int_equal(st_seq_forward(s, ids, 3, NULL, false), 0);
    assert_int_equal(st_seq_kv_tiering(s, 1 << 20, 0, NULL, 0), ST_ERR_INVALID);
    st_seq_free(s);
    free(want);
    free(got);
    free(ids);
    st_model_free(m);
}

/* A fast budget below an open page per CSA layer plus one to read is refused
 * when tiering is set up (before any work), naming the least it needs; at that
 * least, a token's top-k (several pages) cannot be pinned at once and is
 * copied page by page (st_kv_pages_gather): the logits still equal the
 * resident run's. */
static void budget_below_least_refused_least_works(void **state) {
    (void)state;
    st_model_opts o = {.numerics = ST_NUMERICS_OFFICIAL, .threads = 1, .quiet = true};
    st_model *m;
    assert_int_equal(st_model_load(FIX, &o, &m), 0);
    int n_csa = 0;
    for (int l = 0; l < m->n_layers; l++) n_csa += m->layers[l].attn.kind == ST_LAYER_CSA;
    enum { N = 600 }; /* 150 entries a CSA layer: 3 pages of 4 KiB, the top-k on more than one */
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 31 + 5) % m->vocab);
    const int64_t V = m->vocab;
    float *want = malloc((size_t)(N * V) * sizeof(float)), *got = malloc((size_t)(N * V) * sizeof(float));
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    assert_int_equal(st_seq_forward(s, ids, N, want, true), 0);
    st_seq_free(s);

    const uint64_t least = (uint64_t)(n_csa + 1) * 4096;
    assert_int_equal(st_seq_new(m, &s), 0);
    assert_int_equal(st_seq_kv_tiering(s, least - 4096, 4096, NULL, 4096), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "--kv-budget"));
    assert_null(s->kv); /* back to plain arrays: the sequence still works */
    assert_int_equal(st_seq_forward(s, ids, 8, NULL, false), 0);
    st_seq_free(s);

    assert_int_equal(st_seq_new(m, &s), 0);
    assert_int_equal(st_seq_kv_tiering(s, least, 0, NULL, 4096), 0);
    for (int t = 0; t < N; t += 50) assert_int_equal(st_seq_forward(s, ids + t, 50, got + (size_t)t * (size_t)V, true), 0);
    assert_memory_equal(want, got, (size_t)(N * V) * sizeof(float));
    st_kv_pages_stats st;
    st_kv_pages_get_stats(s->kv, &st);
    assert_true(st.bytes_fast <= least);
    assert_true(st.pages_dram > 0); /* pages really left the fast tier */
    assert_true(st.gathers > 0);        /* the top-k went through the page-by-page copy */
    assert_true(st.gather_batches > 0); /* ... which fetched spilled pages */
    st_seq_free(s);
    free(want);
    free(got);
    st_model_free(m);
}

/* ---- the command line: --ids-file, --kv-page, --kv-dram, peak memory ---------------- */

static const char *bin(void) {
    const char *b = getenv("STRATA_BIN");
    return b ? b : "build/strata";
}

/* stdout of a command (malloc'd), and its exit status in *status. */
static char *capture(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t len = 0, cap = 1 << 16;
    char *out = malloc(cap);
    size_t got;
    while ((got = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (len + 1 == cap) out = realloc(out, cap *= 2);
    }
    out[len] = 0;
    *status = pclose(p);
    return out;
}

static void write_ids(const char *path, const int32_t *ids, int64_t n, bool binary) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++) {
        if (binary) {
            uint8_t b[4] = {(uint8_t)ids[i], (uint8_t)(ids[i] >> 8), (uint8_t)(ids[i] >> 16), (uint8_t)(ids[i] >> 24)};
            fwrite(b, 1, 4, f);
        } else {
            fprintf(f, i % 7 == 3 ? "%d,\n" : i % 5 == 1 ? "%d , " : "%d\t", ids[i]);
        }
    }
    fclose(f);
}

/* logits --json of every position: plain, with every tiering flag (tiny pages,
 * a DRAM limit then the spill file), from a text and a binary ids file:
 * byte-identical output. Bad files fail with the file and position named. */
static void cli_flags_identical_logits(void **state) {
    (void)state;
    char dir[] = "/tmp/strata-kvt-cli-XXXXXX", txt[80], i32[80], bad[80], cmd[1024];
    assert_non_null(mkdtemp(dir));
    snprintf(txt, sizeof txt, "%s/ids.txt", dir);
    snprintf(i32, sizeof i32, "%s/ids.i32", dir);
    snprintf(bad, sizeof bad, "%s/bad.txt", dir);
    int32_t ids[N_CLI];
    for (int i = 0; i < N_CLI; i++) ids[i] = (int32_t)((i * 2654435761u + 17) % 127u);
    write_ids(txt, ids, N_CLI, false);
    write_ids(i32, ids, N_CLI, true);
    int st;
    snprintf(cmd, sizeof cmd, "%s logits --model " FIX " --threads 2 --chunk 64 --json --ids-file %s", bin(), txt);
    char *want = capture(cmd, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(want, "\"positions\""));
    const char *variants[] = {"--kv-budget 24K --kv-page 4K --kv-spill %s --kv-dram 8K",
                              "--kv-budget 96K --kv-page 16K --kv-spill %s",
                              "--kv-budget 48K --kv-page 8K"};
    for (size_t v = 0; v < ST_ARRAY_LEN(variants); v++) {
        char flags[256];
        snprintf(flags, sizeof flags, variants[v], dir);
        snprintf(cmd, sizeof cmd, "%s logits --model " FIX " --threads 2 --chunk 64 --json --ids-file %s %s", bin(),
                 v == 0 ? i32 : txt, flags);
        char *got = capture(cmd, &st);
        assert_int_equal(st, 0);
        if (strcmp(want, got)) fail_msg("%s: logits differ from the resident run", flags);
        free(got);
    }
    free(want);
    /* bad input: named file, token position; exit status 1, nothing printed */
    FILE *f = fopen(bad, "w");
    fputs("5 6,7 x8 9", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s logits --model " FIX " --ids-file %s 2>&1", bin(), bad);
    char *out = capture(cmd, &st);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    assert_non_null(strstr(out, bad));
    assert_non_null(strstr(out, "token 3"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s logits --model " FIX " --kv-dram 8K --kv-budget 1M --ids 1,2 2>&1", bin());
    out = capture(cmd, &st);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_non_null(strstr(out, "--kv-dram needs --kv-spill"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s logits --model " FIX " --kv-budget 1M --kv-page 5000 --ids 1,2 2>&1", bin());
    out = capture(cmd, &st);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    free(out);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Peak RSS (KiB) of a `strata run` child over an ids file; *kv_fast from its --json. */
static long run_rss_kib(const char *args, uint64_t *kv_fast) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s run --model " FIX " --threads 2 -n 2 --json %s", bin(), args);
    int st;
    char *out = capture(cmd, &st);
    assert_int_equal(st, 0);
    const char *k = strstr(out, "\"peak_rss_bytes\":");
    assert_non_null(k);
    long rss = (long)(strtod(k + 17, NULL) / 1024);
    const char *f = strstr(out, "\"fast\":");
    assert_non_null(f);
    *kv_fast = (uint64_t)strtod(f + 7, NULL);
    free(out);
    return rss;
}

/* Prefill memory is bounded by the chunk, not the prompt: four times the
 * prompt adds its KV (and the ids) to the peak and little else, while a larger
 * chunk does cost more. */
static void prefill_peak_memory_bounded_by_chunk(void **state) {
    (void)state;
    if (getenv("STRATA_ASAN")) skip(); /* the sanitizer's shadow memory swamps the difference */
    char dir[] = "/tmp/strata-kvt-rss-XXXXXX", small[80], big[80], args[256];
    assert_non_null(mkdtemp(dir));
    enum { N1 = 3000, N2 = 12000 };
    int32_t *ids = malloc(N2 * sizeof *ids);
    for (int i = 0; i < N2; i++) ids[i] = (int32_t)((i * 2654435761u + 17) % 127u);
    snprintf(small, sizeof small, "%s/small.i32", dir);
    snprintf(big, sizeof big, "%s/big.i32", dir);
    write_ids(small, ids, N1, true);
    write_ids(big, ids, N2, true);
    uint64_t kv1, kv2, kvc;
    snprintf(args, sizeof args, "--chunk 128 --ids-file %s", small);
    long r1 = run_rss_kib(args, &kv1);
    snprintf(args, sizeof args, "--chunk 128 --ids-file %s", big);
    long r2 = run_rss_kib(args, &kv2);
    snprintf(args, sizeof args, "--chunk 4096 --ids-file %s", big);
    long rc = run_rss_kib(args, &kvc);
    const long kv_growth = (long)((kv2 - kv1) >> 10), ids_kib = (N2 - N1) * 4 / 1024;
    print_message("peak RSS: %d tokens %ld KiB, %d tokens %ld KiB (KV +%ld KiB), chunk 4096: %ld KiB\n", N1, r1, N2,
                  r2, kv_growth, rc);
    assert_true(kv2 > kv1);
    /* growth beyond the KV and the ids: under 1.5 MiB (one F32 row of the model width per prompt
     * token, 64 floats here, would add 2.3 MiB) */
    assert_true(r2 - r1 <= kv_growth + ids_kib + 1536);
    /* the chunk's activations are what a bigger chunk adds */
    assert_true(rc > r2 + 256);
    free(ids);
    snprintf(args, sizeof args, "rm -rf '%s'", dir);
    assert_int_equal(system(args), 0);
}

/* bench longctx: one row per context with the entries the context implies
 * (N / ratio, plus what the warm-up and decoded tokens added), with and
 * without KV tiering; bad contexts refused. */
static void bench_longctx_rows(void **state) {
    (void)state;
    char cmd[512];
    int st;
    for (int tiered = 0; tiered < 2; tiered++) {
        snprintf(cmd, sizeof cmd, "%s bench longctx --model " FIX " --threads 2 --contexts 1K,8K --decode 2 %s", bin(),
                 tiered ? "--kv-budget 384K" : "");
        char *out = capture(cmd, &st);
        assert_int_equal(st, 0);
        assert_non_null(strstr(out, "bound"));
        long long ctx, csa, idx, hca;
        double toks, ratio;
        const char *r = strstr(out, "\n     1024 ");
        assert_non_null(r);
        assert_int_equal(sscanf(r, "%lld %lf %lf %lld %lld %lld", &ctx, &toks, &ratio, &csa, &idx, &hca), 6);
        assert_true(toks > 0 && ratio == 1.0);
        /* tiny_a: CSA ratio 4, HCA ratio 7; 4 tokens decoded after the fill */
        assert_int_equal(csa, (1024 + 4) / 4);
        assert_int_equal(idx, csa);
        assert_int_equal(hca, 1024 / 7 + (1024 % 7 + 4) / 7);
        /* multiply-adds at the context after the 4 tokens (1028): indexer 257 keys x 3 heads x 32;
         * attention 2 x 3 heads x 48 x candidates: window 7, CSA 7 + top-5, HCA 7 + 146 */
        const char *pct = strchr(r, '%');
        double idx_mac = 0, attn_mac = 0;
        if (strstr(out, "peak per core")) { /* AVX-512 CPUs: the compute bound is measured */
            assert_non_null(pct);
            assert_int_equal(sscanf(pct + 1, "%lfM %lfM", &idx_mac, &attn_mac), 2);
            assert_true(fabs(idx_mac * 1e6 - 257.0 * 3 * 32) < 0.5);
            assert_true(fabs(attn_mac * 1e6 - 2.0 * 3 * 48 * (7 + 12 + 153)) < 0.5);
            assert_non_null(strstr(out, "compute bound"));
        }
        r = strstr(out, "\n     8192 ");
        assert_non_null(r);
        assert_int_equal(sscanf(r, "%lld %lf %lf %lld", &ctx, &toks, &ratio, &csa), 4);
        assert_int_equal(csa, (8192 + 4) / 4);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s bench longctx --model " FIX " --contexts 4K,abc 2>&1", bin());
    char *out = capture(cmd, &st);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_non_null(strstr(out, "abc"));
    free(out);
}

/* ---- the official compact entry layout (engine/attention.h) ------------------------ */

static uint64_t frng = 0x243F6A8885A308D3ull;
static float frand(void) {
    frng ^= frng << 13;
    frng ^= frng >> 7;
    frng ^= frng << 17;
    return (float)((double)(frng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* One vector of d values whose 64-blocks span magnitudes: zeros, -0, values
 * under the amax floor, subnormal e4m3 codes, exact ties, large values. */
static void fill_vec(float *v, int64_t d, int kind) {
    static const float mags[] = {1.0f, 1e-6f, 3e3f, 0.02f, 1e-30f};
    for (int64_t i = 0; i < d; i++) {
        float m = mags[(kind + i / 64) % 5];
        v[i] = frand() * m;
        if (i % 13 == 0) v[i] = ldexpf(1.0f + 0.0625f * (float)(i % 5), (int)(i % 7) - 3) * m; /* ties and exact codes */
        if (i % 29 == 5) v[i] = (i & 1) ? -0.0f : 0.0f;
    }
}

/* Encoding then decoding gives, bit for bit, what the official rounding
 * (the simulation attention used before: e4m3 per 64 + bf16 rope; Hadamard +
 * e2m1 per 32 for indexer keys) gives; sizes are the official layout's. */
static void compact_entries_hold_the_rounded_values(void **state) {
    (void)state;
    const int64_t dims[][2] = {{48, 8}, {128, 64}, {512, 64}, {100, 36}};
    for (size_t k = 0; k < ST_ARRAY_LEN(dims); k++) {
        const int64_t d = dims[k][0], rd = dims[k][1], nope = d - rd;
        st_compressor_w w = {.d = d};
        st_comp_state cs = {.packed = true, .rope_dims = rd};
        cs.entry_bytes = st_comp_entry_bytes(&w, rd, ST_NUMERICS_OFFICIAL);
        assert_int_equal(cs.entry_bytes, nope + (nope + 63) / 64 + 2 * rd);
        assert_int_equal(st_comp_entry_bytes(&w, rd, ST_NUMERICS_REFERENCE), d * 4);
        float *v = malloc((size_t)d * 4), *want = malloc((size_t)d * 4), *got = malloc((size_t)d * 4);
        unsigned char *e = malloc(cs.entry_bytes);
        for (int r = 0; r < 40; r++) {
            fill_vec(v, d, r);
            memcpy(want, v, (size_t)d * 4);
            st_quant_sim_e4m3(want, nope, 64);
            st_round_bf16(want + nope, rd);
            st_comp_entry_encode(&cs, &w, v, e);
            st_comp_entry_decode(&cs, &w, e, got);
            assert_memory_equal(want, got, (size_t)d * 4);
            /* an already rounded vector encodes to the same values (bench fills, re-saves) */
            memcpy(v, want, (size_t)d * 4);
            st_comp_entry_encode(&cs, &w, v, e);
            st_comp_entry_decode(&cs, &w, e, got);
            assert_memory_equal(want, got, (size_t)d * 4);
        }
        free(v); free(want); free(got); free(e);
    }
    assert_int_equal(st_comp_entry_bytes(&(st_compressor_w){.d = 512}, 64, ST_NUMERICS_OFFICIAL), 583);
    { /* every e4m3 code decodes as the reference conversion does: entries of 256 nope dims, codes 0..255 */
        st_compressor_w w = {.d = 256 + 8};
        st_comp_state cs = {.packed = true, .rope_dims = 8};
        cs.entry_bytes = st_comp_entry_bytes(&w, 8, ST_NUMERICS_OFFICIAL);
        const uint8_t scale_bytes[] = {127, 100, 1, 160};
        for (size_t k = 0; k < ST_ARRAY_LEN(scale_bytes); k++) {
            unsigned char e[256 + 4 + 16] = {0};
            for (int c = 0; c < 256; c++) e[c] = (unsigned char)c;
            memset(e + 256, scale_bytes[k], 4);
            float got[264];
            st_comp_entry_decode(&cs, &w, e, got);
            const float scale = ldexpf(1.0f, scale_bytes[k] - 127);
            for (int c = 0; c < 256; c++) {
                const float want = st_e4m3_to_f32((uint8_t)c) * scale;
                if (isnan(want)) assert_true(isnan(got[c]));
                else assert_memory_equal(&want, &got[c], 4);
            }
        }
    }
    const int64_t idims[] = {32, 64, 128};
    for (size_t k = 0; k < ST_ARRAY_LEN(idims); k++) {
        const int64_t d = idims[k];
        st_compressor_w w = {.d = d, .rotate = true};
        st_comp_state cs = {.packed = true, .rope_dims = 8};
        cs.entry_bytes = st_comp_entry_bytes(&w, 8, ST_NUMERICS_OFFICIAL);
        assert_int_equal(cs.entry_bytes, d / 2 + d / 32);
        float *v = malloc((size_t)d * 4), *want = malloc((size_t)d * 4), *got = malloc((size_t)d * 4);
        unsigned char *e = malloc(cs.entry_bytes);
        for (int r = 0; r < 40; r++) {
            fill_vec(v, d, r);
            memcpy(want, v, (size_t)d * 4);
            st_hadamard(want, 1, d);
            st_quant_sim_e2m1(want, d, 32);
            st_comp_entry_encode(&cs, &w, v, e);
            st_comp_entry_decode(&cs, &w, e, got);
            assert_memory_equal(want, got, (size_t)d * 4);
        }
        free(v); free(want); free(got); free(e);
    }
    assert_int_equal(st_comp_entry_bytes(&(st_compressor_w){.d = 128, .rotate = true}, 64, ST_NUMERICS_OFFICIAL), 68);
}

/* Official numerics keep the compressed entries compact; reference numerics F32. */
static void state_sizes_follow_numerics(void **state) {
    (void)state;
    const st_numerics nums[] = {ST_NUMERICS_OFFICIAL, ST_NUMERICS_REFERENCE};
    for (int k = 0; k < 2; k++) {
        st_model_opts o = {.numerics = nums[k], .threads = 1, .quiet = true};
        st_model *m;
        assert_int_equal(st_model_load(FIX, &o, &m), 0);
        st_seq *s;
        assert_int_equal(st_seq_new(m, &s), 0);
        int checked = 0;
        for (int l = 0; l < m->n_layers; l++) {
            const st_attn_w *w = &m->layers[l].attn;
            if (w->kind == ST_LAYER_WINDOW) continue;
            const size_t main_b = k == 0 ? 40 + 1 + 2 * 8 : 48 * 4; /* fixture: head_dim 48, rope 8 */
            assert_int_equal(s->state[l].comp.entry_bytes, main_b);
            if (w->kind == ST_LAYER_CSA) assert_int_equal(s->state[l].icomp.entry_bytes, k == 0 ? 16 + 1 : 32 * 4);
            checked++;
        }
        assert_true(checked >= 2);
        st_seq_free(s);
        st_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(compact_entries_hold_the_rounded_values),
        cmocka_unit_test(state_sizes_follow_numerics),
        cmocka_unit_test(tiered_equals_resident),
        cmocka_unit_test(budget_below_least_refused_least_works),
        cmocka_unit_test(cli_flags_identical_logits),
        cmocka_unit_test(prefill_peak_memory_bounded_by_chunk),
        cmocka_unit_test(bench_longctx_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
