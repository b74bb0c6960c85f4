/* The routed expert FFN's arithmetic, as __host__ __device__ code shared by the
 * kernels and their host emulation (kernels/expert_ffn.cu): every operation the
 * CPU does, in its order, with its rounding, so results are bit-identical.
 *
 *  - weights: the exact dequantised w' each CPU ISA multiplies with
 *    (cpu/matmul_generic.c, matmul_avx2.c, matmul_avx512.c);
 *  - products: the canonical reductions of cpu/matmul_internal.h. Generic: one
 *    serial sum s = s + w'x. SIMD with L lanes: partial sum j (chain j / L,
 *    lane j % L) is an fmaf chain over chunks of P = 4L columns (zero padded),
 *    column of j inside a chunk by the format's order; then (s0 + s1) + (s2 + s3)
 *    per lane and lane halving;
 *  - SwiGLU (cpu/expert.c, engine/moe.c expert_apply) with st_expf;
 *  - st_round_bf16 (cpu/quant.c) and st_act_quant (engine/attention.c: e4m3,
 *    one power-of-two scale per 128 values).
 * Every float operation is an explicit IEEE one (__fmul_rn, __fmaf_rn, ... on
 * the device) so nvcc cannot contract or reorder it.
 */
#ifndef ST_KERNELS_FFN_LANES_CUH
#define ST_KERNELS_FFN_LANES_CUH

#include <math.h>

#include "cpu/expf.h"
#include "kernels/common.cuh"

#define ST_WF_FP8_ 2 /* st_wfmt values (cpu/cpu.h), checked in expert_ffn.cu */
#define ST_WF_FP4_ 3

constexpr int FFN_NT = 4; /* tokens per pass over a weight row */

/* ---- IEEE single operations, never fused ------------------------------------ */

