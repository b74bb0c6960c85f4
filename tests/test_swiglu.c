/* st_swiglu: every ISA gives the bits of the scalar definition (silu with
 * st_expf, clamp, coefficient; NaN where it has NaN: which NaN an operation on
 * two NaNs returns depends on the operand order the compiler picks), over
 * lengths with every tail, special values
 * (signed zeros, infinities, NaN, the limits of st_expf's range, subnormals)
 * and random hidden units; and a speed floor against that scalar code. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/expf.h"
#include "util.h"

/* The definition, written out independently of cpu/swiglu.c. */
static void oracle(float *g, const float *u, int64_t n, int64_t inter, int64_t k0, int64_t k1, const float *coef,
                   float limit) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = k0; k < k1; k++) {
            float a = g[i * inter + k], b = u[i * inter + k];
            if (limit > 0) {
                if (a > limit) a = limit;
                if (b > limit) b = limit;
                else if (b < -limit) b = -limit;
            }
            float h = a / (1.0f + st_expf(-a)) * b;
            g[i * inter + k] = coef ? h * coef[i] : h;
        }
}

static float special(uint32_t r) {
    static const float v[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 88.72283172607421875f, 88.7228394f,
                              -88.7228394f, 104.0f, -104.0f, 103.99999f, -103.99999f, 1e-40f, -1e-40f, 200.0f,
                              -200.0f, 7.0f, -7.0f, 7.0000005f, 0x1p-149f, 3e38f, -3e38f};
    return v[r % (sizeof v / sizeof v[0])];
}

static void every_isa_matches_the_definition(void **state) {
    (void)state;
    tu_rng_seed(11);
    const int64_t n = 3, inter = 160;
    float *g0 = malloc(sizeof(float) * n * inter), *u = malloc(sizeof(float) * n * inter);
    float *want = malloc(sizeof(float) * n * inter), *got = malloc(sizeof(float) * n * inter);
    const float coef[3] = {0.75f, -1.5f, 3e-3f};
    const st_isa isas[] = {ST_ISA_GENERIC, ST_ISA_AVX2, ST_ISA_AVX512};
    int checked = 0;
    for (int trial = 0; trial < 40; trial++) {
        for (int64_t i = 0; i < n * inter; i++) {
            const uint32_t r = tu_rnd();
            g0[i] = r % 5 == 0 ? special(tu_rnd()) : tu_rng_gauss() * (trial % 4 == 0 ? 30.0f : 3.0f);
            u[i] = r % 7 == 0 ? special(tu_rnd()) : tu_rng_gauss() * 3.0f;
        }
        const float limit = trial % 3 == 0 ? 0.0f : 7.0f;
        const float *cf = trial % 2 ? coef : NULL;
        const int64_t k0 = trial % 5, k1 = inter - (trial * 7) % 37; /* every tail length */
        memcpy(want, g0, sizeof(float) * n * inter);
        oracle(want, u, n, inter, k0, k1, cf, limit);
        for (size_t s = 0; s < sizeof isas / sizeof isas[0]; s++) {
            if (st_cpu_set_isa(isas[s])) { st_error_clear(); continue; }
            memcpy(got, g0, sizeof(float) * n * inter);
            st_swiglu(got, u, n, inter, k0, k1, cf, limit);
            for (int64_t i = 0; i < n * inter; i++)
                if (isnan(got[i]) != isnan(want[i]) || (!isnan(want[i]) && memcmp(&got[i], &want[i], 4)))
                    fail_msg("%s, trial %d, element %lld: a %g b %g -> %a, expected %a", st_isa_name(isas[s]), trial,
                             (long long)i, g0[i], u[i], got[i], want[i]);
            checked++;
        }
    }
    st_cpu_set_isa(st_cpu_isa_best());
    assert_true(checked >= 40);
    free(g0); free(u); free(want); free(got);
}

/* The SIMD variants are what make st_expf affordable in the SwiGLU (about 5x libm's expf scalar). */
static void simd_is_faster_than_scalar(void **state) {
    (void)state;
    if (st_cpu_isa_best() == ST_ISA_GENERIC) skip();
    const int64_t n = 1, inter = 1 << 16;
    float *g = malloc(sizeof(float) * inter), *u = malloc(sizeof(float) * inter);
    for (int64_t i = 0; i < inter; i++) g[i] = (float)(i % 200) / 20 - 5, u[i] = 1.0f;
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < 5; rep++)
        for (int v = 0; v < 2; v++) {
            assert_int_equal(st_cpu_set_isa(v ? st_cpu_isa_best() : ST_ISA_GENERIC), 0);
            const double t = st_time_s();
            st_swiglu(g, u, n, inter, 0, inter, NULL, 0);
            best[v] = ST_MIN(best[v], st_time_s() - t);
            for (int64_t i = 0; i < inter; i++) g[i] = (float)(i % 200) / 20 - 5;
        }
    st_cpu_set_isa(st_cpu_isa_best());
    print_message("swiglu of 64K units: scalar %.1f us, %s %.1f us\n", best[0] * 1e6, st_isa_name(st_cpu_isa_best()),
                  best[1] * 1e6);
    assert_true(best[1] * 2 < best[0]);
    free(g); free(u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_isa_matches_the_definition),
        cmocka_unit_test(simd_is_faster_than_scalar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
