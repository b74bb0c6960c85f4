/* st_expf: strata's own e^x for floats, the same bits on every CPU and GPU.
 *
 * The SwiGLU of the experts needs e^x, and an expert must give the same bits
 * wherever it runs (CPU tiers, the GPU tier: kernels/expert_ffn.cu). libm's
 * expf differs between glibc versions and CUDA, so both sides use this one:
 * plain IEEE double operations in a fixed order, rounded once to float.
 *
 *   k = nearest integer to x * log2(e)   (x * log2e + 1.5 * 2^52 - 1.5 * 2^52)
 *   r = (x - k * ln2_hi) - k * ln2_lo    (|r| <= ~0.347; k * ln2_hi is exact)
 *   e^r = Taylor polynomial of degree 12, Horner (truncation < 2e-16 relative)
 *   result = (float)(e^r * 2^k)          (2^k exact in double; one rounding)
 *
 * Accuracy: the double result is within ~1e-15 relative of e^x, so the float
 * is correctly rounded except within that distance of a rounding midpoint:
 * error <= 0.5 ulp + 2^-26 ulp (tests/test_expf.c sweeps it against exp()).
 * x > 88.7228317 (the largest float whose e^x rounds below FLT_MAX + ulp/2)
 * gives +inf, x < -104 gives +0, NaN gives NaN.
 *
 * Exactness: every operation is a single IEEE double multiply or add. The
 * device uses __dmul_rn/__dadd_rn, which nvcc never fuses into FMAs; host C
 * code is built in ISO C mode (GCC: -ffp-contract=off) and clang is told so
 * below, so the host never fuses either.
 */
#ifndef ST_CPU_EXPF_H
#define ST_CPU_EXPF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define ST_HD __host__ __device__
#else
#define ST_HD
#endif

#if defined(__clang__) && !defined(__CUDACC__)
#pragma STDC FP_CONTRACT OFF
#endif

ST_HD static inline double st_expf_mul(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

ST_HD static inline double st_expf_add(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

ST_HD static inline float st_expf(float x) {
    if (x != x) return x + x;                      /* NaN (quieted) */
    if (x > 0x1.62e42ep+6f) return (float)INFINITY; /* 88.72283172607421875 */
    if (x < -104.0f) return 0.0f;                  /* e^x < 2^-150: rounds to 0 */
    const double LOG2E = 0x1.71547652b82fep+0;
    const double LN2_HI = 0x1.62e42feep-1;         /* 32 significant bits: k * LN2_HI is exact */
    const double LN2_LO = 0x1.a39ef35793c76p-33;   /* ln 2 - LN2_HI */
    const double SHIFTER = 0x1.8p52;               /* adding and removing it rounds to an integer */
    const double xd = (double)x;
    const double kd = st_expf_add(st_expf_add(st_expf_mul(xd, LOG2E), SHIFTER), -SHIFTER);
    const double r = st_expf_add(st_expf_add(xd, -st_expf_mul(kd, LN2_HI)), -st_expf_mul(kd, LN2_LO));
    /* Horner over 1 / i!, i = 12 down to 0 */
#define ST_EXPF_STEP(c) p = st_expf_add(st_expf_mul(p, r), c)
    double p = 0x1.1eed8eff8d898p-29;
    ST_EXPF_STEP(0x1.ae64567f544e4p-26);
    ST_EXPF_STEP(0x1.27e4fb7789f5cp-22);
    ST_EXPF_STEP(0x1.71de3a556c734p-19);
    ST_EXPF_STEP(0x1.a01a01a01a01ap-16);
    ST_EXPF_STEP(0x1.a01a01a01a01ap-13);
    ST_EXPF_STEP(0x1.6c16c16c16c17p-10);
    ST_EXPF_STEP(0x1.1111111111111p-7);
    ST_EXPF_STEP(0x1.5555555555555p-5);
    ST_EXPF_STEP(0x1.5555555555555p-3);
    ST_EXPF_STEP(0x1p-1);
    ST_EXPF_STEP(0x1p+0);
    ST_EXPF_STEP(0x1p+0);
#undef ST_EXPF_STEP
    const int k = (int)kd;                         /* in [-150, 128] */
    const uint64_t bits = (uint64_t)(k + 1023) << 52;
    double two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    const double e = st_expf_mul(p, two_k);        /* exact: a power of two, no double underflow */
#ifdef __CUDA_ARCH__
    return __double2float_rn(e);
#else
    return (float)e;
#endif
}

#endif
