/* `strata bench kernels`: the CPU matrix kernels against limits measured in the
 * same run: DRAM read bandwidth (all threads) for the memory-bound GEMVs and the
 * routed-expert FFN, OpenBLAS sgemm (F32, same shape, same threads) for GEMM.
 * Weight sets for the memory-bound cases are >= 1 GiB so the LLC cannot hold them. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "bench/bench.h"
#include "cpu/cpu.h"
#include "engine/cli.h"

typedef struct {
    const char *name;
    double gbs, gflops, ratio, per_s; /* per_s: tokens/s for the expert FFN */
    const char *vs;
} result;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A weight with random codes and scales near 1 (no NaN codes). */
static int make_weight(st_wfmt fmt, int64_t rows, int64_t cols, st_weight *w) {
    *w = (st_weight){.fmt = fmt, .rows = rows, .cols = cols, .scale_fmt = ST_SCALE_E8M0};
    size_t db = st_weight_data_bytes(fmt, rows, cols), sb = st_weight_scale_bytes(fmt, ST_SCALE_E8M0, rows, cols);
    uint8_t *d = st_aligned_alloc(4096, db), *s = sb ? malloc(sb) : NULL;
    if (!d || (sb && !s)) { free(d); free(s); return st_error(ST_ERR_NOMEM, "bench: no memory for a %zu-byte weight", db); }
    for (size_t i = 0; i + 8 <= db; i += 8) {
        uint64_t v = rnd64();
        if (fmt == ST_WF_FP8) v &= 0xbebebebebebebebeull; /* clear a mantissa bit: never the NaN code */
        memcpy(d + i, &v, 8);
    }
    if (fmt == ST_WF_F32)
        for (size_t i = 0; i < db / 4; i++) ((float *)d)[i] = (float)(rnd64() % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < sb; i++) s[i] = (uint8_t)(120 + rnd64() % 8);
    w->data = d;
    w->scale = s;
    return 0;
}
static void free_weight(st_weight *w) { free((void *)w->data); free((void *)w->scale); }
static float *rand_vec(int64_t n) {
    float *x = malloc((size_t)n * sizeof(float));
    if (x)
        for (int64_t i = 0; i < n; i++) x[i] = (float)(rnd64() % 2001) / 1000.0f - 1.0f;
    return x;
}

/* GEMV over a set of matrices totalling >= `total` bytes: best weight GB/s of a few passes. */
static int bench_gemv(st_pool *pool, st_wfmt fmt, int64_t rows, int64_t cols, double total, double *gbs, double *gflops) {
    st_weight one;
    int rc = make_weight(fmt, rows, cols, &one);
    if (rc) return rc;
    int count = (int)(total / (double)st_weight_bytes(&one)) + 1;
    st_weight *w = calloc((size_t)count, sizeof(*w));
    float *x = rand_vec(cols), *y = malloc((size_t)rows * sizeof(float));
    w[0] = one;
    for (int i = 1; i < count && !rc; i++) rc = make_weight(fmt, rows, cols, &w[i]);
    *gbs = 0;
    for (int pass = 0; pass < 4 && !rc; pass++) {
        double t0 = st_time_s();
        for (int i = 0; i < count && !rc; i++) rc = st_matmul(pool, &w[i], x, 1, y, ST_ACT_F32);
        double dt = st_time_s() - t0, g = (double)st_weight_bytes(&one) * count / dt / 1e9;
        if (g > *gbs) { *gbs = g; *gflops = 2.0 * (double)rows * cols * count / dt / 1e9; }
    }
    for (int i = 0; i < count; i++) free_weight(&w[i]);
    free(w); free(x); free(y);
    return rc;
}

