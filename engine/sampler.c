/* Sampler (see sampler.h). top-k and top-p act on the temperature-scaled
 * distribution; ties go to the lower token id so results are reproducible. */
#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/cpu.h"

int st_sampler_init(st_sampler *s, const st_sampler_cfg *cfg, int64_t n_vocab) {
    memset(s, 0, sizeof *s);
    if (n_vocab <= 0) return st_error(ST_ERR_INVALID, "sampler: vocabulary size %lld", (long long)n_vocab);
    s->cfg = *cfg;
    s->state = cfg->seed ^ 0x9e3779b97f4a7c15ull;
    s->n_vocab = n_vocab;
    s->probs = malloc((size_t)n_vocab * sizeof(float));
    s->order = malloc((size_t)n_vocab * sizeof(int32_t));
    s->radix = malloc((size_t)n_vocab * 2 * sizeof(uint64_t));
    if (!s->probs || !s->order || !s->radix) { st_sampler_release(s); return st_error(ST_ERR_NOMEM, "sampler: out of memory"); }
    return 0;
}

void st_sampler_release(st_sampler *s) {
    free(s->probs);
    free(s->order);
    free(s->radix);
    s->probs = NULL;
    s->order = NULL;
    s->radix = NULL;
}

double st_sampler_uniform(st_sampler *s) {
    uint64_t z = (s->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best] || (isnan(x[best]) && !isnan(x[i]))) best = i;
    return (int32_t)best;
}

/* All n logits in st_topk's order (larger first, equal values by lower index,
 * -0 equal to +0, NaN last by index) into order/probs: a stable LSD radix sort
 * of (key << 32 | index), O(n), where st_topk of a whole 129K vocabulary (a
 * heap sort) took ~20 ms a token. */
static void sort_all(st_sampler *s, const float *x, int64_t n) {
    uint64_t *a = s->radix, *b = s->radix + n;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        float v = x[i] == 0 ? 0.0f : x[i];
        memcpy(&u, &v, 4);
        u = u & 0x80000000u ? ~u : u | 0x80000000u;              /* ascending with the value */
        const uint32_t key = x[i] != x[i] ? 0xFFFFFFFFu : ~u;     /* descending; NaN last */
        a[i] = (uint64_t)key << 32 | (uint64_t)i;
    }
    for (int shift = 32; shift < 64; shift += 11) { /* 11 + 11 + 10 bits of the key */
        int64_t count[2049] = {0};
        for (int64_t i = 0; i < n; i++) count[((a[i] >> shift) & 2047) + 1]++;
        for (int d = 0; d < 2048; d++) count[d + 1] += count[d];
        for (int64_t i = 0; i < n; i++) b[count[(a[i] >> shift) & 2047]++] = a[i];
        uint64_t *t = a; a = b; b = t;
    }
    for (int64_t i = 0; i < n; i++) {
        s->order[i] = (int32_t)(uint32_t)a[i];
        s->probs[i] = x[s->order[i]];
    }
}

int32_t st_sampler_draw(st_sampler *s, int64_t k) {
    const float mx = s->probs[0];
    double sum = 0;
    for (int64_t i = 0; i < k; i++) {
        float l = s->probs[i];
        s->probs[i] = isnan(l) ? 0.0f : expf((l - mx) / s->cfg.temperature);
        sum += s->probs[i];
    }
    int64_t keep = k;
    if (s->cfg.top_p > 0 && s->cfg.top_p < 1) {
        double c = 0;
        for (int64_t i = 0; i < k; i++) {
            c += s->probs[i] / sum;
            if (c >= s->cfg.top_p) { keep = i + 1; break; }
        }
        sum = 0;
        for (int64_t i = 0; i < keep; i++) sum += s->probs[i];
    }
    double u = st_sampler_uniform(s) * sum, c = 0;
    for (int64_t i = 0; i < keep; i++) {
        c += s->probs[i];
        if (u < c) return s->order[i];
    }
    return s->order[keep - 1];
}

int32_t st_sampler_sample(st_sampler *s, const float *logits) {
    const int64_t n = s->n_vocab;
    if (s->cfg.temperature <= 0) return argmax(logits, n);
    int64_t k = s->cfg.top_k > 0 && s->cfg.top_k < n ? s->cfg.top_k : n;
    /* candidates in descending order of logit */
    if (k == n) sort_all(s, logits, n);
    else st_topk(logits, n, k, s->order, s->probs);
    if (isnan(s->probs[0])) return argmax(logits, n);
    return st_sampler_draw(s, k);
}
