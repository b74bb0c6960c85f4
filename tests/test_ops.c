/* cpu/ops*.c: RMSNorm, softmax, RoPE (+YaRN), Hadamard, top-k. Every ISA path
 * against the generic one, the generic one against double-precision references
 * computed here, and both against what the official torch code computes
 * (tests/data/ops_torch.h, from tests/tools/gen_ops_fixture.py). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "cpu/pool.h"
#include "data/ops_torch.h"
#include "util.h"

/* ---- helpers --------------------------------------------------------------- */

static void fill_gauss(float *x, int64_t n, float scale) { for (int64_t i = 0; i < n; i++) x[i] = tu_rng_gauss() * scale; }

/* normalised mean squared error of a against the reference r */
static double nmse_f(const float *a, const double *r, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) { num += (a[i] - r[i]) * (a[i] - r[i]); den += r[i] * r[i]; }
    return den > 0 ? num / den : num;
}
static double nmse_ff(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) { num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); den += (double)b[i] * b[i]; }
    return den > 0 ? num / den : num;
}
static double max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* The ISAs this CPU can run, generic first. */
static int isas(st_isa *out) {
    int n = 0;
    for (int i = ST_ISA_GENERIC; i <= (int)st_cpu_isa_best(); i++) out[n++] = (st_isa)i;
    return n;
}
static void use_isa(st_isa isa) { assert_int_equal(st_cpu_set_isa(isa), 0); }
static int teardown_isa(void **state) { (void)state; st_cpu_set_isa(st_cpu_isa_best()); return 0; }

static const int64_t sizes[] = {1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 100, 1000, 7168};

static void isa_coverage(void **state) {
    (void)state;
    st_isa all[3];
    int n = isas(all);
    assert_int_equal(st_cpu_set_isa(ST_ISA_GENERIC), 0);
    assert_int_equal(st_cpu_isa(), ST_ISA_GENERIC);
    if (n < 3) { print_message("only %d of 3 kernel paths run on this CPU\n", n); skip(); }
}

/* ---- RMSNorm --------------------------------------------------------------- */

static void rmsnorm_vs_double_and_paths(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    tu_rng_seed(1);
    for (size_t si = 0; si < ST_ARRAY_LEN(sizes); si++) {
        int64_t n = sizes[si];
        float *x = malloc(n * 4), *w = malloc(n * 4), *y = malloc(n * 4), *y0 = malloc(n * 4), *yb = malloc(n * 4);
        uint16_t *wb = malloc(n * 2);
        double *ref = malloc(n * 8), *refb = malloc(n * 8);
        fill_gauss(x, n, 5.0f);
        fill_gauss(w, n, 1.0f);
        for (int64_t i = 0; i < n; i++) wb[i] = st_f32_to_bf16(w[i]);
        double ss = 0;
        for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        double r = 1 / sqrt(ss / n + 1e-6);
        for (int64_t i = 0; i < n; i++) { ref[i] = x[i] * r * w[i]; refb[i] = x[i] * r * st_bf16_to_f32(wb[i]); }
        for (int a = 0; a < ni; a++) {
            use_isa(all[a]);
            st_rmsnorm(x, w, n, 1e-6f, y);
            assert_true(nmse_f(y, ref, n) < 1e-13); /* F32 rounding of var, r and two products */
            if (a == 0) memcpy(y0, y, n * 4);
            else assert_true(max_abs_diff(y, y0, n) == 0); /* same rounding on every path */
            st_rmsnorm_bf16w(x, wb, n, 1e-6f, yb);
            assert_true(nmse_f(yb, refb, n) < 1e-13);
            st_rmsnorm(x, NULL, n, 1e-6f, y);
            for (int64_t i = 0; i < n; i++) assert_true(fabs(y[i] - x[i] * r) <= 1e-6 * fabs(x[i] * r) + 1e-30);
            memcpy(y, x, n * 4); /* in place */
            st_rmsnorm(y, w, n, 1e-6f, y);
            assert_true(max_abs_diff(y, y0, n) == 0);
        }
        free(x); free(w); free(y); free(y0); free(yb); free(wb); free(ref); free(refb);
    }
}

