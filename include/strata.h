/* strata public API.
 *
 * Opaque handles, st_ prefix, functions return 0 or a negative st_status.
 * Every *_free accepts NULL. Nothing here exposes an internal struct.
 */
#ifndef STRATA_H
#define STRATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STRATA_VERSION_MAJOR 0
#define STRATA_VERSION_MINOR 1
#define STRATA_VERSION_PATCH 0
#define STRATA_VERSION_STRING "0.1.0"

typedef enum st_status {
    ST_OK = 0,
    ST_ERR_INVALID = -1,     /* bad argument or bad input data */
    ST_ERR_NOMEM = -2,       /* allocation failed */
    ST_ERR_IO = -3,          /* read/write failed (errno in the message) */
    ST_ERR_FORMAT = -4,      /* file is corrupt, truncated or not what was expected */
    ST_ERR_UNSUPPORTED = -5, /* valid but not supported (dtype, shape, hardware) */
    ST_ERR_BUDGET = -6,      /* a configured memory budget would be exceeded */
    ST_ERR_NOT_FOUND = -7,   /* file, tensor or key missing */
    ST_ERR_INTERNAL = -8,    /* a bug: an invariant did not hold */
    ST_ERR_CANCELLED = -9,   /* stopped on request */
} st_status;

/* Short, static description of a status code. Never NULL. */
const char *st_status_str(int status);

/* The last detailed error message of this thread ("" when none). */
const char *st_last_error(void);

/* Library version as "MAJOR.MINOR.PATCH". */
const char *st_version(void);

/* ---- models and sessions ------------------------------------------------------ */

typedef struct st_model st_model;     /* a loaded checkpoint (read-only, shareable) */
typedef struct st_session st_session; /* one sequence's state (KV) over a model */

typedef enum st_numerics_mode {
    ST_NUMERICS_MODE_OFFICIAL = 0,  /* the official code's quantised cache and activations (default) */
    ST_NUMERICS_MODE_REFERENCE = 1, /* F32 everywhere, no quantisation simulation */
} st_numerics_mode;

typedef struct st_open_options {
    st_numerics_mode numerics;
    int threads;           /* <= 0: one per core */
    int64_t prefill_chunk; /* tokens per prefill chunk; <= 0: 2048 */
} st_open_options;

/* Opens a checkpoint directory (official or transformers layout). opts may be
 * NULL (defaults). On failure *out is NULL and st_last_error() says which
 * file, tensor or field was wrong. */
int st_model_open(const char *path, const st_open_options *opts, st_model **out);
void st_model_close(st_model *model); /* NULL is fine */
int64_t st_model_vocab_size(const st_model *model);

int st_session_new(st_model *model, st_session **out);
void st_session_free(st_session *session); /* NULL is fine */
/* Forget every token: the next eval starts at position 0. */
void st_session_reset(st_session *session);
/* Tokens consumed so far. */
int64_t st_session_position(const st_session *session);
/* KV tiering of a fresh session (position 0): the compressed KV entries of
 * the CSA layers are paged; fast_bytes (> 0) is the fast memory they may hold,
 * the rest spills to DRAM (at most dram_bytes; 0: no limit without spill_dir,
 * no DRAM tier with it) and then to a file in spill_dir (NULL: no NVMe tier).
 * page_bytes: page size, a multiple of 4096 (0: 64 KiB). Logits are identical
 * with and without tiering. ST_ERR_INVALID (session not fresh, bad sizes),
 * ST_ERR_BUDGET later from eval when the budgets cannot hold the pages. */
typedef struct st_kv_tiering_options {
    uint64_t fast_bytes;
    uint64_t dram_bytes;
    const char *spill_dir;
    uint64_t page_bytes;
} st_kv_tiering_options;
int st_session_kv_tiering(st_session *session, const st_kv_tiering_options *opts);

/* Appends n tokens and writes the logits of the last one (vocab floats) to
 * logits, which may be NULL. */
int st_session_eval(st_session *session, const int32_t *ids, int64_t n, float *logits);

#ifdef __cplusplus
}
#endif
#endif /* STRATA_H */