__host__ __device__ static inline float ffn_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
__host__ __device__ static inline float ffn_add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
__host__ __device__ static inline float ffn_div(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
__host__ __device__ static inline float ffn_fma(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    return __fmaf_rn(a, b, c);
#else
    return fmaf(a, b, c);
#endif
}
__host__ __device__ static inline uint32_t ffn_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- weights --------------------------------------------------------------------- */

__host__ __device__ static inline float ffn_e4m3(uint8_t b) {
    float o[4];
    st_dev_e4m3x4(b, o);
    return o[0];
}

/* FP8 block scale of row r, 128-column block kb. */
__host__ __device__ static inline float ffn_fp8_scale(const st_gpu_mat &w, int64_t r, int64_t kb) {
    const int64_t i = (r / 128) * ((w.cols + 127) / 128) + kb;
    return w.scale_f32 ? st_ld(static_cast<const float *>(w.scale) + i)
                       : st_dev_e8m0(st_ld(static_cast<const uint8_t *>(w.scale) + i));
}

__host__ __device__ static inline float ffn_fp4(const st_gpu_mat &w, int64_t r, int64_t k) {
    const uint8_t b = st_ld(static_cast<const uint8_t *>(w.data) + r * (w.cols / 2) + k / 2);
    const uint8_t s = st_ld(static_cast<const uint8_t *>(w.scale) + r * (w.cols / 32) + k / 32);
    return ffn_mul(st_dev_e2m1(k & 1 ? b >> 4 : b & 15u), st_dev_e8m0(s)); /* = the SIMD +-(|e2m1| * s) */
}

/* Generic: e2m1 * scale, e4m3 * scale (st_dequant_rows). */
__host__ __device__ static inline float ffn_w_generic(const st_gpu_mat &w, int64_t r, int64_t k) {
    if (w.fmt == ST_WF_FP4_) return ffn_fp4(w, r, k);
    return ffn_mul(ffn_e4m3(st_ld(static_cast<const uint8_t *>(w.data) + r * w.cols + k)), ffn_fp8_scale(w, r, k / 128));
}

/* SIMD: column k (maybe past the row: padding) of the chunk starting at c0.
 * FP4 padding is 0; FP8 is (e4m3 * 2^-8) * (256 * scale), padding decoding the
 * zero byte with the chunk's scale, as the masked loads do. */
__host__ __device__ static inline float ffn_w_simd(const st_gpu_mat &w, int64_t r, int64_t k, int64_t c0) {
    if (w.fmt == ST_WF_FP4_) return k < w.cols ? ffn_fp4(w, r, k) : 0.0f;
    const float vs = ffn_mul(ffn_fp8_scale(w, r, c0 / 128), 256.0f);
    const uint8_t b = k < w.cols ? st_ld(static_cast<const uint8_t *>(w.data) + r * w.cols + k) : 0;
    return ffn_mul(ffn_mul(ffn_e4m3(b), 0x1p-8f), vs);
}

/* ---- products ---------------------------------------------------------------------- */

/* Column inside a chunk of partial sum j = L * chain + lane. */
__host__ __device__ static inline int ffn_simd_col(int fmt, int L, int j) {
    const int c = j / L, l = j % L;
    if (fmt == ST_WF_FP4_) return (c / 2) * 2 * L + 2 * l + (c & 1); /* per 2L: evens, then odds */
    if (L == 16) { /* AVX-512 FP8 byte-unpack order */
        const int base = c == 0 ? 0 : c == 1 ? 32 : c == 2 ? 8 : 40;
        return base + (l < 8 ? l : l + 8);
    }
    return j; /* AVX2 FP8: natural */
}

/* Partial sum j of row r for nt tokens of x (ldx floats apart): acc[t]. */
template <int L>
__host__ __device__ static inline void ffn_simd_partial(const st_gpu_mat &w, int64_t r, int j, const float *x,
                                                        int64_t ldx, int nt, float acc[FFN_NT]) {
    constexpr int P = 4 * L;
    const int64_t nchunk = (w.cols + P - 1) / P;
    const int col = ffn_simd_col(w.fmt, L, j);
    for (int t = 0; t < FFN_NT; t++) acc[t] = 0.0f;
    for (int64_t m = 0; m < nchunk; m++) {
        const int64_t k = m * P + col;
        const float wv = ffn_w_simd(w, r, k, m * P);
        for (int t = 0; t < nt; t++) acc[t] = ffn_fma(wv, k < w.cols ? st_ld(x + t * ldx + k) : 0.0f, acc[t]);
    }
}

/* The 4L partial sums of one output to one value: chains, then lane halving. */
template <int L> __host__ __device__ static inline float ffn_simd_combine(const float *p) {
    float v[L];
    for (int l = 0; l < L; l++) v[l] = ffn_add(ffn_add(p[l], p[L + l]), ffn_add(p[2 * L + l], p[3 * L + l]));
    for (int h = L / 2; h >= 1; h /= 2)
        for (int l = 0; l < h; l++) v[l] = ffn_add(v[l], v[l + h]);
    return v[0];
}

/* Generic: row r for nt tokens, serial sums. */
__host__ __device__ static inline void ffn_generic_dot(const st_gpu_mat &w, int64_t r, const float *x, int64_t ldx,
                                                       int nt, float acc[FFN_NT]) {
    for (int t = 0; t < FFN_NT; t++) acc[t] = 0.0f;
    for (int64_t k = 0; k < w.cols; k++) {
        const float wv = ffn_w_generic(w, r, k);
        for (int t = 0; t < nt; t++) acc[t] = ffn_add(acc[t], ffn_mul(wv, st_ld(x + t * ldx + k)));
    }
}

/* ---- elementwise ---------------------------------------------------------------------- */

/* st_round_bf16 of one value (nearest even, NaN stays NaN). */
__host__ __device__ static inline float ffn_round_bf16(float f) {
    const uint32_t u = ffn_bits(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    const uint32_t quiet = (u | 0x00400000u) & 0xffff0000u;
    return st_dev_bits((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

/* h of one hidden unit: SwiGLU with the clamp, times coef (NULL: none), then
 * official: bf16. As engine/moe.c expert_apply / cpu/expert.c swiglu. */
__host__ __device__ static inline float ffn_swiglu(float a, float c, float limit, const float *coef, int64_t t,
                                                   bool official) {
    if (limit > 0) {
        if (a > limit) a = limit;
        if (c > limit) c = limit;
        if (c < -limit) c = -limit;
    }
    float h = ffn_mul(ffn_div(a, ffn_add(1.0f, st_expf(-a))), c);
    if (coef) h = ffn_mul(h, st_ld(coef + t));
    return official ? ffn_round_bf16(h) : h;
}

/* st_pow2_ceil: frexpf's m == 0.5 ? 2^(e-1) : 2^e, exactly; for Inf/NaN glibc's
 * frexpf gives e = 0, hence 1. */
__host__ __device__ static inline float ffn_pow2_ceil(float v) {
    const uint32_t u = ffn_bits(v) & 0x7fffffffu, e = u >> 23, m = u & 0x7fffffu;
    if (e == 255) return 1.0f;
    if (e > 0) return m == 0 ? st_dev_bits(u) : e + 1 == 255 ? st_dev_bits(0x7f800000u) : st_dev_bits((e + 1) << 23);
    if (m == 0) return 1.0f; /* frexpf(0): 0 != 0.5, e = 0 */
    uint32_t p = 1;          /* subnormal: the smallest power of two >= m ulps */
    while (p < m) p <<= 1;
    return p == 0x800000u ? st_dev_bits(0x00800000u) : st_dev_bits(p);
}

/* Nearest e4m3 value of a finite |q| <= 448, ties to even (cpu/quant.c round_e4m3). */
__host__ __device__ static inline float ffn_round_e4m3(float q) {
    const uint32_t u = ffn_bits(q), sign = u & 0x80000000u, a = u & 0x7fffffffu;
    const uint32_t sub = ffn_bits(ffn_add(ffn_add(st_dev_bits(a), 0x1p14f), -0x1p14f));
    const uint32_t nrm = (a + 0x7ffffu + ((a >> 20) & 1u)) & ~0xfffffu;
    return st_dev_bits((a < 0x3c800000u ? sub : nrm) | sign);
}

/* st_act_quant of one block of len (<= 128) values, in place: amax floored at
 * 1e-4, scale 2^ceil(log2(amax / 448)), e4m3 rounding; NaN stays NaN. */
__host__ __device__ static inline void ffn_act_quant_block(float *x, int len) {
    float amax = 0.0f;
    for (int i = 0; i < len; i++) {
        const float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    if (!(amax >= 1e-4f)) amax = 1e-4f;
    const float scale = ffn_pow2_ceil(ffn_mul(amax, 1.0f / 448.0f));
    const float inv = ffn_div(1.0f, scale); /* exact: a power of two */
    for (int i = 0; i < len; i++) {
        float q = ffn_mul(x[i], inv);
        q = q > 448.0f ? 448.0f : q;
        q = q < -448.0f ? -448.0f : q;
        x[i] = q != q ? q : ffn_mul(ffn_round_e4m3(q), scale);
    }
}

#endif
