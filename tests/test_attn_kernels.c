/* Kernels of the attention and quantisation hot path:
 * - cpu/quant.c's fast e4m3 / e2m1 block rounding against the brute-force
 *   reference conversions of cpu/formats.c, bit for bit, on every class of
 *   float (grid points, midpoints and their neighbours, subnormals, signed
 *   zeros, huge and tiny blocks, Inf/NaN blocks, partial blocks), and the
 *   branch-free bf16 rounding against the scalar conversion pair;
 * - cpu/attn.c (scores over candidate rows, softmax with sink, weighted sum,
 *   indexer scores) on every ISA against double-precision references. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "cpu/quant.h"
#include "util.h"


/* ---- quantisation simulation ----------------------------------------------- */

/* The definition: per block, scale = pow2_ceil(max(amax, floor) / max_code),
 * each value clamped and converted with the brute-force reference. */
static void ref_quant(float *x, int64_t n, int64_t block, int fp4) {
    const float max_code = fp4 ? 6.0f : 448.0f, floor_ = fp4 ? 6.0f * 0x1p-126f : 1e-4f;
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        int64_t b1 = ST_MIN(b0 + block, n);
        float amax = 0;
        for (int64_t i = b0; i < b1; i++)
            if (fabsf(x[i]) > amax) amax = fabsf(x[i]);
        if (!(amax >= floor_)) amax = floor_;
        float scale = st_pow2_ceil(amax * (1.0f / max_code));
        for (int64_t i = b0; i < b1; i++) {
            float q = x[i] / scale;
            if (q > max_code) q = max_code;
            if (q < -max_code) q = -max_code;
            x[i] = (fp4 ? st_e2m1_to_f32(st_f32_to_e2m1(q)) : st_e4m3_to_f32(st_f32_to_e4m3(q))) * scale;
        }
    }
}

static const st_isa isas[] = {ST_ISA_GENERIC, ST_ISA_AVX2, ST_ISA_AVX512};

/* Fast path (on every ISA this CPU has) vs reference on copies of x; returns
 * the number of mismatches. */
static int64_t quant_mismatches(const float *x, int64_t n, int64_t block, int fp4) {
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    memcpy(b, x, (size_t)n * sizeof(float));
    ref_quant(b, n, block, fp4);
    int64_t bad = 0;
    const st_isa saved = st_cpu_isa();
    for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
        if (st_cpu_set_isa(isas[ii])) continue;
        memcpy(a, x, (size_t)n * sizeof(float));
        if (fp4) st_quant_sim_e2m1(a, n, block);
        else st_quant_sim_e4m3(a, n, block);
        for (int64_t i = 0; i < n; i++) {
            if (isnan(a[i]) && isnan(b[i])) continue;
            if (st_f32_bits(a[i]) != st_f32_bits(b[i])) {
                if (bad < 5)
                    print_message("  mismatch %s fp4=%d x=%a: fast %a, reference %a\n", st_isa_name(isas[ii]), fp4,
                                  (double)x[i], (double)a[i], (double)b[i]);
                bad++;
            }
        }
    }
    st_cpu_set_isa(saved);
    free(a);
    free(b);
    return bad;
}

/* Values that exercise the rounding directly: blocks whose first element pins
 * the scale at 1 (440 for e4m3, 5.5 for e2m1), followed by the candidates. */
static int64_t check_pinned(const float *v, int64_t n, int fp4) {
    const int64_t B = 128;
    float *x = malloc((size_t)(n / (B - 1) + 1) * B * sizeof(float));
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (m % B == 0) x[m++] = fp4 ? 5.5f : 440.0f;
        x[m++] = v[i];
    }
    int64_t bad = quant_mismatches(x, m, B, fp4);
    free(x);
    return bad;
}

