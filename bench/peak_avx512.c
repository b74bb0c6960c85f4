/* Peak arithmetic rates of one core for the instructions the GEMM paths can
 * use, so `strata bench kernels` shows why FP4 GEMM takes the int8 path:
 * F32 FMA (vfmadd231ps), int8 dot (vpdpbusd), BF16 dot (vdpbf16ps), all zmm,
 * 12 independent chains. Counted as 2 ops per multiply-add. */
#include <immintrin.h>

#include "base/base.h"
#include "bench/bench.h"

#define CHAINS 12
#define ITERS 4000000

static double fma_rate(void) {
    __m512 a[CHAINS], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    double t0 = st_time_s();
    for (int it = 0; it < ITERS; it++)
        _Pragma("GCC unroll 16") for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    double t = st_time_s() - t0;
    __m512 s = a[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, a[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)ITERS * CHAINS * 16 * 2 / t / 1e9;
}

static double vnni_rate(void) {
    __m512i a[CHAINS], b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-2);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_epi32(i);
    double t0 = st_time_s();
    for (int it = 0; it < ITERS; it++)
        _Pragma("GCC unroll 16") for (int i = 0; i < CHAINS; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
    double t = st_time_s() - t0;
    __m512i s = a[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_epi32(s, a[i]);
    /* the chains wrap around: sum the lanes as unsigned (the int reduction would overflow, UB) */
    uint32_t lanes[16], sum = 0;
    _mm512_storeu_si512(lanes, s);
    for (int i = 0; i < 16; i++) sum += lanes[i];
    volatile uint32_t sink = sum;
    (void)sink;
    return (double)ITERS * CHAINS * 64 * 2 / t / 1e9;
}

static double bf16_rate(void) {
    __m512 a[CHAINS];
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3400);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    double t0 = st_time_s();
    for (int it = 0; it < ITERS; it++)
        _Pragma("GCC unroll 16") for (int i = 0; i < CHAINS; i++) a[i] = _mm512_dpbf16_ps(a[i], b, c);
    double t = st_time_s() - t0;
    __m512 s = a[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, a[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)ITERS * CHAINS * 32 * 2 / t / 1e9;
}

void bench_peak_avx512(double *fma_gflops, double *vnni_gops, double *bf16_gflops) {
    *fma_gflops = fma_rate();
    *vnni_gops = vnni_rate();
    *bf16_gflops = bf16_rate();
}
