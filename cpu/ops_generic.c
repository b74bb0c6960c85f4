/* Small ops, plain C reference (see cpu/ops_internal.h). Every SIMD variant is
 * tested against these. Built for baseline x86-64 with -std=c11, so there is no
 * FMA contraction: each product and sum is rounded as written. */
#include <math.h>
#include <string.h>

#include "cpu/formats.h"
#include "cpu/ops_internal.h"

double st_sumsq_generic(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

void st_scale_mul_generic(const float *x, float r, const float *w, int64_t n, float *y) {
    if (w) for (int64_t i = 0; i < n; i++) y[i] = (x[i] * r) * w[i];
    else for (int64_t i = 0; i < n; i++) y[i] = x[i] * r;
}

void st_scale_mul_bf16w_generic(const float *x, float r, const uint16_t *w, int64_t n, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * r) * st_bf16_to_f32(w[i]);
}

void st_softmax_generic(float *x, int64_t n) {
    if (n <= 0) return;
    float m = -INFINITY;
    bool nan = false;
    for (int64_t i = 0; i < n; i++) {
        if (x[i] > m) m = x[i];
        nan |= x[i] != x[i];
    }
    if (nan) { for (int64_t i = 0; i < n; i++) x[i] = NAN; return; }
    if (m == -INFINITY) { memset(x, 0, (size_t)n * sizeof *x); return; }
    double s = 0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    float sf = (float)s;
    for (int64_t i = 0; i < n; i++) x[i] /= sf;
}

void st_rope_rotate_generic(float *x, int64_t n_heads, int64_t head_stride, int64_t len, const float *cos2,
                            const float *sin2) {
    for (int64_t h = 0; h < n_heads; h++) {
        float *r = x + h * head_stride;
        for (int64_t d = 0; d < len; d += 2) {
            float a = r[d], b = r[d + 1], c = cos2[d], s = sin2[d + 1];
            r[d] = a * c - b * s;
            r[d + 1] = b * c + a * s;
        }
    }
}

void st_hadamard_generic(float *x, int64_t n_vec, int64_t n) {
    float scale = (float)(1.0 / sqrt((double)n));
    for (int64_t v = 0; v < n_vec; v++) {
        float *p = x + v * n;
        for (int64_t h = 1; h < n; h *= 2)
            for (int64_t i = 0; i < n; i += 2 * h)
                for (int64_t j = i; j < i + h; j++) {
                    float a = p[j], b = p[j + h];
                    p[j] = a + b;
                    p[j + h] = a - b;
                }
        for (int64_t i = 0; i < n; i++) p[i] *= scale;
    }
}

/* ---- top-k: a min-heap (root = the worst kept) of the k best ------------------ */

void st_topk_heap_sift(st_topk_item *h, int64_t k, int64_t at) {
    st_topk_item it = h[at];
    for (;;) {
        int64_t c = 2 * at + 1;
        if (c >= k) break;
        if (c + 1 < k && st_topk_better(h[c], h[c + 1])) c++; /* the worse child */
        if (!st_topk_better(it, h[c])) break;
        h[at] = h[c];
        at = c;
    }
    h[at] = it;
}

void st_topk_heap_build(st_topk_item *h, int64_t k) {
    for (int64_t i = k / 2 - 1; i >= 0; i--) st_topk_heap_sift(h, k, i);
}

/* Pop the worst repeatedly into the tail: the array ends up best-first. */
void st_topk_finish(st_topk_item *h, int64_t k, int32_t *idx, float *vals) {
    for (int64_t m = k; m > 1; m--) {
        st_topk_item worst = h[0];
        h[0] = h[m - 1];
        h[m - 1] = worst;
        st_topk_heap_sift(h, m - 1, 0);
    }
    for (int64_t i = 0; i < k; i++) {
        idx[i] = h[i].i;
        if (vals) vals[i] = h[i].v;
    }
}

void st_topk_scan_generic(const float *x, int64_t n, int64_t base, int64_t k, st_topk_item *h) {
    for (int64_t i = 0; i < n; i++) st_topk_offer(h, k, x[i], (int32_t)(base + i));
}
