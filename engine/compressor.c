/* A layer's per-sequence attention state and its compressors (see
 * attention.h): the window ring, the compressor's running block state, and
 * the compressed entries it emits, stored in the official cache layout in
 * official numerics (encoded and decoded exactly here). The attention itself
 * (attention.c) reads the entries through attention_internal.h. */
#include "engine/attention.h"
#include "engine/attention_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn.h"
#include "cpu/formats.h"
#include "cpu/quant.h"
#include "offload/kv_pages.h"

/* ---- per-sequence state ------------------------------------------------------ */

static int comp_state_init(st_comp_state *s, const st_compressor_w *w, int64_t rope_dims, st_numerics num) {
    int coff = w->overlap ? 2 : 1;
    size_t n = (size_t)(coff * w->ratio) * (size_t)(coff * w->d);
    s->kv_state = malloc(n * sizeof(float));
    s->score_state = malloc(n * sizeof(float));
    s->packed = num == ST_NUMERICS_OFFICIAL;
    s->rope_dims = rope_dims;
    s->entry_bytes = st_comp_entry_bytes(w, rope_dims, num);
    s->cap = 16;
    s->entries = malloc((size_t)s->cap * s->entry_bytes);
    s->row = malloc((size_t)w->d * sizeof(float));
    s->n_entries = 0;
    if (!s->kv_state || !s->score_state || !s->entries || !s->row)
        return st_error(ST_ERR_NOMEM, "compressor state: out of memory");
    for (size_t i = 0; i < n; i++) { s->kv_state[i] = 0; s->score_state[i] = -INFINITY; }
    return 0;
}

static void comp_state_free(st_comp_state *s) {
    free(s->kv_state);
    free(s->score_state);
    free(s->entries);
    free(s->row);
    memset(s, 0, sizeof *s);
}

int st_layer_state_init(st_layer_state *s, const st_attn_w *w, st_numerics num) {
    memset(s, 0, sizeof *s);
    s->window = calloc((size_t)w->window * (size_t)w->head_dim, sizeof(float));
    if (!s->window) {
        char sz[32];
        return st_error(ST_ERR_NOMEM, "window KV: out of memory for sliding_window %d x head_dim %lld floats (%s)", w->window,
                        (long long)w->head_dim,
                        st_fmt_size((uint64_t)w->window * (uint64_t)w->head_dim * sizeof(float), sz, sizeof sz));
    }
    int rc = 0;
    if (w->kind != ST_LAYER_WINDOW) rc = comp_state_init(&s->comp, &w->comp, w->rope_dims, num);
    if (!rc && w->kind == ST_LAYER_CSA) rc = comp_state_init(&s->icomp, &w->idx.comp, w->rope_dims, num);
    if (rc) st_layer_state_free(s);
    return rc;
}

void st_layer_state_free(st_layer_state *s) {
    free(s->window);
    comp_state_free(&s->comp);
    comp_state_free(&s->icomp);
    memset(s, 0, sizeof *s);
}

static void comp_state_reset(st_comp_state *s, const st_compressor_w *w) {
    if (!s->kv_state) return;
    int coff = w->overlap ? 2 : 1;
    size_t n = (size_t)(coff * w->ratio) * (size_t)(coff * w->d);
    for (size_t i = 0; i < n; i++) { s->kv_state[i] = 0; s->score_state[i] = -INFINITY; }
    s->n_entries = 0;
}

void st_layer_state_reset(st_layer_state *s, const st_attn_w *w) {
    memset(s->window, 0, (size_t)w->window * (size_t)w->head_dim * sizeof(float));
    comp_state_reset(&s->comp, &w->comp);
    comp_state_reset(&s->icomp, &w->idx.comp);
}

/* ---- compressor ---------------------------------------------------------------- */

/* Round a main-KV vector the way the official cache stores it: nope dims in
 * e4m3 with a power-of-two scale per 64, rope dims in bf16. */
void st_kv_quant_sim(float *v, int64_t d, int64_t rope_dims) {
    st_quant_sim_e4m3(v, d - rope_dims, 64);
    st_round_bf16(v + d - rope_dims, rope_dims);
}

