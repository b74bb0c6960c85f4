/* Shared test helpers (see util.h): one copy of the popen/read-all runner,
 * temporary directories, fixture synthesis and model loading. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "base/base.h"
#include "util.h"

const char *tu_strata_bin(void) {
    const char *bin = getenv("STRATA_BIN");
    return bin && *bin ? bin : "build/strata";
}

int tu_run(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (len + 1 == cap) {
            buf = realloc(buf, cap *= 2);
            assert_non_null(buf);
        }
    }
    buf[len] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int tu_tmpdir(char *dir, size_t cap, const char *pattern) {
    if ((size_t)snprintf(dir, cap, "%s", pattern) >= cap) return -1;
    return mkdtemp(dir) ? 0 : -1;
}

int tu_rmtree(const char *dir) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) ? -1 : 0;
}

int tu_synth(const st_synth_preset *p, const char *dir, uint64_t seed, const char *tokenizer_dir) {
    int rc = st_synth_write(p, dir, seed, tokenizer_dir, true);
    if (rc) fprintf(stderr, "synth %s: %s\n", dir, st_last_error());
    return rc;
}

st_model *tu_load(const char *path, const st_model_opts *extra, int threads) {
    st_model_opts o = extra ? *extra : (st_model_opts){0};
    o.threads = threads;
    o.quiet = true;
    st_model *m = NULL;
    if (st_model_load(path, &o, &m)) fail_msg("load %s: %s", path, st_last_error());
    return m;
}

void tu_ids(const st_model *m, int32_t *ids, int n, int salt) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 131 + 17 + salt * 37) % m->vocab);
}

float *tu_prefill_decode(st_model *m, const int32_t *ids, int n, int decode) {
    st_seq *s;
    if (st_seq_new(m, &s)) fail_msg("sequence: %s", st_last_error());
    float *lg = malloc((size_t)(n + decode) * (size_t)m->vocab * sizeof(float));
    if (!lg) fail_msg("out of memory");
    if (st_seq_forward(s, ids, n, lg, true)) fail_msg("forward: %s", st_last_error());
    for (int i = 0; i < decode; i++) {
        int32_t t = ids[(i * 7 + 3) % n];
        if (st_seq_forward(s, &t, 1, lg + (size_t)(n + i) * (size_t)m->vocab, false)) fail_msg("decode: %s", st_last_error());
    }
    st_seq_free(s);
    return lg;
}

void tu_assert_same_bits(const float *a, const float *b, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)))
            fail_msg("%s: logit %zu differs: %.9g vs %.9g", what, i, (double)a[i], (double)b[i]);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
void tu_rng_set(uint64_t state) { rng_state = state; }
void tu_rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
uint64_t tu_rng_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
double tu_rng_unif(void) { return (double)(tu_rng_u64() >> 11) * 0x1p-53; }
float tu_rng_gauss(void) {
    double u = tu_rng_unif() + 1e-300, v = tu_rng_unif();
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}
uint32_t tu_rnd(void) { return (uint32_t)(tu_rng_u64() >> 16); }
float tu_frand(void) { return (float)((tu_rnd() & 0xffffff) / 16777216.0 * 2.0 - 1.0); }