static void rmsnorm_vs_official(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    float y[1000];
    for (int a = 0; a < ni; a++) {
        use_isa(all[a]);
        st_rmsnorm(ops_torch_norm_x, ops_torch_norm_w, 1000, 1e-6f, y);
        for (int i = 0; i < 1000; i++) /* torch sums in F32 (pairwise): 1 ulp of r at most */
            assert_true(fabsf(y[i] - ops_torch_norm_y[i]) <= 3e-7f * fabsf(ops_torch_norm_y[i]));
    }
}

/* ---- softmax --------------------------------------------------------------- */

static void softmax_vs_double_and_paths(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    tu_rng_seed(2);
    for (size_t si = 0; si < ST_ARRAY_LEN(sizes); si++) {
        int64_t n = sizes[si];
        float *x = malloc(n * 4), *y = malloc(n * 4), *y0 = malloc(n * 4);
        double *ref = malloc(n * 8);
        fill_gauss(x, n, 8.0f);
        if (n > 4) x[3] = -1e30f, x[n - 1] = -INFINITY; /* underflow to exactly 0 */
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < n; i++) m = fmax(m, x[i]);
        for (int64_t i = 0; i < n; i++) s += exp((double)x[i] - m);
        for (int64_t i = 0; i < n; i++) ref[i] = exp((double)x[i] - m) / s;
        for (int a = 0; a < ni; a++) {
            use_isa(all[a]);
            memcpy(y, x, n * 4);
            st_softmax(y, n);
            double sum = 0;
            for (int64_t i = 0; i < n; i++) {
                /* x - max rounded in F32 (relative error |x - max| * 2^-24 in the result), then
                 * expf or the 2-ulp polynomial and a division: a few ulp; tiny values absolutely */
                double bound = (4 + fabs((double)x[i] - m)) * 0x1p-24 * ref[i] + 1e-37;
                if (fabs(y[i] - ref[i]) > bound)
                    fail_msg("%s n=%ld [%ld]: %.9g vs %.9g", st_isa_name(all[a]), (long)n, (long)i, y[i], ref[i]);
                sum += y[i];
            }
            assert_true(fabs(sum - 1) < 1e-5);
            if (n > 4) assert_true(y[3] == 0 && y[n - 1] == 0);
            if (a == 0) memcpy(y0, y, n * 4);
            else assert_true(nmse_ff(y, y0, n) < 1e-13);
        }
        free(x); free(y); free(y0); free(ref);
    }
}

static void softmax_edges(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    for (int a = 0; a < ni; a++) {
        use_isa(all[a]);
        for (int64_t n = 1; n <= 40; n += 13) {
            float x[40];
            for (int64_t i = 0; i < n; i++) x[i] = -INFINITY;
            st_softmax(x, n); /* every entry masked: zeros, not NaN */
            for (int64_t i = 0; i < n; i++) assert_true(x[i] == 0);
            for (int64_t i = 0; i < n; i++) x[i] = 1.0f;
            x[n / 2] = NAN; /* NaN anywhere poisons the row, as in torch */
            st_softmax(x, n);
            for (int64_t i = 0; i < n; i++) assert_true(isnan(x[i]));
            for (int64_t i = 0; i < n; i++) x[i] = 3.0f;
            st_softmax(x, n);
            for (int64_t i = 0; i < n; i++) assert_true(fabsf(x[i] - 1.0f / n) <= 2e-7f / n * 4);
        }
        float one = 123.0f;
        st_softmax(&one, 1);
        assert_true(one == 1.0f);
        st_softmax(&one, 0); /* n = 0: nothing */
    }
}

/* ---- RoPE -------------------------------------------------------------------- */

static st_rope_cfg fixture_cfg(const ops_torch_rope_cfg *c) {
    return (st_rope_cfg){.rope_dims = c->dim, .theta = c->base, .yarn = c->orig > 0, .factor = c->factor,
                         .original_max_pos = c->orig, .beta_fast = c->beta_fast, .beta_slow = c->beta_slow};
}
static const float *const fixture_inv_freq[5] = {ops_torch_inv_freq0, ops_torch_inv_freq1, ops_torch_inv_freq2,
                                                 ops_torch_inv_freq3, ops_torch_inv_freq4};

static void rope_inv_freq_matches_official_bits(void **state) {
    (void)state;
    for (int c = 0; c < 5; c++) {
        st_rope_cfg cfg = fixture_cfg(&ops_torch_rope_cfgs[c]);
        float f[64];
        st_rope_inv_freq(&cfg, f);
        for (int i = 0; i < cfg.rope_dims / 2; i++) {
            if (f[i] != fixture_inv_freq[c][i])
                fail_msg("config %d inv_freq[%d]: expected %a, found %a", c, i, fixture_inv_freq[c][i], f[i]);
        }
    }
}

