/* base: what every subsystem shares and nothing else.
 *
 * Owns: ST_ASSERT, the per-thread error message, logging, monotonic time,
 * size parsing/printing and the terminal progress bar. Knows nothing about
 * models, tiers or kernels.
 */
#ifndef ST_BASE_H
#define ST_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "strata.h"

#define ST_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define ST_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ST_MAX(a, b) ((a) > (b) ? (a) : (b))
#define ST_DIV_UP(a, b) (((a) + (b) - 1) / (b))
#define ST_ALIGN_UP(a, b) (ST_DIV_UP(a, b) * (b))
static inline int64_t st_gcd64(int64_t a, int64_t b) { while (b) { int64_t t = a % b; a = b; b = t; } return a; }

/* Aborts with file and line: only for broken invariants, never for bad input. */
#define ST_ASSERT(cond)                                                                  \
    do {                                                                                 \
        if (!(cond)) st_assert_fail(__FILE__, __LINE__, #cond);                         \
    } while (0)

_Noreturn void st_assert_fail(const char *file, int line, const char *expr);

/* Record a detailed message for this thread and return `status` (so callers can
 * `return st_error(ST_ERR_FORMAT, "%s: tensor %s: ...", ...)`). */
int st_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with more context ("loading X: " + old message). */
int st_error_prefix(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void st_error_clear(void);

typedef enum { ST_LOG_ERROR = 0, ST_LOG_WARN = 1, ST_LOG_INFO = 2, ST_LOG_DEBUG = 3 } st_log_level;
/* Level from STRATA_LOG (error|warn|info|debug), default warn. Messages go to stderr. */
void st_log(st_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void st_log_set_level(st_log_level level);
#define ST_WARN(...) st_log(ST_LOG_WARN, __VA_ARGS__)
#define ST_INFO(...) st_log(ST_LOG_INFO, __VA_ARGS__)
#define ST_DEBUG(...) st_log(ST_LOG_DEBUG, __VA_ARGS__)

/* Grows the array *v of elements of `elem` bytes to hold `need` (capacity *cap,
 * doubled, at least 16): 0, or ST_ERR_NOMEM with a message (*v unchanged). */
int st_grow(void **v, int64_t *cap, int64_t need, size_t elem);

/* Monotonic clock in seconds / nanoseconds. */
double st_time_s(void);
uint64_t st_time_ns(void);

/* "512M", "1.5GiB", "4096", "25%" (of `whole`, pass 0 to refuse %) -> bytes.
 * Returns 0 or ST_ERR_INVALID with a message naming `what`. */
int st_parse_size(const char *text, uint64_t whole, const char *what, uint64_t *out);
/* Human-readable size into buf ("1.50 GiB"); returns buf. */
char *st_fmt_size(uint64_t bytes, char *buf, size_t len);

/* Terminal progress bar on stderr; silent when stderr is not a terminal or
 * when `quiet`. total may be 0 (unknown). Rate shown in units/s. */
typedef struct st_progress {
    const char *label;
    uint64_t total, done;
    double t0, last_draw;
    bool enabled, bytes; /* bytes: show sizes and B/s instead of counts */
} st_progress;
void st_progress_begin(st_progress *p, const char *label, uint64_t total, bool bytes, bool quiet);
void st_progress_update(st_progress *p, uint64_t done);
void st_progress_end(st_progress *p);

/* Read a whole small file (config, json). *out is NUL-terminated; free() it. */
int st_read_file(const char *path, size_t max_bytes, char **out, size_t *len);

/* write() all of data to fd, retrying short writes and EINTR; errors name path. */
int st_write_full(int fd, const void *data, size_t len, const char *path);
/* fsync the directory holding path (best effort: makes a rename durable). */
void st_fsync_parent(const char *path);
/* Write a small file atomically: a temporary name beside it, fsync, rename,
 * then fsync the directory. On failure nothing is left behind. */
int st_write_file_atomic(const char *path, const void *data, size_t len);

/* 64-byte aligned allocation freed with free(). */
void *st_aligned_alloc(size_t align, size_t size);

#endif
