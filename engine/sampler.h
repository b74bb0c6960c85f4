/* Token sampling: greedy, temperature, top-k, top-p, from a seeded generator.
 * The same seed and logits give the same token on every machine. */
#ifndef ST_ENGINE_SAMPLER_H
#define ST_ENGINE_SAMPLER_H

#include <stdint.h>

typedef struct st_sampler_cfg {
    float temperature; /* <= 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1 or <= 0: off */
    uint64_t seed;
} st_sampler_cfg;

typedef struct st_sampler {
    st_sampler_cfg cfg;
    uint64_t state;
    float *probs;    /* scratch (n_vocab) */
    int32_t *order;  /* scratch (n_vocab) */
    uint64_t *radix; /* scratch (2 * n_vocab): (key, index) pairs of the sort of a whole vocabulary */
    int64_t n_vocab;
} st_sampler;

int st_sampler_init(st_sampler *s, const st_sampler_cfg *cfg, int64_t n_vocab);
void st_sampler_release(st_sampler *s);
/* Picks a token from logits (n_vocab). Never fails: NaN logits rank lowest. */
int32_t st_sampler_sample(st_sampler *s, const float *logits);
/* The draw st_sampler_sample makes once its k candidates are in s->order
 * (ids) and s->probs (their logits), best first: softmax at the temperature,
 * the top-p cut, one uniform draw. The candidates' order decides the token. */
int32_t st_sampler_draw(st_sampler *s, int64_t k);
/* Uniform in [0, 1) from the sampler's generator (splitmix64). */
double st_sampler_uniform(st_sampler *s);

#endif