/* Indexer vectors: Hadamard, then e2m1 with a power-of-two scale per 32. */
void st_index_quant_sim(float *v, int64_t d) {
    st_hadamard(v, 1, d);
    st_quant_sim_e2m1(v, d, 32);
}

/* ---- stored entries (formats: attention.h) ---- */

/* codes/scales of x (n values, one power-of-two scale per block) computed as
 * cpu/quant.c's quant_blocks does, so that decoding gives its rounded values:
 * the same amax, floor and scale, and the reference conversions (which the
 * simulation's roundings equal, tested there) of the same x / scale. */
static void pack_blocks(const float *x, int64_t n, int64_t block, bool fp4, uint8_t *codes, uint8_t *scales) {
    const float max_code = fp4 ? 6.0f : 448.0f, amax_floor = fp4 ? 6.0f * 0x1p-126f : 1e-4f;
    if (fp4) memset(codes, 0, (size_t)ST_DIV_UP(n, 2));
    for (int64_t b0 = 0, k = 0; b0 < n; b0 += block, k++) {
        const int64_t b1 = ST_MIN(n, b0 + block);
        float amax = 0;
        for (int64_t i = b0; i < b1; i++) {
            float a = fabsf(x[i]);
            amax = a > amax ? a : amax;
        }
        if (!(amax >= amax_floor)) amax = amax_floor;
        const float scale = st_pow2_ceil(amax * (1.0f / max_code));
        scales[k] = (uint8_t)(st_f32_bits(scale) >> 23); /* a normal power of two: ue8m0 is its exponent field */
        for (int64_t i = b0; i < b1; i++) {
            float q = x[i] / scale;
            if (q > max_code) q = max_code;
            if (q < -max_code) q = -max_code;
            if (fp4) codes[i / 2] |= (uint8_t)(st_f32_to_e2m1(q) << (4 * (i & 1)));
            else codes[i] = st_f32_to_e4m3(q);
        }
    }
}

/* v (n, d) = the n consecutive stored entries at src. */
void st_comp_entries_decode(const st_comp_state *s, const st_compressor_w *w, const void *src, int64_t n, float *v) {
    if (!s->packed) memcpy(v, src, (size_t)(n * w->d) * sizeof(float));
    else if (w->rotate) st_e2m1_rows(src, s->entry_bytes, n, w->d, v);
    else st_kv_rows(src, s->entry_bytes, n, w->d, s->rope_dims, v);
}

size_t st_comp_entry_bytes(const st_compressor_w *w, int64_t rope_dims, st_numerics num) {
    const int64_t d = w->d, nope = d - rope_dims;
    if (num != ST_NUMERICS_OFFICIAL) return (size_t)d * sizeof(float);
    if (w->rotate) return (size_t)(ST_DIV_UP(d, 2) + ST_DIV_UP(d, 32));
    return (size_t)(nope + ST_DIV_UP(nope, 64) + 2 * rope_dims);
}

void st_comp_entry_encode(const st_comp_state *s, const st_compressor_w *w, float *v, void *dst) {
    const int64_t d = w->d, nope = d - s->rope_dims;
    uint8_t *o = dst;
    if (!s->packed) {
        memcpy(dst, v, (size_t)d * sizeof(float));
    } else if (w->rotate) {
        st_hadamard(v, 1, d);
        pack_blocks(v, d, 32, true, o, o + ST_DIV_UP(d, 2));
    } else {
        pack_blocks(v, nope, 64, false, o, o + nope);
        uint8_t *r = o + nope + ST_DIV_UP(nope, 64);
        for (int64_t i = 0; i < s->rope_dims; i++) {
            const uint16_t h = st_f32_to_bf16(v[nope + i]);
            memcpy(r + 2 * i, &h, 2); /* unaligned */
        }
    }
}

void st_comp_entry_decode(const st_comp_state *s, const st_compressor_w *w, const void *src, float *v) {
    st_comp_entries_decode(s, w, src, 1, v);
}

