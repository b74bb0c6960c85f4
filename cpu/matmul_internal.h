/* Internal interface between the matrix-product dispatcher (cpu/matmul.c) and
 * the per-ISA kernels (matmul_generic.c, matmul_avx2.c, matmul_avx512.c).
 *
 * Every kernel computes whole output rows: y[t][r] for all tokens t of a row
 * range, and never splits one dot product between threads, so results are
 * bit-identical for any thread count.
 *
 * ST_ACT_F32 is batch-invariant: on one ISA, y[t][r] depends only on row r and
 * token t, never on n, on the other tokens or on which kernel (row kernels for
 * few tokens, panel GEMM for many) ran. Each ISA fixes one canonical reduction
 * per row and every kernel of that ISA follows it operation for operation:
 *  - generic: s = 0; s += w[k] * x[k] for k in order (w[k] the exact
 *    dequantised weight, as st_dequant_rows).
 *  - SIMD (L lanes: 16 for AVX-512, 8 for AVX2; P = 4 * L partial sums): the
 *    columns, zero-padded to a multiple of P, form chunks of P; column q of a
 *    chunk belongs to partial sum (chain c, lane l) by a per-format order
 *    (F32/BF16: natural; FP4: per 2L columns the even ones then the odd ones;
 *    AVX-512 FP8: the byte-unpack order). Each partial sum is one fused
 *    multiply-add chain over the chunks in order, s = fmaf(w', x, s), with w'
 *    the exact dequantised weight (FP4: e2m1 * scale; FP8: (e4m3 * 2^-8) *
 *    (256 * scale)). Then v = (s0 + s1) + (s2 + s3) over the chains and the
 *    lanes are halved: v[l] + v[l + L/2], ..., down to one value. AVX-512 FP8:
 *    a NaN code anywhere in a row makes its outputs NaN.
 *   Non-NaN results are bit-identical between the kernels; NaN payloads may
 *   differ.
 *
 * ST_ACT_Q8 (FP4 weights only; other formats compute as ST_ACT_F32) is defined
 * by the generic code and every ISA reproduces it bit for bit:
 *  - activations: per token, per block of 128 columns (last block partial):
 *    amax = max|x|, q = rint(x * (127 / amax)) in [-127, 127], xs = amax / 127
 *    (amax < 1e-30: q = 0, xs = 0; a NaN or |x| > 3e38 in the block: xs = NaN). Stored as
 *    u8 = q + 128 in (n, kpad) with kpad = nkb * 128 (padding holds 128).
 *  - weights: per row, per 128-column block, e_ref = max(e of the block's
 *    ue8m0 scales) - 3; each FP4 value becomes the int8
 *    rint(2 * e2m1 * 2^(e - e_ref)) (exact when the block's scales span at most
 *    8x, i.e. almost always), from ST_Q8_LUT[3 - (e - e_ref)] (clamped to 8);
 *    ws = 2^(e_ref - 128) (NaN if any scale of the block is NaN).
 *  - y[t][r] = sum over blocks in order of fmaf((float)isum * xs, ws, acc)
 *    (activation scale first: isum * ws could overflow for scales near 2^127).
 */
#ifndef ST_CPU_MATMUL_INTERNAL_H
#define ST_CPU_MATMUL_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"

#define ST_Q8_BLOCK 128

typedef struct st_mm_job {
    const st_weight *w;
    const float *x; /* (n, cols) F32 activations */
    int64_t n;
    float *y;       /* (n, ldy): this call writes columns [0, rows) */
    int64_t ldy;
    /* ST_ACT_Q8 only (FP4), filled by a quantise kernel before the rows run */
    bool q8;
    const uint8_t *xq; /* (n, kpad) q + 128 */
    const float *xs;   /* (n, nkb) */
    int64_t kpad, nkb;
    /* activations in the layout of the active ISA's GEMM (NULL: the kernels
     * take x as it is), filled by prep_x before the rows run */
    const float *xt;   /* (n, xt_ld) */
    int64_t xt_ld;
    bool own_q8, own_xt; /* false: borrowed from another job (st_mm_job_init_from) */
    const struct st_mm_kernels *kern; /* the ISA's kernels when the job was made */
} st_mm_job;

/* Dequantise rows [r0, r1), columns [c0, c1) to out (r1 - r0, ldo). FP4: c0 even. */
typedef void (*st_dequant_fn)(const st_weight *w, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float *out,
                              int64_t ldo);
