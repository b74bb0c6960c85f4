/* Helpers shared by the test suites (linked into every suite): running a
 * command and reading its output, temporary directories, synthetic fixture
 * models and loading a model with test options. Failures inside them fail
 * the calling cmocka test. */
#ifndef STRATA_TESTS_UTIL_H
#define STRATA_TESTS_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/synth.h"

/* The strata binary under test: $STRATA_BIN (set by make test), else build/strata. */
const char *tu_strata_bin(void);

/* Runs `cmd` under /bin/sh; *out gets all of its stdout, NUL-terminated (free it).
 * Returns its exit code, or -1 if it did not exit normally. */
int tu_run(const char *cmd, char **out);

/* mkdtemp of `pattern` (ending in XXXXXX) into dir[cap]; 0, or -1 if it could not be made. */
int tu_tmpdir(char *dir, size_t cap, const char *pattern);

/* Removes dir and everything under it; 0, or -1 if that failed. */
int tu_rmtree(const char *dir);

/* st_synth_write quietly into dir; prints the error and returns it on failure. */
int tu_synth(const st_synth_preset *p, const char *dir, uint64_t seed, const char *tokenizer_dir);

/* st_model_load of path with *extra (or defaults), `threads` threads, quiet; fails the test on error. */
st_model *tu_load(const char *path, const st_model_opts *extra, int threads);

/* n fixed token ids of m's vocabulary, (i * 131 + 17 + salt * 37) % vocab: salts give other prompts. */
void tu_ids(const st_model *m, int32_t *ids, int n, int salt);
/* Prefill of ids[0..n) with the logits of every position, then `decode` single
 * tokens ids[(i * 7 + 3) % n]: (n + decode, vocab) logits (free them). Fails the
 * test on error. */
float *tu_prefill_decode(st_model *m, const int32_t *ids, int n, int decode);
/* Fails the test at the first of n floats whose bits differ, naming `what`. */
void tu_assert_same_bits(const float *a, const float *b, size_t n, const char *what);

/* The suites' random numbers: one xorshift64 stream per test binary, so a suite
 * draws the same values as when each had its own copy. tu_rng_set: the raw
 * state (never 0); tu_rng_seed(s): state s * golden ratio + 1. */
void tu_rng_set(uint64_t state);
void tu_rng_seed(uint64_t s);
uint64_t tu_rng_u64(void);
double tu_rng_unif(void);   /* [0, 1) */
float tu_rng_gauss(void);   /* standard normal (Box-Muller) */
uint32_t tu_rnd(void);      /* 32 bits of the state's middle */
float tu_frand(void);       /* [-1, 1) */

#endif