/* V4-Flash routed experts, FP4, six per token, batch 1: tokens/s and weight GB/s. */
static int bench_experts(st_pool *pool, double total, double *tok_s, double *gbs, double *gflops) {
    const int64_t dim = 4096, inter = 2048, topk = 6;
    st_expert_w one;
    int rc = 0;
    double ebytes = 0;
    int count = 0;
    st_expert_w *e = NULL;
    float *x = rand_vec(dim), *y = calloc((size_t)dim, sizeof(float));
    for (;;) {
        e = realloc(e, (size_t)(count + 1) * sizeof(*e));
        if ((rc = make_weight(ST_WF_FP4, inter, dim, &one.w1)) || (rc = make_weight(ST_WF_FP4, inter, dim, &one.w3)) ||
            (rc = make_weight(ST_WF_FP4, dim, inter, &one.w2)))
            break;
        e[count++] = one;
        ebytes = (double)st_weight_bytes(&one.w1) + (double)st_weight_bytes(&one.w3) + (double)st_weight_bytes(&one.w2);
        if (ebytes * count >= total && count % topk == 0) break;
    }
    *tok_s = *gbs = 0;
    const int tokens = count / (int)topk;
    float coef[6] = {0.3f, 0.2f, 0.15f, 0.15f, 0.1f, 0.1f};
    const st_expert_w *sel[6];
    for (int pass = 0; pass < 4 && !rc; pass++) {
        double t0 = st_time_s();
        for (int t = 0; t < tokens && !rc; t++) {
            for (int k = 0; k < topk; k++) sel[k] = &e[t * topk + k];
            rc = st_experts_ffn(pool, sel, (int)topk, x, 1, coef, 10.0f, y, ST_ACT_F32);
        }
        double s = (double)tokens / (st_time_s() - t0);
        if (s > *tok_s) { *tok_s = s; *gbs = s * topk * ebytes / 1e9; *gflops = s * topk * 6.0 * dim * inter / 1e9; }
    }
    for (int i = 0; i < count; i++) { free_weight(&e[i].w1); free_weight(&e[i].w3); free_weight(&e[i].w2); }
    free(e); free(x); free(y);
    return rc;
}

/* Best GFLOP/s of `reps` products y (n, rows) = x . W^T. */
static int bench_gemm(st_pool *pool, st_wfmt fmt, st_act act, int64_t n, int64_t dim, double *gflops) {
    st_weight w;
    int rc = make_weight(fmt, dim, dim, &w);
    if (rc) return rc;
    float *x = rand_vec(n * dim), *y = malloc((size_t)(n * dim) * sizeof(float));
    *gflops = 0;
    for (int rep = 0; rep < 4 && !rc; rep++) {
        double t0 = st_time_s();
        rc = st_matmul(pool, &w, x, n, y, act);
        double g = 2.0 * (double)n * dim * dim / (st_time_s() - t0) / 1e9;
        if (g > *gflops) *gflops = g;
    }
    free_weight(&w); free(x); free(y);
    return rc;
}

static double bench_sgemm(int nth, int64_t n, int64_t dim) {
    float *x = rand_vec(n * dim), *w = rand_vec(dim * dim), *y = malloc((size_t)(n * dim) * sizeof(float));
    double best = 0;
    openblas_set_num_threads(nth);
    for (int rep = 0; x && w && y && rep < 4; rep++) {
        double t0 = st_time_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)dim, (int)dim, 1.0f, x, (int)dim, w, (int)dim,
                    0.0f, y, (int)dim);
        double g = 2.0 * (double)n * dim * dim / (st_time_s() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(x); free(w); free(y);
    return best;
}

static void usage(FILE *f) {
    fprintf(f, "usage: strata bench kernels [--json] [--threads N] [--gib G]\n\n"
               "Measures DRAM read bandwidth, then FP4/FP8 GEMV and BF16 GEMV (output head shape) over\n"
               ">= G GiB of weights (default 1)\n"
               "and the V4-Flash routed-expert FFN (FP4, 6 experts/token) as a ratio to it, then\n"
               "512-token GEMM on 4096x4096 FP4/FP8 weights as a ratio to OpenBLAS sgemm (F32).\n"
               "  --threads N   threads (default: one per core)\n"
               "  --gib G       GiB of weights for the memory-bound cases (default 1; keep >> LLC)\n"
               "  --json        one JSON object on stdout\n");
}

