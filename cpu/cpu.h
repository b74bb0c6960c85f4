/* CPU backend: the kernels the model needs, on every weight format.
 *
 * Owns: run-time ISA choice (cpuid, or STRATA_CPU=generic|avx2|avx512), the
 * weight descriptor, and every op in a `_generic` C reference plus AVX2 and
 * AVX-512 versions. Knows nothing of the model: shapes come in as arguments.
 * Never allocates per call on the hot path beyond documented scratch.
 *
 * Layout conventions: matrices are row-major (rows = output features, cols =
 * input features) as in the checkpoints; y = x . W^T.
 */
#ifndef ST_CPU_H
#define ST_CPU_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu/pool.h"

/* ---- instruction sets ------------------------------------------------------ */

typedef enum { ST_ISA_GENERIC = 0, ST_ISA_AVX2 = 1, ST_ISA_AVX512 = 2 } st_isa;

enum { /* st_cpu_features() bits */
    ST_CPU_AVX2 = 1u << 0,      /* with FMA and F16C */
    ST_CPU_AVX512 = 1u << 1,    /* F, BW, VL, DQ */
    ST_CPU_AVX512_VNNI = 1u << 2,
    ST_CPU_AVX512_BF16 = 1u << 3,
    ST_CPU_AVX512_VBMI = 1u << 4,
    ST_CPU_AVX_VNNI = 1u << 5,
};

uint32_t st_cpu_features(void);
st_isa st_cpu_isa_best(void);   /* best this CPU supports */
st_isa st_cpu_isa(void);        /* active: STRATA_CPU if set and supported, else best */
/* Force an ISA (tests). Returns ST_ERR_UNSUPPORTED if the CPU lacks it. */
int st_cpu_set_isa(st_isa isa);
const char *st_isa_name(st_isa isa);

/* ---- weights --------------------------------------------------------------- */

typedef enum {
    ST_WF_F32 = 0,
    ST_WF_BF16 = 1,
    ST_WF_FP8 = 2, /* e4m3, one scale per 128x128 block */
    ST_WF_FP4 = 3, /* e2m1, two per byte (low nibble = even column), one ue8m0 scale per 1x32 */
} st_wfmt;

typedef enum { ST_SCALE_E8M0 = 0, ST_SCALE_F32 = 1 } st_scale_fmt;

/* A weight's rows placed over NUMA nodes: part i, rows [first[i], first[i + 1])
 * (first[0] = 0, first[n] = rows, the cuts multiples of ST_ROW_SPLIT_ALIGN),
 * lives in the memory of the node whose threads are team i of the pool
 * (cpu/pool.h). A product over a pool with exactly n teams computes each part
 * on its own team; otherwise the split is ignored. Results never depend on it:
 * each row is computed whole by one thread either way. */
enum { ST_ROW_SPLIT_MAX = 16, ST_ROW_SPLIT_ALIGN = 32 };
typedef struct st_row_split {
    int n;
    int64_t first[ST_ROW_SPLIT_MAX + 1];
} st_row_split;

typedef struct st_weight {
    st_wfmt fmt;
    int64_t rows, cols;     /* (out_features, in_features) */
    const void *data;       /* F32/BF16: rows*cols elements; FP8: rows*cols bytes; FP4: rows*cols/2 bytes */
    const void *scale;      /* FP8: (ceil(rows/128), ceil(cols/128)); FP4: (rows, cols/32); else NULL */
    st_scale_fmt scale_fmt; /* element type of `scale` (FP4 is always E8M0) */
    const st_row_split *split; /* NULL: no NUMA split (see st_row_split) */
} st_weight;

/* Bytes of data / scale for a weight of that shape and format. */
uint64_t st_weight_data_bytes(st_wfmt fmt, int64_t rows, int64_t cols);
uint64_t st_weight_scale_bytes(st_wfmt fmt, st_scale_fmt sf, int64_t rows, int64_t cols);
/* Both: the bytes a product over w reads. */
static inline uint64_t st_weight_bytes(const st_weight *w) {
    return st_weight_data_bytes(w->fmt, w->rows, w->cols) + st_weight_scale_bytes(w->fmt, w->scale_fmt, w->rows, w->cols);
}
/* 0, or ST_ERR_UNSUPPORTED/INVALID with a message if the kernels cannot take it
 * (e.g. FP4 needs cols % 32 == 0). `what` names the tensor in the message. */
int st_weight_check(const st_weight *w, const char *what);

/* Dequantise rows [r0, r1) to F32: out is (r1 - r0, cols). */
void st_dequant_rows(const st_weight *w, int64_t r0, int64_t r1, float *out);

/* ---- matrix products ------------------------------------------------------- */

