/* Attention kernels, portable C reference (see attn_internal.h). Dot products
 * keep 8 partial sums so the compiler can vectorise them at baseline x86-64. */
#include <math.h>
#include <string.h>

#include "cpu/attn_internal.h"

static float dot(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

void st_attn_scores_generic(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                            float *s) {
    for (int64_t h = 0; h < nh; h++)
        for (int64_t c = 0; c < n; c++) s[h * n + c] = dot(q + h * d, rows[c], d) * scale;
}

void st_attn_softmax_generic(float *s, int64_t n, float sink) {
    float mx = sink;
    for (int64_t c = 0; c < n; c++) mx = s[c] > mx ? s[c] : mx;
    float den = expf(sink - mx);
    for (int64_t c = 0; c < n; c++) {
        s[c] = expf(s[c] - mx);
        den += s[c];
    }
    const float inv = 1.0f / den;
    for (int64_t c = 0; c < n; c++) s[c] *= inv;
}

/* AVX2 has no exp of its own: the generic softmax serves it. */
void st_attn_softmax_avx2(float *s, int64_t n, float sink) { st_attn_softmax_generic(s, n, sink); }

void st_attn_wsum_generic(const float *p, int64_t ldp, int64_t nh, const float *const *rows, int64_t n, int64_t d,
                          int acc, float *o) {
    for (int64_t h = 0; h < nh; h++) {
        float *oh = o + h * d;
        if (!acc) memset(oh, 0, (size_t)d * sizeof(float));
        for (int64_t c = 0; c < n; c++) {
            const float pc = p[h * ldp + c], *v = rows[c];
            for (int64_t k = 0; k < d; k++) oh[k] += pc * v[k];
        }
    }
}

void st_index_scores_generic(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n,
                             float *out) {
    for (int64_t s = 0; s < n; s++) {
        float acc = 0;
        for (int64_t h = 0; h < H; h++) {
            float v = dot(q + h * d, k + s * d, d);
            if (v > 0) acc += v * w[h];
        }
        out[s] = acc;
    }
}
