/* Plain C reference of the matrix kernels: dequantise a row exactly (formats.h),
 * then dot it with each token in natural order, F32 sums. Every SIMD path is
 * tested against this file; it favours clarity over speed. */
#include <math.h>
#include <string.h>

#include "cpu/formats.h"
#include "cpu/matmul_internal.h"

static float fp8_scale(const st_weight *w, int64_t r, int64_t c) {
    int64_t sc = (w->cols + 127) / 128, i = (r / 128) * sc + c / 128;
    if (w->scale_fmt == ST_SCALE_F32) return ((const float *)w->scale)[i];
    return st_e8m0_to_f32(((const uint8_t *)w->scale)[i]);
}

static void dequant_generic(const st_weight *w, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float *out,
                            int64_t ldo) {
    const int64_t cols = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        float *o = out + (r - r0) * ldo;
        switch (w->fmt) {
        case ST_WF_F32: memcpy(o, (const float *)w->data + r * cols + c0, (size_t)(c1 - c0) * sizeof(float)); break;
        case ST_WF_BF16:
            for (int64_t c = c0; c < c1; c++) { /* memcpy: a checkpoint's BF16 tensor may start at an odd byte */
                uint16_t v;
                memcpy(&v, (const uint8_t *)w->data + 2 * (r * cols + c), sizeof v);
                o[c - c0] = st_bf16_to_f32(v);
            }
            break;
        case ST_WF_FP8:
            for (int64_t c = c0; c < c1; c++)
                o[c - c0] = st_e4m3_to_f32(((const uint8_t *)w->data)[r * cols + c]) * fp8_scale(w, r, c);
            break;
        case ST_WF_FP4: {
            const uint8_t *d = (const uint8_t *)w->data + r * (cols / 2), *s = (const uint8_t *)w->scale + r * (cols / 32);
            for (int64_t c = c0; c < c1; c++) {
                uint8_t nib = (uint8_t)(c & 1 ? d[c / 2] >> 4 : d[c / 2] & 15);
                o[c - c0] = st_e2m1_to_f32(nib) * st_e8m0_to_f32(s[c / 32]);
            }
            break;
        }
        }
    }
}

static void rows_generic(const st_mm_job *j, int64_t r0, int64_t r1, void *scratch) {
    const st_weight *w = j->w;
    const int64_t cols = w->cols;
    float *row = scratch; /* (cols) */
    for (int64_t r = r0; r < r1; r++) {
        dequant_generic(w, r, r + 1, 0, cols, row, cols);
        for (int64_t t = 0; t < j->n; t++) {
            const float *x = j->x + t * cols;
            float s = 0.0f;
            for (int64_t k = 0; k < cols; k++) s += row[k] * x[k];
            j->y[t * j->ldy + r] = s;
        }
    }
}

/* Q8 weights of one FP4 row: wq (kpad) int8, ws (nkb) block scales. */
static void q8_row_generic(const st_weight *w, int64_t r, int64_t kpad, int64_t nkb, int8_t *wq, float *ws) {
    const int64_t cols = w->cols, ng = cols / 32;
    const uint8_t *d = (const uint8_t *)w->data + r * (cols / 2), *s = (const uint8_t *)w->scale + r * ng;
    memset(wq, 0, (size_t)kpad);
    for (int64_t kb = 0; kb < nkb; kb++) {
        int lut[4], ngb;
        ws[kb] = st_q8_block_plan(s, ng, kb, lut, &ngb);
        for (int g = 0; g < ngb; g++) {
            const int8_t *L = ST_Q8_LUT[lut[g]];
            int64_t c0 = kb * ST_Q8_BLOCK + g * 32;
            for (int64_t c = c0; c < c0 + 32; c++) wq[c] = L[c & 1 ? d[c / 2] >> 4 : d[c / 2] & 15];
        }
    }
}

static void rows_q8_generic(const st_mm_job *j, int64_t r0, int64_t r1, void *scratch) {
    int8_t *wq = scratch;                          /* (kpad) */
    float *ws = (float *)((char *)scratch + j->kpad); /* (nkb) */
    for (int64_t r = r0; r < r1; r++) {
        q8_row_generic(j->w, r, j->kpad, j->nkb, wq, ws);
        for (int64_t t = 0; t < j->n; t++) {
            const uint8_t *xq = j->xq + t * j->kpad;
            const float *xs = j->xs + t * j->nkb;
            float acc = 0.0f;
            for (int64_t kb = 0; kb < j->nkb; kb++) {
                int32_t isum = 0;
                for (int64_t k = kb * ST_Q8_BLOCK; k < (kb + 1) * ST_Q8_BLOCK; k++)
                    isum += ((int32_t)xq[k] - 128) * wq[k];
                acc = fmaf((float)isum * xs[kb], ws[kb], acc);
            }
            j->y[t * j->ldy + r] = acc;
        }
    }
}

static void quant_x_generic(const float *x, int64_t cols, int64_t t0, int64_t t1, uint8_t *xq, float *xs,
                            int64_t kpad, int64_t nkb) {
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * cols;
        uint8_t *q = xq + t * kpad;
        memset(q, 128, (size_t)kpad);
        for (int64_t kb = 0; kb < nkb; kb++) {
            int64_t c0 = kb * ST_Q8_BLOCK, c1 = c0 + ST_Q8_BLOCK < cols ? c0 + ST_Q8_BLOCK : cols;
            float amax = 0.0f;
            int bad = 0;
            for (int64_t c = c0; c < c1; c++) {
                float a = fabsf(xt[c]);
                if (!(a <= 3.0e38f)) bad = 1; /* NaN or huge: no finite scale */
                if (a > amax) amax = a;
            }
            if (bad) { xs[t * nkb + kb] = NAN; continue; }
            if (amax < 1e-30f) { xs[t * nkb + kb] = 0.0f; continue; } /* 127 / amax must stay finite */
            float inv = 127.0f / amax;
            xs[t * nkb + kb] = amax / 127.0f;
            for (int64_t c = c0; c < c1; c++) q[c] = (uint8_t)((int)rintf(xt[c] * inv) + 128);
        }
    }
}

const st_mm_kernels st_mm_generic = {dequant_generic, rows_generic, rows_q8_generic, quant_x_generic, NULL, NULL};