/* YaRN written out again in double, from the paper's definitions. */
static void rope_inv_freq_vs_double(void **state) {
    (void)state;
    for (int c = 0; c < 5; c++) {
        const ops_torch_rope_cfg *k = &ops_torch_rope_cfgs[c];
        st_rope_cfg cfg = fixture_cfg(k);
        float f[64];
        st_rope_inv_freq(&cfg, f);
        int dim = k->dim;
        double lo = 0, hi = 0;
        if (k->orig > 0) {
            double dfast = dim * log(k->orig / (k->beta_fast * 2 * M_PI)) / (2 * log(k->base));
            double dslow = dim * log(k->orig / (k->beta_slow * 2 * M_PI)) / (2 * log(k->base));
            lo = fmax(floor(dfast), 0);
            hi = fmin(ceil(dslow), dim - 1);
            if (lo == hi) hi += 0.001;
        }
        for (int i = 0; i < dim / 2; i++) {
            double base_f = pow(k->base, -2.0 * i / dim), want = base_f;
            if (k->orig > 0) {
                double ramp = fmin(fmax((i - lo) / (hi - lo), 0), 1); /* 0: keep, 1: interpolate */
                want = base_f / k->factor * ramp + base_f * (1 - ramp);
            }
            assert_true(fabs(f[i] - want) <= 1e-6 * want);
        }
        if (k->orig > 0) /* the lowest frequency is fully interpolated, the highest untouched */
            assert_true(fabs(f[dim / 2 - 1] * k->factor - pow(k->base, -(dim - 2.0) / dim)) < 1e-6 * f[dim / 2 - 1] * k->factor);
        assert_true(f[0] == 1.0f);
    }
}

static void rope_apply_vs_official(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    const float *fwd[2] = {ops_torch_rope_fwd0, ops_torch_rope_fwd1}, *inv[2] = {ops_torch_rope_inv0, ops_torch_rope_inv1};
    for (int a = 0; a < ni; a++) {
        use_isa(all[a]);
        for (int c = 0; c < 2; c++) {
            st_rope_cfg cfg = fixture_cfg(&ops_torch_rope_cfgs[c]);
            float f[32];
            st_rope_inv_freq(&cfg, f);
            for (int p = 0; p < 8; p++) {
                float y[192];
                for (int dir = 0; dir < 2; dir++) {
                    memcpy(y, ops_torch_rope_x, sizeof y);
                    st_rope_apply(y, 2, 96, 64, f, ops_torch_pos[p], dir == 1);
                    const float *want = (dir ? inv[c] : fwd[c]) + p * 192;
                    for (int i = 0; i < 192; i++) /* cos/sin of torch vs libm: an ulp or two */
                        if (fabsf(y[i] - want[i]) > 1e-6f * (1 + fabsf(want[i])))
                            fail_msg("cfg %d pos %ld dir %d [%d]: %.9g vs official %.9g", c, ops_torch_pos[p], dir, i,
                                     y[i], want[i]);
                }
            }
        }
    }
}

