/* The tensors of a synthetic V4 checkpoint: their official names, dtypes and
 * shapes, and deterministic random contents (see synth.h).
 *
 * Scales keep activations O(1): a linear with fan-in n gets weights of std
 * 1/sqrt(n), so unit-variance inputs give unit-variance outputs. FP8 weights
 * are Gaussian values quantised with a ue8m0 scale per 128x128 block; FP4
 * experts are uniform e2m1 codes (std 2.93) times ue8m0 scales per 1x32 that
 * wobble by one binade around the target. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/formats.h"
#include "cpu/quant.h"
#include "engine/synth_internal.h"

/* ---- generator ------------------------------------------------------------------ */

typedef struct rng { uint64_t s[4]; } rng;

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ h;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng *r) {
    uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return res;
}

static double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

static float rng_normal(rng *r) {
    double u = rng_uniform(r), v = rng_uniform(r);
    if (u < 1e-300) u = 1e-300;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* ---- the tensor list -------------------------------------------------------------- */

static int add(synth_list *L, const char *dtype, int64_t r, int64_t c, synth_gen gen, float a, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static int add(synth_list *L, const char *dtype, int64_t r, int64_t c, synth_gen gen, float a, const char *fmt, ...) {
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 256;
        synth_tensor *t = realloc(L->t, (size_t)cap * sizeof *t);
        if (!t) return st_error(ST_ERR_NOMEM, "synth: out of memory");
        L->t = t;
        L->cap = cap;
    }
    synth_tensor *t = &L->t[L->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->dtype = dtype;
    t->ndim = c > 0 ? 2 : 1;
    t->shape[0] = r;
    t->shape[1] = c;
    t->gen = gen;
    t->a = a;
    int64_t n = r * (c > 0 ? c : 1);
    t->bytes = (uint64_t)n * (uint64_t)(!strcmp(dtype, "F32") || !strcmp(dtype, "I32") ? 4
                                        : !strcmp(dtype, "BF16")                         ? 2
                                        : !strcmp(dtype, "I64")                          ? 8
                                                                                          : 1);
    return 0;
}

/* FP8 linear: the weight and its block scale. */
static int add_fp8(synth_list *L, int64_t out, int64_t in, const char *name) {
    int rc = add(L, "F8_E4M3", out, in, SG_FP8, 1.0f / sqrtf((float)in), "%s.weight", name);
    if (!rc) rc = add(L, "F8_E8M0", ST_DIV_UP(out, 128), ST_DIV_UP(in, 128), SG_FP8_SCALE, 0, "%s.scale", name);
    return rc;
}

static int add_fp4(synth_list *L, int64_t out, int64_t in, const char *name) {
    int rc = add(L, "I8", out, in / 2, SG_FP4, 1.0f / sqrtf((float)in), "%s.weight", name);
    if (!rc) rc = add(L, "F8_E8M0", out, in / 32, SG_FP4_SCALE, 1.0f / sqrtf((float)in), "%s.scale", name);
    return rc;
}

static int add_compressor(synth_list *L, const st_synth_preset *p, int ratio, int64_t d, bool overlap,
                          const char *prefix) {
    int64_t w = (overlap ? 2 : 1) * d;
    int rc = 0;
    rc = rc ? rc : add(L, "BF16", w, p->dim, SG_NORMAL, 1.0f / sqrtf((float)p->dim), "%s.wkv.weight", prefix);
    rc = rc ? rc : add(L, "BF16", w, p->dim, SG_NORMAL, 1.0f / sqrtf((float)p->dim), "%s.wgate.weight", prefix);
    rc = rc ? rc : add(L, "F32", ratio, w, SG_NORMAL, 0.1f, "%s.ape", prefix);
    rc = rc ? rc : add(L, "BF16", d, 0, SG_NEAR_ONE, 0.05f, "%s.norm.weight", prefix);
    return rc;
}

/* One block's tensors under `pre` ("layers.3." or "mtp.0."): ratio its compress
 * ratio, hash whether its gate routes by tid2eid. */
static int add_block(synth_list *L, const st_synth_preset *p, const char *pre, int ratio, bool hash) {
    const int64_t dim = p->dim, hc = p->hc, mix = (2 + hc) * hc, hd = p->head_dim;
    int rc = 0;
    char nm[200];
#define NM(suffix) (snprintf(nm, sizeof nm, "%s" suffix, pre), nm)
    for (int s = 0; s < 2 && !rc; s++) {
        const char *site = s ? "ffn" : "attn";
        rc = rc ? rc : add(L, "F32", mix, hc * dim, SG_NORMAL, 1.0f / sqrtf((float)(hc * dim)), "%shc_%s_fn", pre, site);
        rc = rc ? rc : add(L, "F32", mix, 0, SG_NORMAL, 0.5f, "%shc_%s_base", pre, site);
        rc = rc ? rc : add(L, "F32", 3, 0, SG_NEAR_ONE, 0.2f, "%shc_%s_scale", pre, site);
        rc = rc ? rc : add(L, "BF16", dim, 0, SG_NEAR_ONE, 0.05f, "%s%s_norm.weight", pre, site);
    }
    rc = rc ? rc : add_fp8(L, p->q_lora_rank, dim, NM("attn.wq_a"));
    rc = rc ? rc : add(L, "BF16", p->q_lora_rank, 0, SG_NEAR_ONE, 0.05f, "%sattn.q_norm.weight", pre);
    rc = rc ? rc : add_fp8(L, (int64_t)p->n_heads * hd, p->q_lora_rank, NM("attn.wq_b"));
    rc = rc ? rc : add_fp8(L, hd, dim, NM("attn.wkv"));
    rc = rc ? rc : add(L, "BF16", hd, 0, SG_NEAR_ONE, 0.05f, "%sattn.kv_norm.weight", pre);
    rc = rc ? rc : add_fp8(L, (int64_t)p->o_groups * p->o_lora_rank, (int64_t)p->n_heads * hd / p->o_groups, NM("attn.wo_a"));
    rc = rc ? rc : add_fp8(L, dim, (int64_t)p->o_groups * p->o_lora_rank, NM("attn.wo_b"));
    rc = rc ? rc : add(L, "F32", p->n_heads, 0, SG_NORMAL, 1.0f, "%sattn.attn_sink", pre);
    if (ratio) {
        bool csa = ratio == 4;
        rc = rc ? rc : add_compressor(L, p, ratio, hd, csa, NM("attn.compressor"));
        if (csa) {
            rc = rc ? rc : add_fp8(L, (int64_t)p->index_heads * p->index_dim, p->q_lora_rank, NM("attn.indexer.wq_b"));
            rc = rc ? rc : add(L, "BF16", p->index_heads, dim, SG_NORMAL, 1.0f / sqrtf((float)dim), "%sattn.indexer.weights_proj.weight", pre);
            rc = rc ? rc : add_compressor(L, p, ratio, p->index_dim, true, NM("attn.indexer.compressor"));
        }
    }
    rc = rc ? rc : add(L, "BF16", p->n_experts, dim, SG_NORMAL, 1.0f / sqrtf((float)dim), "%sffn.gate.weight", pre);
    if (hash) rc = rc ? rc : add(L, "I64", p->vocab, p->top_k, SG_TID2EID, (float)p->n_experts, "%sffn.gate.tid2eid", pre);
    else rc = rc ? rc : add(L, "F32", p->n_experts, 0, SG_NORMAL, 0.05f, "%sffn.gate.bias", pre);
    /* the shared experts are one expert n_shared times as wide */
    const int64_t shared = (int64_t)p->moe_inter * (p->from_config ? p->n_shared : 1);
    for (int s = 0; s < 3 && !rc && shared > 0; s++) {
        int64_t out = s == 1 ? dim : shared, in = s == 1 ? shared : dim;
        snprintf(nm, sizeof nm, "%sffn.shared_experts.w%d", pre, s + 1);
        rc = add_fp8(L, out, in, nm);
    }
    for (int e = 0; e < p->n_experts && !rc; e++)
        for (int s = 0; s < 3 && !rc; s++) {
            int64_t out = s == 1 ? dim : p->moe_inter, in = s == 1 ? p->moe_inter : dim;
            snprintf(nm, sizeof nm, "%sffn.experts.%d.w%d", pre, e, s + 1);
            rc = add_fp4(L, out, in, nm);
        }
#undef NM
    return rc;
}

int synth_list_build(const st_synth_preset *p, synth_list *L, int *layer_end) {
    memset(L, 0, sizeof *L);
    const int64_t dim = p->dim, hc = p->hc;
    int rc = 0;
    char pre[64];
    for (int i = 0; i < p->n_layers && !rc; i++) {
        snprintf(pre, sizeof pre, "layers.%d.", i);
        rc = add_block(L, p, pre, p->ratios[i], i < p->n_hash_layers);
        if (layer_end) layer_end[i] = L->n;
    }
    /* MTP blocks (they share embed and head); their ratios follow the main layers' */
    for (int k = 0; p->from_config && k < p->n_mtp && !rc; k++) {
        snprintf(pre, sizeof pre, "mtp.%d.", k);
        rc = rc ? rc : add_fp8(L, dim, dim, (snprintf(pre, sizeof pre, "mtp.%d.e_proj", k), pre));
        rc = rc ? rc : add_fp8(L, dim, dim, (snprintf(pre, sizeof pre, "mtp.%d.h_proj", k), pre));
        rc = rc ? rc : add(L, "BF16", dim, 0, SG_NEAR_ONE, 0.05f, "mtp.%d.enorm.weight", k);
        rc = rc ? rc : add(L, "BF16", dim, 0, SG_NEAR_ONE, 0.05f, "mtp.%d.hnorm.weight", k);
        rc = rc ? rc : add(L, "BF16", dim, 0, SG_NEAR_ONE, 0.05f, "mtp.%d.norm.weight", k);
        rc = rc ? rc : add(L, "F32", hc, hc * dim, SG_NORMAL, 1.0f / sqrtf((float)(hc * dim)), "mtp.%d.hc_head_fn", k);
        rc = rc ? rc : add(L, "F32", hc, 0, SG_NORMAL, 0.5f, "mtp.%d.hc_head_base", k);
        rc = rc ? rc : add(L, "F32", 1, 0, SG_NEAR_ONE, 0.2f, "mtp.%d.hc_head_scale", k);
        snprintf(pre, sizeof pre, "mtp.%d.", k);
        rc = rc ? rc : add_block(L, p, pre, p->ratios[p->n_layers + k], false);
    }
    rc = rc ? rc : add(L, "BF16", p->vocab, dim, SG_NORMAL, 1.0f, "embed.weight");
    rc = rc ? rc : add(L, "BF16", p->vocab, dim, SG_NORMAL, 1.0f / sqrtf((float)dim), "head.weight");
    rc = rc ? rc : add(L, "BF16", dim, 0, SG_NEAR_ONE, 0.05f, "norm.weight");
    rc = rc ? rc : add(L, "F32", hc, hc * dim, SG_NORMAL, 1.0f / sqrtf((float)(hc * dim)), "hc_head_fn");
    rc = rc ? rc : add(L, "F32", hc, 0, SG_NORMAL, 0.5f, "hc_head_base");
    rc = rc ? rc : add(L, "F32", 1, 0, SG_NEAR_ONE, 0.2f, "hc_head_scale");
    if (rc) synth_list_free(L);
    return rc;
}

void synth_list_free(synth_list *L) {
    free(L->t);
    memset(L, 0, sizeof *L);
}

/* ---- contents ------------------------------------------------------------------------- */

/* FP8 weight (r, c) from Gaussian values; its scale tensor is generated from
 * the same stream, so both are computed together and the scale kept. */
static void gen_fp8(const synth_tensor *t, uint64_t seed, uint8_t *w, uint8_t *scale) {
    const int64_t r = t->shape[0], c = t->shape[1], br = ST_DIV_UP(r, 128), bc = ST_DIV_UP(c, 128);
    rng g;
    rng_seed(&g, seed, t->name);
    float *v = malloc((size_t)(128 * c) * sizeof(float));
    ST_ASSERT(v);
    for (int64_t b = 0; b < br; b++) {
        int64_t r0 = b * 128, r1 = ST_MIN(r, r0 + 128);
        for (int64_t i = 0; i < (r1 - r0) * c; i++) v[i] = rng_normal(&g) * t->a;
        for (int64_t k = 0; k < bc; k++) {
            int64_t c0 = k * 128, c1 = ST_MIN(c, c0 + 128);
            float amax = 1e-30f;
            for (int64_t i = r0; i < r1; i++)
                for (int64_t j = c0; j < c1; j++) amax = fmaxf(amax, fabsf(v[(i - r0) * c + j]));
            float s = st_pow2_ceil(amax / 448.0f);
            int e;
            frexpf(s, &e); /* s = 2^(e-1) */
            scale[b * bc + k] = (uint8_t)(e - 1 + 127);
            for (int64_t i = r0; i < r1; i++)
                for (int64_t j = c0; j < c1; j++) w[i * c + j] = st_f32_to_e4m3(v[(i - r0) * c + j] / s);
        }
    }
    free(v);
}

void synth_generate(const synth_tensor *t, uint64_t seed, void *out, void *aux) {
    rng g;
    rng_seed(&g, seed, t->name);
    const int64_t n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
    switch (t->gen) {
    case SG_NORMAL:
    case SG_NEAR_ONE: {
        float base = t->gen == SG_NEAR_ONE ? 1.0f : 0.0f;
        if (!strcmp(t->dtype, "BF16")) {
            uint16_t *o = out;
            for (int64_t i = 0; i < n; i++) o[i] = st_f32_to_bf16(base + rng_normal(&g) * t->a);
        } else {
            float *o = out;
            for (int64_t i = 0; i < n; i++) o[i] = base + rng_normal(&g) * t->a;
        }
        break;
    }
    case SG_FP8: gen_fp8(t, seed, out, aux); break;
    case SG_FP8_SCALE: memcpy(out, aux, t->bytes); break; /* made with the weight */
    case SG_FP4: {
        uint8_t *o = out;
        for (int64_t i = 0; i < n; i += 8) {
            uint64_t x = rng_next(&g);
            for (int k = 0; k < 8 && i + k < n; k++) o[i + k] = (uint8_t)(x >> (8 * k));
        }
        break;
    }
    case SG_FP4_SCALE: {
        /* uniform e2m1 codes have std sqrt(68.5/8) = 2.93 */
        int e0 = (int)lrintf(log2f(t->a / 2.93f));
        uint8_t *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = (uint8_t)(127 + e0 + (int)(rng_next(&g) % 3) - 1);
        break;
    }
    case SG_TID2EID: {
        int64_t *o = out, k = t->shape[1], E = (int64_t)t->a;
        for (int64_t r = 0; r < t->shape[0]; r++)
            for (int64_t j = 0; j < k; j++) {
                int64_t e;
                bool dup;
                do { /* distinct experts per token */
                    e = (int64_t)(rng_next(&g) % (uint64_t)E);
                    dup = false;
                    for (int64_t q = 0; q < j; q++) dup |= o[r * k + q] == e;
                } while (dup);
                o[r * k + j] = e;
            }
        break;
    }
    }
}
