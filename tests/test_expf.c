/* cpu/expf.h: st_expf, the portable e^x both the CPU and GPU SwiGLUs use.
 *
 * Bound asserted over a sweep of float bit patterns (every 257th pattern of
 * the whole range, plus every pattern near the overflow / underflow edges and
 * around 0): |st_expf(x) - e^x| <= (0.5 + 2^-20) ulp(result), with e^x from
 * libm's double exp (error ~2^-53 relative, far below the margin) and ulp the
 * float spacing at the result (2^-149 for subnormal results). Against glibc's
 * expf: never more than 1 ulp apart. Special values exactly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cpu/expf.h"
#include "cpu/formats.h"

/* Spacing of floats at |v| (the ulp of the float interval containing v). */
static double float_ulp(double v) {
    v = fabs(v);
    if (v < 0x1p-126) return 0x1p-149;
    int e;
    frexp(v, &e); /* v in [2^(e-1), 2^e) */
    return ldexp(1.0, e - 1 - 23);
}

typedef struct { double max_ulp; long n, off_glibc, beyond_one; } sweep_stats;

static void check_one(float x, sweep_stats *st) {
    if (isnan(x)) return; /* the edge ranges around 0 reach into the NaN patterns */
    float got = st_expf(x);
    double want = exp((double)x);
    if (want > (double)FLT_MAX * (1.0 + 0x1p-25)) { /* rounds to inf */
        assert_true(isinf(got) && got > 0);
        return;
    }
    assert_true(isfinite(got));
    double err = fabs((double)got - want) / float_ulp(want);
    if (err > st->max_ulp) st->max_ulp = err;
    if (err > 0.5 + 0x1p-20) {
        printf("st_expf(%a) = %a, e^x = %a: %.9f ulp\n", (double)x, (double)got, want, err);
        fail();
    }
    float libm = expf(x);
    if (libm != got) {
        st->off_glibc++;
        float lo = nextafterf(libm, -INFINITY), hi = nextafterf(libm, INFINITY);
        if (got != lo && got != hi) st->beyond_one++;
    }
    st->n++;
}

static void sweep_within_half_ulp(void **state) {
    (void)state;
    sweep_stats st = {0};
    for (uint64_t u = 0; u <= 0xffffffffu; u += 257) {
        float x = st_f32_from_bits((uint32_t)u);
        if (isnan(x) || isinf(x)) continue;
        check_one(x, &st);
    }
    /* the edges, densely: overflow, the subnormal results, 0 */
    const float edges[] = {0x1.62e42ep+6f, -87.33654f, -103.27893f, -103.972076f, -104.0f, 0.0f, 1.0f, -1.0f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        uint32_t b = st_f32_bits(edges[i]);
        for (int d = -4000; d <= 4000; d++) check_one(st_f32_from_bits(b + (uint32_t)d), &st);
    }
    printf("st_expf: %ld values, max error %.9f ulp, %ld differ from glibc expf (all by 1 ulp)\n", st.n, st.max_ulp,
           st.off_glibc);
    assert_true(st.n > 12000000);
    assert_int_equal(st.beyond_one, 0);
}

static void special_values(void **state) {
    (void)state;
    assert_true(isnan(st_expf(NAN)));
    assert_true(isnan(st_expf(-NAN)));
    assert_true(st_expf(INFINITY) == INFINITY);
    assert_true(st_expf(-INFINITY) == 0.0f && !signbit(st_expf(-INFINITY)));
    assert_true(st_expf(0.0f) == 1.0f);
    assert_true(st_expf(-0.0f) == 1.0f);
    assert_true(st_expf(1.0f) == 0x1.5bf0a8p+1f); /* e, correctly rounded */
    assert_true(st_expf(0x1.62e42ep+6f) == 0x1.ffff08p+127f); /* the largest finite result */
    assert_true(st_expf(0x1.62e430p+6f) == INFINITY);
    assert_true(st_expf(FLT_MAX) == INFINITY);
    assert_true(st_expf(-FLT_MAX) == 0.0f);
    assert_true(st_expf(-103.0f) > 0.0f && st_expf(-103.0f) < FLT_MIN); /* subnormal */
    assert_true(st_expf(-0x1.9fe368p+6f) == 0x1p-149f);                  /* the smallest subnormal */
    assert_true(st_expf(-110.0f) == 0.0f);
    assert_true(st_expf(0x1p-30f) == 1.0f);
    assert_true(st_expf(-0x1p-30f) == 1.0f);             /* 1 - 2^-30 rounds up */
    assert_true(st_expf(-0x1p-20f) == 0x1.ffffep-1f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(special_values),
        cmocka_unit_test(sweep_within_half_ulp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
