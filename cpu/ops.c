/* Small ops (RMSNorm, softmax, RoPE, Hadamard, top-k): argument checks, the
 * parts every instruction set shares (inverse rms, RoPE frequency and cos/sin
 * tables, the top-k heap), and the run-time choice of the variant
 * (cpu/ops_generic.c, cpu/ops_avx2.c, cpu/ops_avx512.c) by st_cpu_isa().
 *
 * Numerics follow the official DeepSeek-V4 code (F32 as torch computes it):
 *   RMSNorm  y = w * (x * (1 / sqrtf(mean(x^2) + eps))), the mean accumulated in double.
 *   RoPE     inv_freq and YaRN ramp in F32 like precompute_freqs_cis; angle = (float)pos * inv_freq.
 * Must never allocate on these paths except the top-k heap when k > 1024. */
#include <math.h>
#include <stdlib.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "cpu/ops_internal.h"

#define DISPATCH(fn, ...)                                            \
    do {                                                             \
        switch (st_cpu_isa()) {                                      \
        case ST_ISA_AVX512: fn##_avx512(__VA_ARGS__); break;         \
        case ST_ISA_AVX2: fn##_avx2(__VA_ARGS__); break;             \
        default: fn##_generic(__VA_ARGS__); break;                   \
        }                                                            \
    } while (0)

static double sumsq(const float *x, int64_t n) {
    switch (st_cpu_isa()) {
    case ST_ISA_AVX512: return st_sumsq_avx512(x, n);
    case ST_ISA_AVX2: return st_sumsq_avx2(x, n);
    default: return st_sumsq_generic(x, n);
    }
}

/* torch: var = x.square().mean(-1); x * torch.rsqrt(var + eps), rsqrt = 1 / sqrt in F32. */
static float inv_rms(const float *x, int64_t n, float eps) {
    float var = (float)(sumsq(x, n) / (double)n);
    return 1.0f / sqrtf(var + eps);
}

void st_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y) {
    if (n <= 0) return;
    float r = inv_rms(x, n, eps);
    DISPATCH(st_scale_mul, x, r, w, n, y);
}

void st_rmsnorm_bf16w(const float *x, const uint16_t *w, int64_t n, float eps, float *y) {
    if (n <= 0) return;
    float r = inv_rms(x, n, eps);
    if (!w) DISPATCH(st_scale_mul, x, r, NULL, n, y);
    else DISPATCH(st_scale_mul_bf16w, x, r, w, n, y);
}

void st_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    DISPATCH(st_softmax, x, n);
}

/* ---- RoPE ------------------------------------------------------------------ */

/* Official find_correction_dim, in double like Python's math. */
static double correction_dim(double rotations, int dim, double base, double max_pos) {
    return dim * log(max_pos / (rotations * 2 * M_PI)) / (2 * log(base));
}

void st_rope_inv_freq(const st_rope_cfg *cfg, float *inv_freq) {
    int dim = cfg->rope_dims, half = dim / 2;
    ST_ASSERT(dim > 0 && dim % 2 == 0 && cfg->theta > 0);
    for (int i = 0; i < half; i++) {
        /* torch: arange(0, dim, 2, f32) / dim is a rounded F32 quotient; base ** e
         * comes out correctly rounded to F32 (checked against torch in tests/data). */
        float e = (float)(2 * i) / (float)dim;
        float p = (float)pow(cfg->theta, (double)e);
        inv_freq[i] = 1.0f / p;
    }
    if (!cfg->yarn || cfg->original_max_pos <= 0) return;
    double lo = floor(correction_dim(cfg->beta_fast, dim, cfg->theta, (double)cfg->original_max_pos));
    double hi = ceil(correction_dim(cfg->beta_slow, dim, cfg->theta, (double)cfg->original_max_pos));
    lo = lo < 0 ? 0 : lo;
    hi = hi > dim - 1 ? dim - 1 : hi;
    if (lo == hi) hi += 0.001;
    float span = (float)(hi - lo), factor = (float)cfg->factor;
    for (int i = 0; i < half; i++) {
        float ramp = ((float)i - (float)lo) / span;
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float smooth = 1.0f - ramp;
        float f = inv_freq[i];
        inv_freq[i] = f / factor * (1.0f - smooth) + f * smooth;
    }
}