/* Independent reference: angle in F32 (as torch.outer), cos/sin and rotation in double. */
static void rope_apply_vs_double_and_paths(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    const struct { int64_t heads, head_dim; int rope; } shapes[] = {
        {1, 2, 2}, {3, 10, 6}, {128, 512, 64}, {4, 64, 64}, {2, 1100, 1030}, {5, 27, 18}};
    tu_rng_seed(3);
    for (size_t s = 0; s < ST_ARRAY_LEN(shapes); s++) {
        int64_t H = shapes[s].heads, D = shapes[s].head_dim, n = H * D;
        int R = shapes[s].rope;
        st_rope_cfg cfg = {.rope_dims = R, .theta = 160000, .yarn = true, .factor = 16, .original_max_pos = 65536,
                           .beta_fast = 32, .beta_slow = 1};
        float *f = malloc(R / 2 * 4), *x = malloc(n * 4), *y = malloc(n * 4), *y0 = malloc(n * 4);
        double *ref = malloc(n * 8);
        st_rope_inv_freq(&cfg, f);
        fill_gauss(x, n, 1.0f);
        const int64_t poss[] = {0, 3, 70000, 1048575};
        for (size_t pi = 0; pi < ST_ARRAY_LEN(poss); pi++) {
            int64_t pos = poss[pi];
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < D; d++) {
                    int64_t j = d - (D - R), at = h * D + d;
                    if (j < 0) { ref[at] = x[at]; continue; }
                    double ang = (double)((float)pos * f[j / 2]), c = cos(ang), sn = sin(ang);
                    double xa = x[h * D + (D - R) + (j & ~1)], xb = x[h * D + (D - R) + (j | 1)];
                    ref[at] = (j & 1) ? xb * c + xa * sn : xa * c - xb * sn;
                }
            for (int a = 0; a < ni; a++) {
                use_isa(all[a]);
                memcpy(y, x, n * 4);
                st_rope_apply(y, H, D, R, f, pos, false);
                assert_true(nmse_f(y, ref, n) < 1e-13);
                for (int64_t h = 0; h < H; h++) /* the nope dims are not touched */
                    assert_memory_equal(y + h * D, x + h * D, (D - R) * 4);
                if (a == 0) memcpy(y0, y, n * 4);
                else assert_true(max_abs_diff(y, y0, n) == 0); /* same products and sums on every path */
                st_rope_apply(y, H, D, R, f, pos, true);
                assert_true(max_abs_diff(y, x, n) <= 1e-6); /* inverse(apply(x)) == x up to rounding */
            }
        }
        free(f); free(x); free(y); free(y0); free(ref);
    }
}

/* ---- Hadamard ---------------------------------------------------------------- */

static void hadamard_vs_matrix_and_paths(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    tu_rng_seed(4);
    for (int64_t n = 1; n <= 1024; n *= 2) {
        const int64_t nv = 3;
        float *x = malloc(nv * n * 4), *y = malloc(nv * n * 4), *y0 = malloc(nv * n * 4);
        double *ref = malloc(nv * n * 8);
        fill_gauss(x, nv * n, 2.0f);
        for (int64_t v = 0; v < nv; v++) /* Sylvester: H[i][j] = (-1)^popcount(i & j) */
            for (int64_t i = 0; i < n; i++) {
                double s = 0;
                for (int64_t j = 0; j < n; j++) s += (__builtin_popcountll(i & j) & 1 ? -1.0 : 1.0) * x[v * n + j];
                ref[v * n + i] = s / sqrt((double)n);
            }
        for (int a = 0; a < ni; a++) {
            use_isa(all[a]);
            memcpy(y, x, nv * n * 4);
            st_hadamard(y, nv, n);
            assert_true(nmse_f(y, ref, nv * n) < 1e-13);
            if (a == 0) memcpy(y0, y, nv * n * 4);
            else assert_true(max_abs_diff(y, y0, nv * n) == 0); /* same butterflies in the same order */
            st_hadamard(y, nv, n); /* H is symmetric and orthonormal: H(H(x)) = x */
            assert_true(max_abs_diff(y, x, nv * n) <= 2e-6 * 8);
        }
        free(x); free(y); free(y0); free(ref);
    }
}

static void hadamard_vs_official(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    for (int a = 0; a < ni; a++) {
        use_isa(all[a]);
        float y[256];
        memcpy(y, ops_torch_had_x, sizeof y);
        st_hadamard(y, 2, 128);
        for (int i = 0; i < 256; i++) assert_true(fabsf(y[i] - ops_torch_had_y[i]) <= 2e-6f);
    }
}

/* ---- top-k ------------------------------------------------------------------------ */

static const float *sort_keys;
/* descending value, ties to the lower index, NaN last */
static int cmp_rank(const void *pa, const void *pb) {
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    float va = sort_keys[a], vb = sort_keys[b];
    bool na = isnan(va), nb = isnan(vb);
    if (na != nb) return na ? 1 : -1;
    if (!na && va != vb) return va > vb ? -1 : 1;
    return a < b ? -1 : a > b;
}