int bench_kernels(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) { usage(stdout); return 0; }
    bool json = false;
    int threads = 0;
    double gib = 1.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = true;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gib") && i + 1 < argc) gib = atof(argv[++i]);
        else { fprintf(stderr, "strata bench kernels: unknown option '%s'\n", argv[i]); usage(stderr); return 2; }
    }
    if (threads < 0 || gib <= 0) { usage(stderr); return 2; }
    st_pool *pool;
    int rc = st_pool_new(threads, true, &pool);
    if (rc) return cli_fail("bench kernels", rc);
    const int nth = st_pool_size(pool);
    const double total = gib * (double)(1ull << 30);
    if (!json) fprintf(stderr, "kernels: %s, %d threads; measuring DRAM bandwidth...\n", st_isa_name(st_cpu_isa()), nth);
    double dram = bench_dram_read_gbs(pool, (size_t)total);
    double pk_fma = 0, pk_vnni = 0, pk_bf16 = 0;
    if (st_cpu_isa_best() == ST_ISA_AVX512) bench_peak_avx512(&pk_fma, &pk_vnni, &pk_bf16);
    result res[8];
    int nres = 0;
    double gbs = 0, tok = 0, gf = 0;
    if (!rc && !(rc = bench_gemv(pool, ST_WF_FP4, 4096, 8192, total, &gbs, &gf)))
        res[nres++] = (result){"fp4_gemv", gbs, gf, 0, 0, "DRAM"};
    if (!rc && !(rc = bench_gemv(pool, ST_WF_FP8, 4096, 8192, total, &gbs, &gf)))
        res[nres++] = (result){"fp8_gemv", gbs, gf, 0, 0, "DRAM"};
    /* the output head's shape (vocab, dim): BF16 weights, F32 activations */
    if (!rc && !(rc = bench_gemv(pool, ST_WF_BF16, 129280, 4096, total, &gbs, &gf)))
        res[nres++] = (result){"bf16_gemv", gbs, gf, 0, 0, "DRAM"};
    if (!rc && !(rc = bench_experts(pool, total, &tok, &gbs, &gf)))
        res[nres++] = (result){"flash_expert_ffn", gbs, gf, 0, tok, "DRAM"};
    /* DRAM again after the memory-bound kernels: this shared VM's bandwidth
     * drifts; the ratios use the higher of the two measurements */
    double dram2 = bench_dram_read_gbs(pool, (size_t)total);
    if (dram2 > dram) dram = dram2;
    for (int i = 0; i < nres; i++) res[i].ratio = res[i].gbs / dram;
    const int64_t n = 512, dim = 4096;
    double blas = bench_sgemm(nth, n, dim);
    if (!rc && !(rc = bench_gemm(pool, ST_WF_FP4, ST_ACT_Q8, n, dim, &gf)))
        res[nres++] = (result){"fp4_gemm", 0, gf, gf / blas, 0, "sgemm"};
    if (!rc && !(rc = bench_gemm(pool, ST_WF_FP8, ST_ACT_F32, n, dim, &gf)))
        res[nres++] = (result){"fp8_gemm", 0, gf, gf / blas, 0, "sgemm"};
    if (!rc && !(rc = bench_gemm(pool, ST_WF_FP4, ST_ACT_F32, n, dim, &gf)))
        res[nres++] = (result){"fp4_gemm_f32act", 0, gf, gf / blas, 0, "sgemm"};
    st_pool_free(pool);
    if (rc) return cli_fail("bench kernels", rc);
    if (json) {
        printf("{\"dram_read_gbs\": %.3f, \"sgemm_gflops\": %.3f, \"threads\": %d, \"isa\": \"%s\", "
               "\"core_peak\": {\"fma_f32_gflops\": %.1f, \"vnni_int8_gops\": %.1f, \"bf16_dot_gflops\": %.1f}, \"kernels\": [",
               dram, blas, nth, st_isa_name(st_cpu_isa()), pk_fma, pk_vnni, pk_bf16);
        for (int i = 0; i < nres; i++)
        {
            printf("%s{\"name\": \"%s\", \"gbs\": %.3f, \"gflops\": %.3f, \"ratio\": %.4f", i ? ", " : "", res[i].name,
                   res[i].gbs, res[i].gflops, res[i].ratio);
            if (res[i].per_s > 0) printf(", \"tokens_per_s\": %.2f", res[i].per_s);
            printf("}");
        }
        printf("]}\n");
        return 0;
    }
    printf("DRAM read: %.2f GB/s   OpenBLAS sgemm 512x4096x4096: %.1f GFLOP/s   (%d threads, %s)\n", dram, blas, nth,
           st_isa_name(st_cpu_isa()));
    if (pk_fma > 0)
        printf("one core, zmm: F32 FMA %.0f GFLOP/s, int8 vpdpbusd %.0f GOP/s (%.2fx), BF16 vdpbf16ps %.0f GFLOP/s (%.2fx)\n",
               pk_fma, pk_vnni, pk_vnni / pk_fma, pk_bf16, pk_bf16 / pk_fma);
    printf("%-18s %10s %10s %12s %8s\n", "kernel", "GB/s", "GFLOP/s", "tokens/s", "ratio");
    for (int i = 0; i < nres; i++) {
        printf("%-18s ", res[i].name);
        res[i].gbs > 0 ? printf("%10.2f ", res[i].gbs) : printf("%10s ", "-");
        res[i].gflops > 0 ? printf("%10.1f ", res[i].gflops) : printf("%10s ", "-");
        res[i].per_s > 0 ? printf("%12.1f ", res[i].per_s) : printf("%12s ", "-");
        printf("%7.3f  (vs %s)\n", res[i].ratio, res[i].vs);
    }
    return 0;
}
