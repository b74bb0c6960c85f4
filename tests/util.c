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