static void check_topk(const float *x, int64_t n, int64_t k, st_isa *all, int ni) {
    int32_t *order = malloc(n * 4), *idx = malloc(k * 4);
    float *vals = malloc(k * 4);
    for (int64_t i = 0; i < n; i++) order[i] = (int32_t)i;
    sort_keys = x;
    qsort(order, n, 4, cmp_rank);
    for (int a = 0; a < ni; a++) {
        use_isa(all[a]);
        memset(idx, 0xff, k * 4);
        st_topk(x, n, k, idx, vals);
        for (int64_t i = 0; i < k; i++) {
            if (idx[i] != order[i])
                fail_msg("%s n=%ld k=%ld: rank %ld: index %d, expected %d", st_isa_name(all[a]), (long)n, (long)k,
                         (long)i, idx[i], order[i]);
            assert_memory_equal(&vals[i], &x[idx[i]], 4);
        }
        st_topk(x, n, k, idx, NULL); /* vals may be NULL */
        assert_memory_equal(idx, order, k * 4);
    }
    free(order); free(idx); free(vals);
}

static void topk_edges(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    float ties[40];
    for (int i = 0; i < 40; i++) ties[i] = (float)(i % 3); /* many equal values: lower index first */
    for (int64_t k = 1; k <= 40; k++) check_topk(ties, 40, k, all, ni);
    float nans[37];
    for (int i = 0; i < 37; i++) nans[i] = i % 4 == 0 ? NAN : (i % 5 == 0 ? -INFINITY : (float)(i * 7 % 11) - 5);
    nans[36] = INFINITY;
    nans[35] = -0.0f; nans[34] = 0.0f; /* -0 == +0: a tie, lower index first */
    for (int64_t k = 1; k <= 37; k++) check_topk(nans, 37, k, all, ni); /* k = n: NaNs last, by index */
    float all_nan[20];
    for (int i = 0; i < 20; i++) all_nan[i] = NAN;
    check_topk(all_nan, 20, 5, all, ni);
    float one = 2.0f;
    check_topk(&one, 1, 1, all, ni);
    int32_t dummy = 77;
    st_topk(ties, 40, 0, &dummy, NULL); /* k = 0: nothing written */
    assert_int_equal(dummy, 77);
}

static void topk_random_and_large(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    tu_rng_seed(5);
    const struct { int64_t n, k; } cases[] = {{17, 5}, {1000, 1000}, {3001, 1}, {100003, 1024}, {5000, 2000}};
    for (size_t c = 0; c < ST_ARRAY_LEN(cases); c++) {
        int64_t n = cases[c].n;
        float *x = malloc(n * 4);
        for (int64_t i = 0; i < n; i++) x[i] = (float)(tu_rng_u64() % 5000) * 0.5f; /* plenty of ties */
        check_topk(x, n, cases[c].k, all, ni);
        for (int64_t i = 0; i < n; i++) x[i] = (float)i; /* ascending: every element enters the heap */
        check_topk(x, n, cases[c].k, all, ni);
        for (int64_t i = 0; i < n; i++) x[i] = (float)(n - i) * 0.25f; /* descending */
        check_topk(x, n, cases[c].k, all, ni);
        /* mostly NaN: the heap's worst is NaN over many blocks, NaNs rank by index among themselves */
        for (int64_t i = 0; i < n; i++) x[i] = tu_rng_u64() % 16 ? NAN : (float)(tu_rng_u64() % 7);
        check_topk(x, n, cases[c].k, all, ni);
        free(x);
    }
    /* 1M scores, k = 1024 (CSA selection over a 1M-token context) */
    int64_t n = 1 << 20;
    float *x = malloc(n * 4);
    fill_gauss(x, n, 1.0f);
    check_topk(x, n, 1024, all, ni);
    free(x);
}

/* st_topk_pool: every pool size gives st_topk's result (set and order) */
static void topk_pool_equals_topk(void **state) {
    (void)state;
    st_isa all[3];
    int ni = isas(all);
    st_pool *pools[5] = {NULL};
    for (int t = 1; t <= 4; t++) assert_int_equal(st_pool_new(t, false, &pools[t]), 0);
    tu_rng_seed(17);
    const struct { int64_t n, k; } cases[] = {{ST_TOPK_POOL_MIN, 1}, {100003, 1024}, {262147, 3}, {70000, 2000}};
    for (size_t c = 0; c < ST_ARRAY_LEN(cases); c++)
        for (int kind = 0; kind < 4; kind++) {
            const int64_t n = cases[c].n, k = cases[c].k;
            float *x = malloc(n * 4), *v0 = malloc(k * 4), *v1 = malloc(k * 4);
            int32_t *i0 = malloc(k * 4), *i1 = malloc(k * 4);
            for (int64_t i = 0; i < n; i++)
                x[i] = kind == 0 ? (float)(tu_rng_u64() % 3000) : kind == 1 ? (float)i
                     : kind == 2 ? (float)(n - i) : (tu_rng_u64() % 8 ? NAN : (float)(tu_rng_u64() % 5));
            for (int a = 0; a < ni; a++) {
                use_isa(all[a]);
                st_topk(x, n, k, i0, v0);
                for (int t = 1; t <= 4; t++) {
                    memset(i1, 0xff, k * 4);
                    st_topk_pool(pools[t], x, n, k, i1, v1);
                    if (memcmp(i0, i1, k * 4) || memcmp(v0, v1, k * 4))
                        fail_msg("%s n=%ld k=%ld kind %d, %d threads: differs from st_topk", st_isa_name(all[a]), (long)n,
                                 (long)k, kind, t);
                }
            }
            free(x); free(v0); free(v1); free(i0); free(i1);
        }
    for (int t = 1; t <= 4; t++) st_pool_free(pools[t]);
}

