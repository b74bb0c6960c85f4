/* Per-instruction-set entry points of the small ops (cpu/ops.c dispatches).
 * Internal to cpu/: the public contract is the "elementwise and small ops"
 * section of cpu/cpu.h. Every variant has the semantics of its _generic one. */
#ifndef ST_CPU_OPS_INTERNAL_H
#define ST_CPU_OPS_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

typedef struct { float v; int32_t i; } st_topk_item;

/* st_sumsq: sum of x^2 accumulated in double. st_scale_mul: y = (x * r) * w
 * (w may be NULL), the RMSNorm tail once the inverse rms r is known.
 * st_topk_scan: offers x[0..n), as indices base.., to the heap of the k best
 * so far (built, root = worst): in any order of blocks (a candidate equal to
 * the root goes to the exact comparison, and any when the root is NaN). */
#define ST_OPS_DECLARE(sfx)                                                                           \
    double st_sumsq_##sfx(const float *x, int64_t n);                                                 \
    void st_scale_mul_##sfx(const float *x, float r, const float *w, int64_t n, float *y);           \
    void st_scale_mul_bf16w_##sfx(const float *x, float r, const uint16_t *w, int64_t n, float *y);  \
    void st_softmax_##sfx(float *x, int64_t n);                                                       \
    void st_rope_rotate_##sfx(float *x, int64_t n_heads, int64_t head_stride, int64_t len,           \
                              const float *cos2, const float *sin2);                                  \
    void st_hadamard_##sfx(float *x, int64_t n_vec, int64_t n);                                       \
    void st_topk_scan_##sfx(const float *x, int64_t n, int64_t base, int64_t k, st_topk_item *heap);

ST_OPS_DECLARE(generic)
ST_OPS_DECLARE(avx2)
ST_OPS_DECLARE(avx512)

/* st_rope_rotate rotates x[h * head_stride + d], d < len (even), for each head h,
 * with per-dimension tables for those len dims: cos2[2i] = cos2[2i+1] = cos(a_i); sin2[2i] = -sin(a_i), sin2[2i+1] = +sin(a_i)
 * (signs of the inverse already folded in), so that for a pair (a, b):
 * out = x * cos2 + swap_pairs(x) * sin2 gives (a c - b s, b c + a s). */
enum { ST_ROPE_CHUNK = 256 }; /* rope dims handled per table */

/* Top-k helpers: the heap of the k best (root = worst) and its final sort. */
/* a ranks above b: larger value, equal values -> lower index, NaN lowest. */
static inline bool st_topk_better(st_topk_item a, st_topk_item b) {
    bool an = a.v != a.v, bn = b.v != b.v;
    if (an || bn) return an && bn ? a.i < b.i : bn;
    if (a.v != b.v) return a.v > b.v;
    return a.i < b.i;
}
void st_topk_heap_sift(st_topk_item *h, int64_t k, int64_t at);
void st_topk_heap_build(st_topk_item *h, int64_t k);
void st_topk_finish(st_topk_item *h, int64_t k, int32_t *idx, float *vals);
/* Offer x[i]: kept when it ranks above the worst kept. */
static inline void st_topk_offer(st_topk_item *h, int64_t k, float v, int32_t i) {
    st_topk_item c = {v, i};
    if (st_topk_better(c, h[0])) { h[0] = c; st_topk_heap_sift(h, k, 0); }
}

#endif