/* Rows [r0, r1) of y for every token of the job. scratch: st_mm_scratch_bytes(cols), 64-byte aligned. */
typedef void (*st_rows_fn)(const st_mm_job *j, int64_t r0, int64_t r1, void *scratch);
/* Q8-quantise tokens [t0, t1) of x (n, cols) into xq (n, kpad), xs (n, nkb). */
typedef void (*st_quant_fn)(const float *x, int64_t cols, int64_t t0, int64_t t1, uint8_t *xq, float *xs,
                            int64_t kpad, int64_t nkb);

/* Floats per token of the prepared activations the F32 kernels want for a
 * product of n tokens with w (0: none, x is used as it is). */
typedef int64_t (*st_xt_len_fn)(const st_weight *w, int64_t n);
/* Prepare tokens [t0, t1) of x (n, cols) into xt (n, ld). */
typedef void (*st_prep_x_fn)(const st_weight *w, const float *x, int64_t t0, int64_t t1, float *xt, int64_t ld);

typedef struct st_mm_kernels {
    st_dequant_fn dequant;
    st_rows_fn rows;      /* F32 activations, any format */
    st_rows_fn rows_q8;   /* FP4 with Q8 activations */
    st_quant_fn quant_x;
    st_xt_len_fn xt_len;  /* NULL: never */
    st_prep_x_fn prep_x;
} st_mm_kernels;

extern const st_mm_kernels st_mm_generic, st_mm_avx2, st_mm_avx512;

#define ST_MM_ROW_ALIGN 32 /* rows per thread share: the SIMD panels' height */

/* Tests: called with each block of rows [r0, r1) of w a thread of st_matmul is
 * about to compute (from that thread: st_pool_thread_index() names it). NULL: off. */
extern void (*st_mm_rows_observer)(const st_weight *w, int64_t r0, int64_t r1);

/* A product y = x . W^T as a job: init allocates the prepared activations
 * (Q8 for FP4 with ST_ACT_Q8; the GEMM layout), prepare fills the buffers the
 * job owns (pool split over tokens), rows runs the active ISA's kernel on rows
 * [r0, r1) from any pool thread with that thread's scratch (0 or
 * ST_ERR_NOMEM). init_from makes a job for w on src's activations (same x and
 * n, w->cols == src->w->cols), borrowing src's prepared buffers where the
 * layouts match; src must be prepared before this job's rows run and outlive it. */
int st_mm_job_init(st_mm_job *j, const st_weight *w, const float *x, int64_t n, float *y, st_act act);
int st_mm_job_init_from(st_mm_job *j, const st_weight *w, float *y, st_act act, const st_mm_job *src);
void st_mm_job_prepare(st_pool *pool, st_mm_job *j);
int st_mm_job_rows(const st_mm_job *j, int64_t r0, int64_t r1);
void st_mm_job_free(st_mm_job *j);

/* Kernels of the active ISA (st_cpu_isa()). */
const st_mm_kernels *st_mm_active(void);
/* Per-thread scratch any kernel may use for a weight of `cols` columns. */
size_t st_mm_scratch_bytes(int64_t cols);

/* ST_Q8_LUT[i][nibble] = rint(2 * e2m1(nibble) * 2^(3 - i)); row 8 is all zero. */
extern const int8_t ST_Q8_LUT[9][16];
/* ue8m0 code -> float, all 256 codes (255 is NaN): ST_E8M0[e].f */
typedef union { uint32_t u; float f; } st_f32u;
extern const st_f32u ST_E8M0[256];

/* Q8 weight block scale exponent for row r, block kb: fills shift-table row
 * indices (one per 32-column group, up to 4) and returns ws. */
static inline float st_q8_block_plan(const uint8_t *row_scales, int64_t ngroups_row, int64_t kb, int lut_idx[4],
                                     int *ngroups) {
    int64_t g0 = kb * 4, g1 = g0 + 4 < ngroups_row ? g0 + 4 : ngroups_row;
    int emax = 0;
    int nan = 0;
    for (int64_t g = g0; g < g1; g++) {
        int e = row_scales[g];
        if (e == 255) nan = 1;
        else if (e > emax) emax = e;
    }
    int eref = emax - 3;
    for (int64_t g = g0; g < g1; g++) {
        int s = (int)row_scales[g] - eref; /* <= 3 */
        int i = 3 - s;
        lut_idx[g - g0] = i > 8 ? 8 : i < 0 ? 0 : i; /* i < 0 only for the NaN code 255: ws is NaN then */
    }
    *ngroups = (int)(g1 - g0);
    if (nan) return NAN;
    /* 2^(eref - 128), eref in [-3, 251]: exact, maybe subnormal */
    return ldexpf(1.0f, eref - 128);
}

#endif