/* ---- threads: the ops keep no shared state --------------------------------------- */

typedef struct { float *x; int64_t rows, n; int32_t *idx; const float *f; } mt_ctx;
static void mt_rows(void *p, int ith, int nth) {
    mt_ctx *c = p;
    int64_t lo, hi;
    st_split(c->rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        float *x = c->x + r * c->n;
        st_rmsnorm(x, NULL, c->n, 1e-6f, x);
        st_rope_apply(x, c->n / 64, 64, 64, c->f, r * 977, false);
        st_hadamard(x, c->n / 128, 128);
        st_topk(x, c->n, 2000, c->idx + r * 2000, NULL); /* > 1024: heap on the heap */
        st_softmax(x, c->n);
    }
}

static void ops_threaded_equal_serial(void **state) {
    (void)state;
    const int64_t rows = 12, n = 4096;
    float *x = malloc(rows * n * 4), *x1 = malloc(rows * n * 4);
    int32_t *i1 = malloc(rows * 2000 * 4), *i2 = malloc(rows * 2000 * 4);
    float f[32];
    st_rope_cfg cfg = {.rope_dims = 64, .theta = 10000};
    st_rope_inv_freq(&cfg, f);
    tu_rng_seed(6);
    fill_gauss(x, rows * n, 1.0f);
    memcpy(x1, x, rows * n * 4);
    mt_ctx c = {x1, rows, n, i1, f};
    st_pool_run(NULL, mt_rows, &c); /* 1 thread */
    for (int nt = 2; nt <= 4; nt += 2) {
        st_pool *pool;
        assert_int_equal(st_pool_new(nt, false, &pool), 0);
        float *x2 = malloc(rows * n * 4);
        memcpy(x2, x, rows * n * 4);
        mt_ctx c2 = {x2, rows, n, i2, f};
        st_pool_run(pool, mt_rows, &c2);
        assert_memory_equal(x1, x2, rows * n * 4);
        assert_memory_equal(i1, i2, rows * 2000 * 4);
        free(x2);
        st_pool_free(pool);
    }
    free(x); free(x1); free(i1); free(i2);
}

int main(void) {
    tu_rng_set(0x9E3779B97F4A7C15ull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(isa_coverage, teardown_isa),
        cmocka_unit_test_teardown(rmsnorm_vs_double_and_paths, teardown_isa),
        cmocka_unit_test_teardown(rmsnorm_vs_official, teardown_isa),
        cmocka_unit_test_teardown(softmax_vs_double_and_paths, teardown_isa),
        cmocka_unit_test_teardown(softmax_edges, teardown_isa),
        cmocka_unit_test(rope_inv_freq_matches_official_bits),
        cmocka_unit_test(rope_inv_freq_vs_double),
        cmocka_unit_test_teardown(rope_apply_vs_official, teardown_isa),
        cmocka_unit_test_teardown(rope_apply_vs_double_and_paths, teardown_isa),
        cmocka_unit_test_teardown(hadamard_vs_matrix_and_paths, teardown_isa),
        cmocka_unit_test_teardown(hadamard_vs_official, teardown_isa),
        cmocka_unit_test_teardown(topk_edges, teardown_isa),
        cmocka_unit_test_teardown(topk_random_and_large, teardown_isa),
        cmocka_unit_test_teardown(topk_pool_equals_topk, teardown_isa),
        cmocka_unit_test(ops_threaded_equal_serial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
