/* base: errors, logging, time, sizes, progress. See base.h. */
#include "base.h"

#include <ctype.h>
#include <fcntl.h>
#include <libgen.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char tls_error[1024];

_Noreturn void st_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "strata: internal error at %s:%d: assertion `%s` failed\n", file, line, expr);
    fflush(stderr);
    abort();
}

const char *st_status_str(int status) {
    switch (status) {
    case ST_OK: return "ok";
    case ST_ERR_INVALID: return "invalid argument or input";
    case ST_ERR_NOMEM: return "out of memory";
    case ST_ERR_IO: return "I/O error";
    case ST_ERR_FORMAT: return "bad file format";
    case ST_ERR_UNSUPPORTED: return "unsupported";
    case ST_ERR_BUDGET: return "memory budget exceeded";
    case ST_ERR_NOT_FOUND: return "not found";
    case ST_ERR_INTERNAL: return "internal error";
    case ST_ERR_CANCELLED: return "cancelled";
    default: return "unknown status";
    }
}

const char *st_last_error(void) { return tls_error; }
const char *st_version(void) { return STRATA_VERSION_STRING; }
void st_error_clear(void) { tls_error[0] = 0; }

int st_error(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    va_end(ap);
    return status;
}

int st_error_prefix(int status, const char *fmt, ...) {
    char old[sizeof tls_error];
    memcpy(old, tls_error, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof tls_error)
        snprintf(tls_error + n, sizeof tls_error - (size_t)n, "%s", old);
    return status;
}

static int log_level = -1;

void st_log_set_level(st_log_level level) { log_level = (int)level; }

static int current_log_level(void) {
    if (log_level < 0) {
        const char *e = getenv("STRATA_LOG");
        log_level = ST_LOG_WARN;
        if (e) {
            if (!strcmp(e, "error")) log_level = ST_LOG_ERROR;
            else if (!strcmp(e, "info")) log_level = ST_LOG_INFO;
            else if (!strcmp(e, "debug")) log_level = ST_LOG_DEBUG;
        }
    }
    return log_level;
}

void st_log(st_log_level level, const char *fmt, ...) {
    if ((int)level > current_log_level()) return;
    static const char *names[] = {"error", "warning", "info", "debug"};
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "strata: %s: %s\n", names[level], line);
}

uint64_t st_time_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double st_time_s(void) { return (double)st_time_ns() * 1e-9; }

int st_parse_size(const char *text, uint64_t whole, const char *what, uint64_t *out) {
    if (!text || !*text) return st_error(ST_ERR_INVALID, "%s: empty size", what);
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || !(v >= 0) || !isfinite(v))
        return st_error(ST_ERR_INVALID, "%s: '%s' is not a size (try 512M, 8GiB, 25%%)", what, text);
    while (*end == ' ') end++;
    double mult = 1;
    if (*end == '%') {
        if (!whole) return st_error(ST_ERR_INVALID, "%s: '%s': a percentage is not allowed here", what, text);
        if (end[1]) return st_error(ST_ERR_INVALID, "%s: '%s': junk after %%", what, text);
        *out = (uint64_t)(v / 100.0 * (double)whole);
        return 0;
    }
    char u = (char)toupper((unsigned char)*end);
    if (u) {
        switch (u) {
        case 'B': mult = 1; break;
        case 'K': mult = 1024.0; break;
        case 'M': mult = 1024.0 * 1024; break;
        case 'G': mult = 1024.0 * 1024 * 1024; break;
        case 'T': mult = 1024.0 * 1024 * 1024 * 1024; break;
        default: return st_error(ST_ERR_INVALID, "%s: '%s': unknown unit '%c'", what, text, *end);
        }
        end++;
        if (u != 'B') {
            if (*end == 'i' || *end == 'I') end++;
            if (*end == 'b' || *end == 'B') end++;
        }
        if (*end) return st_error(ST_ERR_INVALID, "%s: '%s': junk after the unit", what, text);
    }
    double b = v * mult;
    if (b > 1.8e19) return st_error(ST_ERR_INVALID, "%s: '%s' is too large", what, text);
    *out = (uint64_t)b;
    return 0;
}

char *st_fmt_size(uint64_t bytes, char *buf, size_t len) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 5) { v /= 1024.0; u++; }
    if (u == 0) snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else snprintf(buf, len, "%.2f %s", v, units[u]);
    return buf;
}