static void quant_grid_points_midpoints_neighbours(void **state) {
    (void)state;
    for (int fp4 = 0; fp4 < 2; fp4++) {
        const float top = fp4 ? 5.5f : 440.0f;
        float *v = malloc(4096 * 16 * sizeof(float));
        int64_t n = 0;
        /* every code's value, the midpoints to the next code, and +-1, +-2 ulp around both */
        float grid[256];
        int ng = 0;
        for (int c = 0; c < (fp4 ? 8 : 127); c++) {
            float g = fp4 ? st_e2m1_to_f32((uint8_t)c) : st_e4m3_to_f32((uint8_t)c);
            if (g <= top) grid[ng++] = g;
        }
        for (int i = 0; i < ng; i++) {
            float pts[2] = {grid[i], i + 1 < ng ? 0.5f * (grid[i] + grid[i + 1]) : grid[i]};
            for (int k = 0; k < 2; k++)
                for (int d = -2; d <= 2; d++) {
                    uint32_t u = st_f32_bits(pts[k]);
                    if (d < 0 && u < (uint32_t)-d) continue;
                    float f = st_f32_from_bits(u + (uint32_t)d);
                    if (f > top) continue;
                    v[n++] = f;
                    v[n++] = -f;
                }
        }
        assert_int_equal(check_pinned(v, n, fp4), 0);
        free(v);
    }
}

static void quant_every_binade_sampled(void **state) {
    (void)state;
    /* every float exponent that can reach the grids (and far below: subnormal
     * floats, values that round to zero), mantissas with a stride of 97 */
    for (int fp4 = 0; fp4 < 2; fp4++) {
        const float top = fp4 ? 5.5f : 440.0f;
        int64_t cap = 160 * ((1 << 23) / 97 + 2), n = 0;
        float *v = malloc((size_t)cap * sizeof(float));
        for (int e = 0; e < 140; e++)
            for (uint32_t m = (uint32_t)e; m < (1u << 23); m += 97) {
                float f = st_f32_from_bits((uint32_t)e << 23 | m);
                if (f <= top) v[n++] = (m & 1) ? -f : f;
            }
        assert_true(n > 1000000);
        assert_int_equal(check_pinned(v, n, fp4), 0);
        free(v);
    }
}

static void quant_random_blocks_all_magnitudes(void **state) {
    (void)state;
    tu_rng_seed(3);
    const int64_t n = 1000;
    float *x = malloc((size_t)n * sizeof(float));
    for (int fp4 = 0; fp4 < 2; fp4++)
        for (int e = -140; e <= 120; e += 3) {
            for (int64_t i = 0; i < n; i++) x[i] = ldexpf(tu_rng_gauss(), e);
            x[7] = 0.0f;
            x[8] = -0.0f;
            x[9] = ldexpf(1.0f, e) * (fp4 ? 6.0f : 448.0f); /* the code maximum, exactly */
            for (int64_t block = 32; block <= 128; block *= 2) assert_int_equal(quant_mismatches(x, n, block, fp4), 0);
            assert_int_equal(quant_mismatches(x, 37, 32, fp4), 0); /* a partial last block */
        }
    /* all-zero and all-tiny blocks take the amax floor */
    memset(x, 0, (size_t)n * sizeof(float));
    x[3] = -0.0f;
    x[5] = 1e-38f;
    x[6] = -1e-44f;
    assert_int_equal(quant_mismatches(x, 64, 32, 0), 0);
    assert_int_equal(quant_mismatches(x, 64, 32, 1), 0);
    free(x);
}

static void quant_nonfinite_blocks(void **state) {
    (void)state;
    float x[96];
    for (int i = 0; i < 96; i++) x[i] = (float)(i - 40) * 0.37f;
    x[3] = NAN;
    x[40] = INFINITY;
    x[70] = -INFINITY;
    for (int fp4 = 0; fp4 < 2; fp4++) assert_int_equal(quant_mismatches(x, 96, 32, fp4), 0);
    /* the finite blocks around them are untouched by the non-finite ones */
    float y[64];
    for (int i = 0; i < 64; i++) y[i] = (float)i;
    y[40] = NAN;
    st_quant_sim_e4m3(y, 64, 32);
    assert_true(y[15] == 15.0f && y[5] == 5.0f && isnan(y[40]) && y[32] == 32.0f);
}

/* Every 997th bit pattern (all signs, exponents, NaN payloads, Inf) plus the
 * rounding boundaries: st_round_bf16 equals the scalar conversion pair. */