void st_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int rope_dims, const float *inv_freq, int64_t pos,
                   bool inverse) {
    ST_ASSERT(rope_dims >= 0 && rope_dims % 2 == 0 && rope_dims <= head_dim);
    float cos2[ST_ROPE_CHUNK], sin2[ST_ROPE_CHUNK];
    float fpos = (float)pos; /* torch.outer(arange(seqlen), freqs) in F32 */
    for (int d0 = 0; d0 < rope_dims; d0 += ST_ROPE_CHUNK) {
        int len = rope_dims - d0 < ST_ROPE_CHUNK ? rope_dims - d0 : ST_ROPE_CHUNK;
        for (int d = 0; d < len; d += 2) {
            float a = fpos * inv_freq[(d0 + d) / 2];
            float c = cosf(a), s = sinf(a);
            if (inverse) s = -s;
            cos2[d] = cos2[d + 1] = c;
            sin2[d] = -s;
            sin2[d + 1] = s;
        }
        DISPATCH(st_rope_rotate, x + (head_dim - rope_dims) + d0, n_heads, head_dim, len, cos2, sin2);
    }
}

/* ---- Hadamard, top-k ----------------------------------------------------------- */

void st_hadamard(float *x, int64_t n_vec, int64_t n) {
    ST_ASSERT(n > 0 && (n & (n - 1)) == 0);
    if (n_vec <= 0) return;
    DISPATCH(st_hadamard, x, n_vec, n);
}

/* heap (k) = the k best of x[lo, hi) (hi - lo >= k), as indices lo.., as a heap. */
static void topk_heap(const float *x, int64_t lo, int64_t hi, int64_t k, st_topk_item *heap) {
    for (int64_t i = 0; i < k; i++) heap[i] = (st_topk_item){x[lo + i], (int32_t)(lo + i)};
    st_topk_heap_build(heap, k);
    /* The rest in blocks visited out of order (a stride coprime with their count):
     * scores with a trend (rising with position, as an indexer's may) would make
     * every element of an in-order scan beat the worst kept and cost a heap
     * update (k = 1024 of 262K rising scores: 14-26 ms); out of order, the kept
     * set soon holds values from all over and the filter rejects most. The
     * result depends on the order of nothing: the ranking is total. */
    const int64_t first = lo + k, block = ST_MAX((int64_t)4096, 4 * k), nb = (hi - first + block - 1) / block;
    int64_t stride = nb > 2 ? nb * 5 / 8 : 1;
    while (stride > 1 && st_gcd64(stride, nb) != 1) stride--;
    for (int64_t j = 0, b = 0; j < nb; j++, b = (b + stride) % nb) {
        const int64_t at = first + b * block, len = ST_MIN(block, hi - at);
        DISPATCH(st_topk_scan, x + at, len, at, k, heap);
    }
}

void st_topk(const float *x, int64_t n, int64_t k, int32_t *idx, float *vals) {
    ST_ASSERT(k <= n && n <= INT32_MAX);
    if (k <= 0) return;
    st_topk_item stack_heap[1024], *heap = stack_heap;
    if (k > (int64_t)ST_ARRAY_LEN(stack_heap)) {
        heap = malloc((size_t)k * sizeof *heap);
        ST_ASSERT(heap != NULL); /* k is at most n: a few MB for the largest vocabularies */
    }
    topk_heap(x, 0, n, k, heap);
    st_topk_finish(heap, k, idx, vals);
    if (heap != stack_heap) free(heap);
}

typedef struct {
    const float *x;
    int64_t n, k;
    st_topk_item *heaps; /* (nth, k) */
} topk_share;

static void topk_share_task(void *ctx, int ith, int nth) {
    topk_share *t = ctx;
    int64_t lo, hi;
    st_split(t->n, ith, nth, 16, &lo, &hi);
    topk_heap(t->x, lo, hi, t->k, t->heaps + (int64_t)ith * t->k);
}

void st_topk_pool(st_pool *pool, const float *x, int64_t n, int64_t k, int32_t *idx, float *vals) {
    ST_ASSERT(k <= n && n <= INT32_MAX);
    const int nth = pool ? st_pool_size(pool) : 1;
    st_topk_item *heaps = NULL;
    /* worth it on long rows only, and every thread's share must hold k (16-aligned shares) */
    if (nth < 2 || k <= 0 || n < ST_TOPK_POOL_MIN || n / nth < 2 * k + 32 ||
        !(heaps = malloc((size_t)nth * (size_t)k * sizeof *heaps))) {
        st_topk(x, n, k, idx, vals);
        return;
    }
    topk_share t = {.x = x, .n = n, .k = k, .heaps = heaps};
    st_pool_run(pool, topk_share_task, &t);
    for (int64_t i = k; i < (int64_t)nth * k; i++) st_topk_offer(heaps, k, heaps[i].v, heaps[i].i);
    st_topk_finish(heaps, k, idx, vals);
    free(heaps);
}