/* Decoding every stored entry (HCA layers), rows split over the threads. */

void st_comp_decode_rows(void *ctx, int ith, int nth) {
    st_comp_decode_job *j = ctx;
    int64_t r0, r1;
    st_split(j->n, ith, nth, 16, &r0, &r1);
    if (r1 > r0)
        st_comp_entries_decode(j->s, j->w, (const uint8_t *)j->s->entries + (size_t)r0 * j->s->entry_bytes, r1 - r0,
                            j->out + r0 * j->w->d);
}

/* Feed token p's kv and score rows (coff*d each); if p completes a block, emit
 * the block's entry into s->entries. */
int st_comp_feed(const st_compressor_w *w, st_comp_state *s, const float *kv, const float *score, int64_t p,
                 const float *inv_freq, int64_t rope_dims, float eps, st_numerics num) {
    const int ratio = w->ratio, coff = w->overlap ? 2 : 1;
    const int64_t d = w->d, width = coff * d;
    const int slot = (int)(p % ratio), row = (w->overlap ? ratio : 0) + slot;
    float *ks = s->kv_state + (int64_t)row * width, *ss = s->score_state + (int64_t)row * width;
    const float *ape = w->ape + (int64_t)slot * width;
    for (int64_t c = 0; c < width; c++) { ks[c] = kv[c]; ss[c] = score[c] + ape[c]; }
    if ((p + 1) % ratio) return 0;

    if (!s->pages && s->n_entries == s->cap) {
        int64_t cap = s->cap * 2;
        void *e = realloc(s->entries, (size_t)cap * s->entry_bytes);
        if (!e) return st_error(ST_ERR_NOMEM, "compressed KV: out of memory at %lld entries", (long long)cap);
        s->entries = e;
        s->cap = cap;
    }
    float *out = s->row;
    /* per channel c: softmax over the slots of the scores, weighted sum of kv.
     * Overlap: slots 0..ratio-1 are the previous block's channel c, slots
     * ratio..2ratio-1 this block's channel d + c. */
    const int nslots = coff * ratio;
    for (int64_t c = 0; c < d; c++) {
        float mx = -INFINITY;
        for (int j = 0; j < nslots; j++) {
            int64_t col = (w->overlap && j >= ratio) ? d + c : c;
            float sc = s->score_state[(int64_t)j * width + col];
            if (sc > mx) mx = sc;
        }
        float den = 0, num_ = 0;
        for (int j = 0; j < nslots; j++) {
            int64_t col = (w->overlap && j >= ratio) ? d + c : c;
            float e = expf(s->score_state[(int64_t)j * width + col] - mx);
            den += e;
            num_ += e * s->kv_state[(int64_t)j * width + col];
        }
        out[c] = num_ / den;
    }
    if (w->overlap) { /* this block becomes the previous one */
        memcpy(s->kv_state, s->kv_state + (int64_t)ratio * width, (size_t)ratio * (size_t)width * sizeof(float));
        memcpy(s->score_state, s->score_state + (int64_t)ratio * width, (size_t)ratio * (size_t)width * sizeof(float));
    }
    if (num == ST_NUMERICS_OFFICIAL) st_round_bf16(out, d);
    st_rmsnorm(out, w->norm, d, eps, out);
    if (num == ST_NUMERICS_OFFICIAL) st_round_bf16(out, d);
    st_rope_apply(out, 1, d, (int)rope_dims, inv_freq, p + 1 - ratio, false);
    /* official numerics: encoding rounds exactly as kv_quant_sim / index_quant_sim would */
    if (s->pages) {
        void *tmp = s->packed ? s->entries : out; /* entries: unused with pages, room for one */
        if (s->packed) st_comp_entry_encode(s, w, out, tmp);
        int rc = st_kv_pages_append(s->pages, s->stream, tmp, 1, NULL);
        if (rc) return rc;
    } else {
        st_comp_entry_encode(s, w, out, (uint8_t *)s->entries + (size_t)s->n_entries * s->entry_bytes);
    }
    s->n_entries++;
    return 0;
}