static void round_bf16_matches_conversion(void **state) {
    (void)state;
    enum { N = 4096 };
    static float x[N], y[N], want[N];
    int64_t bad = 0;
    uint64_t u = 0;
    const uint32_t edges[] = {0x00007fffu, 0x00008000u, 0x00018000u, 0x3f808000u, 0x3f818000u, 0x7f7fffffu,
                              0x7f800000u, 0x7f800001u, 0x7fc00000u, 0xff800000u, 0xffffffffu, 0x80000000u};
    while (u < (1ull << 32)) {
        int n = 0;
        if (u == 0)
            for (size_t i = 0; i < ST_ARRAY_LEN(edges); i++) x[n++] = st_f32_from_bits(edges[i]);
        for (; n < N && u < (1ull << 32); n++, u += 997) x[n] = st_f32_from_bits((uint32_t)u);
        for (int i = 0; i < n; i++) want[i] = st_bf16_to_f32(st_f32_to_bf16(x[i]));
        const st_isa saved = st_cpu_isa();
        for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
            if (st_cpu_set_isa(isas[ii])) continue;
            memcpy(y, x, (size_t)n * sizeof(float));
            st_round_bf16(y, n - (int)ii); /* odd lengths: vector tails */
            for (int i = 0; i < n - (int)ii; i++) bad += st_f32_bits(y[i]) != st_f32_bits(want[i]);
        }
        st_cpu_set_isa(saved);
    }
    assert_int_equal(bad, 0);
}

/* ---- attention kernels ------------------------------------------------------- */

static void fill(float *x, int64_t n, float s) { for (int64_t i = 0; i < n; i++) x[i] = tu_rng_gauss() * s; }


/* One head over n candidates: o = sum_c softmax_c(scale q.k_c | sink) k_c, in double. */
static void ref_attend(const float *q, const float *const *cand, int64_t n, int64_t d, float scale, float sink,
                       double *o) {
    double *s = malloc((size_t)(n + 1) * sizeof(double)), mx = sink, den = 0;
    for (int64_t c = 0; c < n; c++) {
        double a = 0;
        for (int64_t k = 0; k < d; k++) a += (double)q[k] * cand[c][k];
        s[c] = a * scale;
        if (s[c] > mx) mx = s[c];
    }
    den = exp(sink - mx);
    for (int64_t c = 0; c < n; c++) { s[c] = exp(s[c] - mx); den += s[c]; }
    for (int64_t k = 0; k < d; k++) o[k] = 0;
    for (int64_t c = 0; c < n; c++)
        for (int64_t k = 0; k < d; k++) o[k] += s[c] / den * cand[c][k];
    free(s);
}

/* Six heads at once (a group of four and two more) and one head alone, over
 * scattered rows, counts that leave every remainder of the row blocking. */
static void attend_matches_reference_on_every_isa(void **state) {
    (void)state;
    tu_rng_seed(11);
    enum { NH = 6, MAXN = 640 };
    const int64_t d = 512, ncs[] = {1, 2, 3, 7, 128, 333, 640};
    float *rows = malloc((size_t)(MAXN * d) * sizeof(float)), *q = malloc((size_t)(NH * d) * sizeof(float));
    float *o = malloc((size_t)(NH * d) * sizeof(float)), *scratch = malloc((size_t)(NH * MAXN) * sizeof(float));
    const float sinks[NH] = {0.5f, -3.0f, 40.0f, -1e30f, 2.0f, 0.0f};
    double *r = malloc((size_t)d * sizeof(double));
    const float **cand = malloc(MAXN * sizeof(float *));
    fill(rows, MAXN * d, 1.0f);
    fill(q, NH * d, 0.2f);
    for (int64_t c = 0; c < MAXN; c++) cand[c] = rows + ((c * 379) % MAXN) * d; /* scattered rows */
    const float scale = 1.0f / sqrtf((float)d);
    const st_isa saved = st_cpu_isa();
    for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
        if (st_cpu_set_isa(isas[ii])) continue;
        for (size_t ni = 0; ni < ST_ARRAY_LEN(ncs); ni++)
            for (int alone = 0; alone < 2; alone++) {
                if (alone) st_attn_head(q + 5 * d, cand, ncs[ni], d, scale, sinks[5], scratch, o + 5 * d);
                else st_attn_heads(q, NH, cand, ncs[ni], d, scale, sinks, scratch, o);
                for (int h = alone ? 5 : 0; h < NH; h++) {
                    ref_attend(q + h * d, cand, ncs[ni], d, scale, sinks[h], r);
                    double e = 0, m = 0;
                    for (int64_t k = 0; k < d; k++) { e = fmax(e, fabs(o[h * d + k] - r[k])); m = fmax(m, fabs(r[k])); }
                    if (!(e <= 2e-6 * fmax(m, 1e-30) + 1e-37))
                        fail_msg("%s n=%lld head %d%s: max err %g (max |o| %g)", st_isa_name(isas[ii]), (long long)ncs[ni],
                                 h, alone ? " alone" : "", e, m);
                }
            }
    }
    st_cpu_set_isa(saved);
    free(rows); free(q); free(o); free(r); free(cand); free(scratch);
}