typedef enum {
    ST_ACT_F32 = 0, /* exact: dequantised weights times F32 activations, F32 sums */
    ST_ACT_Q8 = 1,  /* FP4 weights: activations to int8 per 128 columns, VNNI GEMM (~2.4x the F32
                     * path); NMSE ~1e-5, bound 1e-4 in tests/test_matmul.c. Other formats: as F32.
                     * Exact definition: cpu/matmul_internal.h */
} st_act;

/* y (n, rows) = x (n, cols) . W^T. n == 1 is the GEMV path. Threads split rows.
 * Returns 0 or a negative status (unsupported shape/format, no memory). */
int st_matmul(st_pool *pool, const st_weight *w, const float *x, int64_t n, float *y, st_act act);
/* Same with BF16 activations. */
int st_matmul_bf16(st_pool *pool, const st_weight *w, const uint16_t *x, int64_t n, float *y, st_act act);

/* Routed/shared expert: w1, w3 (inter, dim); w2 (dim, inter). */
typedef struct st_expert_w { st_weight w1, w3, w2; } st_expert_w;

/* For each token i < n: y[i] += coef[i] * w2(silu(min(w1 x_i, limit)) * clamp(w3 x_i, -limit, limit)).
 * coef may be NULL (1.0). The coefficient multiplies the hidden before w2, in F32
 * (as the official code does). limit <= 0 disables clamping. x (n, dim), y (n, dim). */
int st_expert_ffn(st_pool *pool, const st_expert_w *e, const float *x, int64_t n, const float *coef,
                  float limit, float *y, st_act act);
/* The same n tokens through ne experts of one shape (decode: the routed experts
 * of a token): y[i] += sum over k in order of st_expert_ffn(e[k], coef + k * n),
 * bit-identical to those ne calls, in two pool runs. coef (ne, n) or NULL. */
int st_experts_ffn(st_pool *pool, const st_expert_w *const *e, int ne, const float *x, int64_t n, const float *coef,
                   float limit, float *y, st_act act);

/* ---- elementwise and small ops ---------------------------------------------- */

/* Hidden units [k0, k1) of n tokens, in place in g (n, inter):
 * g = silu(min(g, limit)) * clamp(u, -limit, limit), times coef[i] (coef may be
 * NULL); limit <= 0: no clamp. silu(a) = a / (1 + st_expf(-a)) (cpu/expf.h): the
 * same bits on every ISA and on the GPU. */
void st_swiglu(float *g, const float *u, int64_t n, int64_t inter, int64_t k0, int64_t k1, const float *coef,
               float limit);

/* y = x * rsqrt(mean(x^2) + eps) * w (w may be NULL: no weight). In place allowed. */
void st_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y);
void st_rmsnorm_bf16w(const float *x, const uint16_t *w, int64_t n, float eps, float *y);
/* Numerically stable softmax in place. */
void st_softmax(float *x, int64_t n);

typedef struct st_rope_cfg {
    int rope_dims;          /* rotated dims at the END of each head (even) */
    double theta;           /* base */
    bool yarn;              /* apply YaRN frequency interpolation */
    double factor;          /* YaRN scaling factor */
    int64_t original_max_pos;
    double beta_fast, beta_slow;
} st_rope_cfg;

/* inv_freq[rope_dims/2] with YaRN interpolation as the official code computes it. */
void st_rope_inv_freq(const st_rope_cfg *cfg, float *inv_freq);
/* Rotate pairs (2i, 2i+1) of the last rope_dims dims of each of n_heads heads of
 * width head_dim by angle pos*inv_freq[i] (inverse: by -angle). */
void st_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int rope_dims, const float *inv_freq,
                   int64_t pos, bool inverse);

/* In-place normalised Walsh-Hadamard (Sylvester order, scaled by 1/sqrt(n)) of
 * n_vec consecutive vectors of length n (power of two). */
void st_hadamard(float *x, int64_t n_vec, int64_t n);

/* Indices of the k largest of x[n] in descending order of value; ties go to the
 * lower index; NaN ranks lowest. k <= n. vals may be NULL. */
void st_topk(const float *x, int64_t n, int64_t k, int32_t *idx, float *vals);
/* The same result over the pool's threads: each keeps the k best of its share of
 * x, then the caller merges them by the same ranking (allocates nth * k items
 * of 8 bytes). Rows shorter than ST_TOPK_POOL_MIN (or shares shorter than 2k)
 * run as st_topk on the caller. */
enum { ST_TOPK_POOL_MIN = 1 << 16 };
void st_topk_pool(st_pool *pool, const float *x, int64_t n, int64_t k, int32_t *idx, float *vals);

#endif