void st_progress_begin(st_progress *p, const char *label, uint64_t total, bool bytes, bool quiet) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->total = total;
    p->bytes = bytes;
    p->t0 = st_time_s();
    p->enabled = !quiet && isatty(STDERR_FILENO);
}

static void progress_draw(st_progress *p, bool final) {
    double now = st_time_s(), el = now - p->t0;
    double rate = el > 0 ? (double)p->done / el : 0;
    char a[32], b[32], r[32], line[256];
    int n;
    if (p->bytes) {
        st_fmt_size(p->done, a, sizeof a);
        st_fmt_size(p->total, b, sizeof b);
        st_fmt_size((uint64_t)rate, r, sizeof r);
        n = snprintf(line, sizeof line, "%s %s / %s  %s/s", p->label, a, b, r);
    } else {
        n = snprintf(line, sizeof line, "%s %llu/%llu  %.1f/s", p->label, (unsigned long long)p->done,
                     (unsigned long long)p->total, rate);
    }
    char bar[32] = {0};
    if (p->total) {
        int w = 24, f = (int)((double)p->done / (double)p->total * w);
        if (f > w) f = w;
        for (int i = 0; i < w; i++) bar[i] = i < f ? '#' : '.';
        if (!final && p->done && rate > 0) {
            double eta = (double)(p->total - ST_MIN(p->done, p->total)) / rate;
            n += snprintf(line + n, sizeof line - (size_t)n, "  ETA %.0fs", eta);
        }
    }
    (void)n;
    fprintf(stderr, "\r\033[K[%s] %s%s", bar, line, final ? "\n" : "");
    fflush(stderr);
    p->last_draw = now;
}

void st_progress_update(st_progress *p, uint64_t done) {
    p->done = done;
    if (!p->enabled) return;
    if (st_time_s() - p->last_draw < 0.1) return;
    progress_draw(p, false);
}

void st_progress_end(st_progress *p) {
    if (p->enabled) progress_draw(p, true);
    p->enabled = false;
}

int st_read_file(const char *path, size_t max_bytes, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "%s: %s", path, strerror(errno));
    if (fseeko(f, 0, SEEK_END) != 0) { fclose(f); return st_error(ST_ERR_IO, "%s: cannot seek", path); }
    off_t size = ftello(f);
    if (size < 0 || (uint64_t)size > max_bytes) {
        fclose(f);
        return st_error(ST_ERR_FORMAT, "%s: size %lld exceeds the limit of %zu bytes", path, (long long)size, max_bytes);
    }
    rewind(f);
    char *buf = malloc((size_t)size + 1);
    if (!buf) { fclose(f); return st_error(ST_ERR_NOMEM, "%s: cannot allocate %lld bytes", path, (long long)size); }
    size_t got = fread(buf, 1, (size_t)size, f);
    int err = ferror(f);
    fclose(f);
    if (got != (size_t)size || err) { free(buf); return st_error(ST_ERR_IO, "%s: short read", path); }
    buf[size] = 0;
    *out = buf;
    if (len) *len = (size_t)size;
    return 0;
}

void *st_aligned_alloc(size_t align, size_t size) {
    void *p = NULL;
    if (size == 0) size = align;
    if (posix_memalign(&p, align, size) != 0) return NULL;
    return p;
}

int st_write_full(int fd, const void *data, size_t len, const char *path) {
    const uint8_t *p = data;
    while (len) {
        ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return st_error(ST_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

void st_fsync_parent(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

int st_write_file_atomic(const char *path, const void *data, size_t len) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return st_error(ST_ERR_INVALID, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return st_error(ST_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    int rc = st_write_full(fd, data, len, tmp);
    if (!rc && fsync(fd)) rc = st_error(ST_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) && !rc) rc = st_error(ST_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path)) rc = st_error(ST_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    else st_fsync_parent(path);
    return rc;
}

int st_grow(void **v, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return 0;
    int64_t n = ST_MAX(need, ST_MAX(*cap * 2, 16));
    void *p = realloc(*v, (size_t)n * elem);
    if (!p) return st_error(ST_ERR_NOMEM, "out of memory for %lld entries of %zu bytes", (long long)n, elem);
    *v = p;
    *cap = n;
    return 0;
}