/* Indexer score of one token: I(s) = sum_h w_h relu(q_h . k_s), in double. */
/* One token's attention split as the decode path splits it over threads
 * (scores on row ranges starting at multiples of 4, softmax per head, weighted
 * sums on 16-column ranges) is bit-identical to st_attn_heads on every ISA. */
static void attend_split_equals_whole(void **state) {
    (void)state;
    tu_rng_seed(14);
    enum { NH = 4, MAXN = 300 };
    const int64_t ds[] = {64, 128, 32};
    const int64_t ns[] = {1, 5, 37, 300};
    const st_isa saved = st_cpu_isa();
    for (size_t di = 0; di < ST_ARRAY_LEN(ds); di++) {
        const int64_t d = ds[di];
        float *rows = malloc((size_t)(MAXN * d) * sizeof(float)), *q = malloc((size_t)(NH * d) * sizeof(float));
        float *o = malloc((size_t)(NH * d) * sizeof(float)), *o2 = malloc((size_t)(NH * d) * sizeof(float));
        float *s = malloc((size_t)(NH * MAXN) * sizeof(float)), *s2 = malloc((size_t)(NH * MAXN) * sizeof(float));
        float *tmp = malloc((size_t)(NH * MAXN) * sizeof(float));
        const float **cand = malloc(MAXN * sizeof(float *)), **shift = malloc(MAXN * sizeof(float *));
        const float sinks[NH] = {0.5f, -3.0f, 2.0f, 0.0f};
        fill(rows, MAXN * d, 1.0f);
        fill(q, NH * d, 0.3f);
        for (int64_t c = 0; c < MAXN; c++) cand[c] = rows + ((c * 379) % MAXN) * d;
        const float scale = 1.0f / sqrtf((float)d);
        for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
            if (st_cpu_set_isa(isas[ii])) continue;
            for (size_t ni = 0; ni < ST_ARRAY_LEN(ns); ni++) {
                const int64_t n = ns[ni];
                st_attn_heads(q, NH, cand, n, d, scale, sinks, s, o);
                for (int parts = 1; parts <= 3; parts++) {
                    for (int i = 0; i < parts; i++) {
                        const int64_t r0 = (n * i / parts) / 4 * 4, r1 = i + 1 == parts ? n : (n * (i + 1) / parts) / 4 * 4;
                        if (r1 <= r0) continue;
                        st_attn_scores(q, NH, cand + r0, r1 - r0, d, scale, tmp);
                        for (int h = 0; h < NH; h++)
                            memcpy(s2 + h * n + r0, tmp + h * (r1 - r0), (size_t)(r1 - r0) * sizeof(float));
                    }
                    for (int h = 0; h < NH; h++) st_attn_softmax(s2 + h * n, n, sinks[h]);
                    for (int i = 0; i < parts; i++) {
                        const int64_t k0 = (d / 16 * i / parts) * 16, k1 = (d / 16 * (i + 1) / parts) * 16;
                        if (k1 <= k0) continue;
                        for (int64_t c = 0; c < n; c++) shift[c] = cand[c] + k0;
                        st_attn_wsum(s2, NH, shift, n, k1 - k0, tmp);
                        for (int h = 0; h < NH; h++)
                            memcpy(o2 + h * d + k0, tmp + h * (k1 - k0), (size_t)(k1 - k0) * sizeof(float));
                    }
                    if (memcmp(o, o2, (size_t)(NH * d) * sizeof(float)))
                        fail_msg("%s d=%lld n=%lld in %d parts: differs from st_attn_heads", st_isa_name(isas[ii]),
                                 (long long)d, (long long)n, parts);
                }
            }
        }
        free(rows); free(q); free(o); free(o2); free(s); free(s2); free(tmp); free(cand); free(shift);
    }
    st_cpu_set_isa(saved);
}

static void index_scores_shape(int64_t H, int64_t d, int64_t n);
static void index_scores_match_reference_on_every_isa(void **state) {
    (void)state;
    tu_rng_seed(12);
    /* many heads (lanes = heads), few heads (16/H keys per reduction), odd widths */
    const int64_t shapes[][2] = {{64, 128}, {4, 32}, {8, 128}, {1, 16}, {2, 48}, {16, 64}, {3, 32}, {4, 24}};
    for (size_t i = 0; i < ST_ARRAY_LEN(shapes); i++) index_scores_shape(shapes[i][0], shapes[i][1], 517);
}

