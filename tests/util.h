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

#endif
