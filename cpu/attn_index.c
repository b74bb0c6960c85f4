/* Indexer scores over packed e2m1 keys with exact block dot products (contract
 * in cpu/attn.h): packing of the quantised q into integer codes and power-of-
 * two scales, the portable kernel that defines the results, and the dispatch
 * to cpu/attn_index_avx2.c / cpu/attn_index_avx512.c (same bits). */
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn.h"
#include "cpu/attn_internal.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"

enum { MAX_D = 4096 }; /* the portable kernel's per-row buffers live on the stack */

/* 2 * e2m1 value of a nibble: the key codes as integers. */
static const int8_t key_code2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

size_t st_index_q_bytes(int64_t H, int64_t d) {
    const size_t hb = (size_t)(H * ST_DIV_UP(d, 32));
    return up64(hb * 32) + up64(hb * sizeof(float)) + up64(hb * sizeof(int32_t)) + up64(hb * 8 * sizeof(int32_t));
}

int st_index_q_pack(const float *q, int64_t H, int64_t d, void *buf, st_index_q *out) {
    if (H <= 0 || d <= 0 || d > MAX_D) return 0;
    const int64_t nb = ST_DIV_UP(d, 32);
    const size_t hb = (size_t)(H * nb);
    unsigned char *p = buf;
    out->H = H;
    out->d = d;
    out->nb = nb;
    out->codes = (int8_t *)p;
    out->scale = (float *)(p += up64(hb * 32));
    out->corr = (int32_t *)(p += up64(hb * sizeof(float)));
    out->perm = (int32_t *)(p + up64(hb * sizeof(int32_t)));
    memset(out->codes, 0, hb * 32);
    for (int64_t h = 0; h < H; h++)
        for (int64_t b = 0; b < nb; b++) {
            const float *x = q + h * d + b * 32;
            const int64_t len = ST_MIN(32, d - b * 32);
            int8_t *c = out->codes + (h * nb + b) * 32;
            float amax = 0;
            for (int64_t i = 0; i < len; i++) {
                const float a = fabsf(x[i]);
                if (!(a <= 3.4e38f)) return 0; /* Inf/NaN */
                amax = a > amax ? a : amax;
            }
            /* amax < 2^e: with 2^(e-4) as the unit every value is below 16 in size;
             * e2m1-quantised blocks are integers in that unit (checked exactly) */
            int e = 0;
            if (amax > 0) frexpf(amax, &e);
            const int E = e - 4;
            if (E - 1 < -149 || E - 1 > 110) return 0; /* idot (< 2^13) * 2^(E-1) must stay exact in f32 */
            int32_t sum = 0;
            for (int64_t i = 0; i < len; i++) {
                const float v = ldexpf(x[i], -E);
                if (v != truncf(v) || fabsf(v) > 15.0f || ldexpf(v, E) != x[i]) return 0;
                c[i] = (int8_t)v;
                sum += c[i];
            }
            out->scale[h * nb + b] = ldexpf(1.0f, E - 1);
            out->corr[h * nb + b] = 12 * sum;
            /* dword 2m + half: the codes of elements 8m + 2t + half, t = 0..3 (the
             * low / high nibbles of the 4 key bytes 4m..4m+3) */
            for (int m = 0; m < 4; m++)
                for (int half = 0; half < 2; half++) {
                    uint32_t w = 0;
                    for (int t = 0; t < 4; t++) w |= (uint32_t)(uint8_t)c[8 * m + 2 * t + half] << (8 * t);
                    out->perm[(h * nb + b) * 8 + 2 * m + half] = (int32_t)w;
                }
        }
    return 1;
}

void st_index_scores_e2m1_generic(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride,
                                  int64_t n, float *out) {
    const int64_t H = q->H, d = q->d, nb = q->nb;
    int8_t kc[MAX_D];
    float ks[MAX_D / 32];
    for (int64_t s = 0; s < n; s++) {
        const uint8_t *row = keys + (size_t)s * stride, *scales = row + (d + 1) / 2;
        memset(kc, 0, (size_t)(nb * 32));
        for (int64_t i = 0; i < d; i++) kc[i] = key_code2[(row[i / 2] >> (4 * (i & 1))) & 15];
        for (int64_t b = 0; b < nb; b++) ks[b] = st_f32_from_bits((uint32_t)scales[b] << 23);
        float acc = 0.0f;
        for (int64_t h = 0; h < H; h++) {
            const int8_t *qc = q->codes + h * nb * 32;
            float score = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t idot = 0;
                for (int i = 0; i < 32; i++) idot += (int32_t)qc[b * 32 + i] * kc[b * 32 + i];
                const float t = ((float)idot * q->scale[h * nb + b]) * ks[b];
                score = b ? score + t : t;
            }
            const float r = score > 0 ? score : 0.0f;
            acc += r * w[h];
        }
        out[s] = acc;
    }
}

void st_index_scores_e2m1(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride, int64_t n,
                          float *out) {
    if (n <= 0) return;
    const st_isa isa = st_cpu_isa();
    if (q->d % 32 == 0 && isa == ST_ISA_AVX512) st_index_scores_e2m1_avx512(q, w, keys, stride, n, out);
    else if (q->d % 32 == 0 && isa == ST_ISA_AVX2) st_index_scores_e2m1_avx2(q, w, keys, stride, n, out);
    else st_index_scores_e2m1_generic(q, w, keys, stride, n, out);
}