/* A key's score is the same whatever its place in the call (prefill scores
 * key tiles for many queries, decode all keys at once). */
static void index_scores_independent_of_offset(void **state) {
    (void)state;
    tu_rng_seed(13);
    const int64_t shapes[][2] = {{64, 128}, {4, 32}, {8, 128}, {2, 16}};
    const st_isa saved = st_cpu_isa();
    for (size_t i = 0; i < ST_ARRAY_LEN(shapes); i++) {
        const int64_t H = shapes[i][0], d = shapes[i][1], n = 301;
        float *q = malloc((size_t)(H * d) * sizeof(float)), *k = malloc((size_t)(n * d) * sizeof(float));
        float *w = malloc((size_t)H * sizeof(float)), *all = malloc((size_t)n * sizeof(float)), *part = malloc((size_t)n * sizeof(float));
        fill(q, H * d, 1.0f);
        fill(k, n * d, 1.0f);
        fill(w, H, 0.1f);
        for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
            if (st_cpu_set_isa(isas[ii])) continue;
            st_index_scores(q, w, k, H, d, n, all);
            for (int64_t off = 0; off < n; off += 7) {
                const int64_t len = ST_MIN(n - off, 1 + off % 37);
                st_index_scores(q, w, k + off * d, H, d, len, part);
                if (memcmp(part, all + off, (size_t)len * sizeof(float)))
                    fail_msg("%s H=%lld d=%lld: keys %lld..+%lld differ from the whole call", st_isa_name(isas[ii]),
                             (long long)H, (long long)d, (long long)off, (long long)len);
            }
        }
        free(q); free(k); free(w); free(all); free(part);
    }
    st_cpu_set_isa(saved);
}

static void index_scores_shape(int64_t H, int64_t d, int64_t n) {
    float *q = malloc((size_t)(H * d) * sizeof(float)), *k = malloc((size_t)(n * d) * sizeof(float));
    float *w = malloc((size_t)H * sizeof(float)), *s = malloc((size_t)n * sizeof(float));
    fill(q, H * d, 1.0f);
    fill(k, n * d, 1.0f);
    fill(w, H, 0.1f);
    const st_isa saved = st_cpu_isa();
    for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
        if (st_cpu_set_isa(isas[ii])) continue;
        for (int64_t nn = 0; nn <= n; nn += nn < 20 ? 1 : 97) {
            st_index_scores(q, w, k, H, d, nn, s);
            for (int64_t j = 0; j < nn; j++) {
                double ref = 0, mag = 0;
                for (int64_t h = 0; h < H; h++) {
                    double a = 0;
                    double am = 0; /* a sum's error scales with the magnitudes of its terms */
                    for (int64_t c = 0; c < d; c++) {
                        a += (double)q[h * d + c] * k[j * d + c];
                        am += fabs((double)q[h * d + c] * k[j * d + c]);
                    }
                    if (a > 0) ref += a * w[h];
                    mag += am * fabs(w[h]);
                }
                if (!(fabs(s[j] - ref) <= 1e-5 * mag + 1e-30))
                    fail_msg("%s H=%lld d=%lld n=%lld row %lld: %g vs %g", st_isa_name(isas[ii]), (long long)H,
                             (long long)d, (long long)nn, (long long)j, s[j], ref);
            }
        }
    }
    st_cpu_set_isa(saved);
    free(q); free(k); free(w); free(s);
}

int main(void) {
    tu_rng_set(0x9E3779B97F4A7C15ull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(quant_grid_points_midpoints_neighbours),
        cmocka_unit_test(quant_every_binade_sampled),
        cmocka_unit_test(quant_random_blocks_all_magnitudes),
        cmocka_unit_test(quant_nonfinite_blocks),
        cmocka_unit_test(round_bf16_matches_conversion),
        cmocka_unit_test(attend_matches_reference_on_every_isa),
        cmocka_unit_test(index_scores_match_reference_on_every_isa),
        cmocka_unit_test(index_scores_independent_of_offset),
        cmocka_unit_test(attend_split_equals_whole),
    };
    return cmocka_run_group_tests_name("attn_kernels", tests, NULL, NULL);
}
