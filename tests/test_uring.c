/* io/uring: the read engine against pread, byte for byte: many offsets and
 * depths, several files, both back ends (io_uring and pread), every injected
 * fault (EIO, ENOSPC, short reads, O_DIRECT refused at open and at read time),
 * end of file and truncated files, cancellation, unaligned requests. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "base/base.h"
#include "io/uring.h"
#include "io/uring_internal.h"
#include "io/uring_probe.h"
#include "util.h"

#define TMPFS_MAGIC_NUMBER 0x01021994
enum { N_FILES = 3, FILE_BYTES = 1 << 20, TAIL_BYTES = 1000, K = 4096 };

static char dir[512];
static char paths[N_FILES][600];
static uint8_t *content[N_FILES]; /* what each file holds */
static size_t sizes[N_FILES];


static bool is_tmpfs(const char *d) {
    struct statfs s;
    return statfs(d, &s) == 0 && s.f_type == TMPFS_MAGIC_NUMBER;
}

static void write_file(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state) {
    (void)state;
    st_log_set_level(ST_LOG_WARN);
    /* O_DIRECT fails on tmpfs on older kernels: use /var/tmp unless it is tmpfs */
    const char *base = is_tmpfs("/var/tmp") ? "." : "/var/tmp";
    snprintf(dir, sizeof dir, "%s/strata-test-uring-XXXXXX", base);
    if (!mkdtemp(dir)) return -1;
    for (int f = 0; f < N_FILES; f++) {
        sizes[f] = FILE_BYTES + (f == 2 ? TAIL_BYTES : 0); /* file 2 ends off a block boundary */
        content[f] = malloc(sizes[f]);
        for (size_t i = 0; i < sizes[f]; i++) content[f][i] = (uint8_t)(tu_rng_u64() >> 24);
        snprintf(paths[f], sizeof paths[f], "%s/part%d.bin", dir, f);
        write_file(paths[f], content[f], sizes[f]);
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int f = 0; f < N_FILES; f++) { unlink(paths[f]); free(content[f]); }
    rmdir(dir);
    return 0;
}

static const char *const *path_list(void) {
    static const char *p[N_FILES];
    for (int f = 0; f < N_FILES; f++) p[f] = paths[f];
    return p;
}

/* stderr captured into a file while a block runs, to count warnings */
static int saved_stderr = -1;
static char capture_path[600];
static void capture_begin(void) {
    fflush(stderr);
    snprintf(capture_path, sizeof capture_path, "%s/stderr.txt", dir);
    int fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    saved_stderr = dup(2);
    dup2(fd, 2);
    close(fd);
}
static int capture_end(const char *needle) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(st_read_file(capture_path, 1 << 20, &text, &len), 0);
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p++) n++;
    fputs(text, stderr); /* keep the warnings visible in the log */
    free(text);
    unlink(capture_path);
    return n;
}

static st_io *open_engine(const st_io_options *opt) {
    st_io *io = NULL;
    int rc = st_io_open(path_list(), N_FILES, opt, &io);
    if (rc) fprintf(stderr, "st_io_open: %s\n", st_last_error());
    assert_int_equal(rc, 0);
    return io;
}

/* Waits for every outstanding read; returns how many completions were seen. */
static int wait_all(st_io *io, st_io_completion *out, int max) {
    int n = 0;
    while (st_io_outstanding(io) > 0) {
        int got = st_io_wait(io, out + n, max - n, 1, 10000);
        assert_true(got > 0);
        n += got;
    }
    return n;
}

/* Random aligned reads over all files into the engine's pool and into
 * unregistered memory, at one depth, each checked byte for byte. */
static void random_reads(st_io_options opt, int rounds) {
    opt.buffer_bytes = 3 << 20;
    st_io *io = open_engine(&opt);
    size_t pool_bytes;
    uint8_t *pool = st_io_buffer(io, &pool_bytes);
    assert_non_null(pool);
    /* a pool of 2 MiB or more is in 2 MiB (huge) pages: rounded up to them and aligned */
    assert_int_equal(pool_bytes, 4 << 20);
    assert_int_equal((uintptr_t)pool % (2 << 20), 0);
    uint8_t *plain = st_aligned_alloc(K, 1 << 20); /* not registered: plain READ */
    enum { N = 48 };
    st_io_read reqs[N];
    st_io_completion done[N];
    for (int round = 0; round < rounds; round++) {
        size_t used = 0;
        for (int k = 0; k < N; k++) {
            int f = (int)(tu_rng_u64() % N_FILES);
            size_t len = (1 + tu_rng_u64() % 4) * K;
            uint64_t off = (tu_rng_u64() % (FILE_BYTES / K - 4)) * K;
            uint8_t *base = k % 2 ? plain : pool;
            reqs[k] = (st_io_read){.file = f, .offset = off, .length = len, .dst = base + used, .tag = (uint64_t)k};
            if (k % 2) used += 4 * K;
        }
        memset(pool, 0xAA, pool_bytes);
        memset(plain, 0x55, 1 << 20);
        assert_int_equal(st_io_submit(io, reqs, N), 0);
        assert_int_equal(wait_all(io, done, N), N);
        bool seen[N] = {0};
        for (int k = 0; k < N; k++) {
            const st_io_completion *c = &done[k];
            assert_true(c->tag < N && !seen[c->tag]);
            seen[c->tag] = true;
            const st_io_read *r = &reqs[c->tag];
            if (c->status) fprintf(stderr, "%s\n", c->message);
            assert_int_equal(c->status, 0);
            assert_int_equal(c->bytes, r->length);
            assert_int_equal(c->file, r->file);
            assert_memory_equal(r->dst, content[r->file] + r->offset, r->length);
        }
    }
    st_io_stats st;
    st_io_get_stats(io, &st);
    assert_int_equal(st.reads_done, (uint64_t)rounds * N);
    assert_int_equal(st.errors, 0);
    st_io_close(io);
    free(plain);
}

static void reads_match_pread_at_many_depths(void **state) {
    (void)state;
    int depths[] = {1, 2, 4, 16, 64};
    for (size_t d = 0; d < ST_ARRAY_LEN(depths); d++)
        random_reads((st_io_options){.queue_depth = depths[d]}, 3);
    st_io *io = open_engine(&(st_io_options){.queue_depth = 8, .buffer_bytes = 64 * K});
    st_io_stats st;
    st_io_get_stats(io, &st);
    st_uring_caps caps;
    st_uring_probe(&caps);
    assert_string_equal(st.backend, caps.ring_ok ? "io_uring" : "pread");
    if (st_odirect_probe(dir) == 0) assert_int_equal(st.direct_files, N_FILES);
    fprintf(stderr, "  engine: %s, %d/%d files O_DIRECT, fixed files %d, fixed buffers %d, alignment %zu\n", st.backend,
            st.direct_files, st.files, st.fixed_files, st.fixed_buffers, st_io_alignment(io));
    st_io_close(io);
}

static void pread_backend_matches(void **state) {
    (void)state;
    random_reads((st_io_options){.queue_depth = 4, .force_pread = true}, 2);
    random_reads((st_io_options){.queue_depth = 4, .buffered = true}, 1);
}

/* Reads queued for several files are issued round-robin: visible in the pread
 * back end, which runs them in issue order. */
static void reads_spread_over_files(void **state) {
    (void)state;
    st_io *io = open_engine(&(st_io_options){.queue_depth = 64, .force_pread = true, .buffer_bytes = 64 * K});
    uint8_t *pool = st_io_buffer(io, NULL);
    st_io_read reqs[12];
    for (int k = 0; k < 12; k++) /* 4 reads of file 0, then 4 of file 1, then 4 of file 2 */
        reqs[k] = (st_io_read){.file = k / 4, .offset = (uint64_t)(k % 4) * K, .length = K, .dst = pool + k * K, .tag = (uint64_t)k};
    assert_int_equal(st_io_submit(io, reqs, 12), 0);
    st_io_completion done[12];
    assert_int_equal(wait_all(io, done, 12), 12);
    for (int k = 0; k < 12; k++) {
        assert_int_equal(done[k].status, 0);
        assert_int_equal(done[k].file, k % 3);
        const st_io_read *r = &reqs[done[k].tag];
        assert_memory_equal(r->dst, content[r->file] + r->offset, K);
    }
    st_io_close(io);
}

static void unaligned_requests(void **state) {
    (void)state;
    st_io *io = open_engine(&(st_io_options){.queue_depth = 4});
    uint8_t *buf = st_aligned_alloc(K, 8 * K);
    if (st_io_file_direct(io, 0)) {
        st_io_read bad[] = {
            {.file = 0, .offset = 100, .length = K, .dst = buf},
            {.file = 0, .offset = 0, .length = 1000, .dst = buf},
            {.file = 0, .offset = 0, .length = K, .dst = buf + 8},
        };
        for (int k = 0; k < 3; k++) {
            assert_int_equal(st_io_submit(io, &bad[k], 1), ST_ERR_INVALID);
            assert_non_null(strstr(st_last_error(), "aligned"));
            assert_non_null(strstr(st_last_error(), paths[0]));
        }
        assert_int_equal(st_io_outstanding(io), 0);
    }
    st_io_read none[] = {{.file = 3, .offset = 0, .length = K, .dst = buf}, {.file = 0, .offset = 0, .length = 0, .dst = buf},
                         {.file = 0, .offset = 0, .length = K, .dst = NULL}};
    for (int k = 0; k < 3; k++) assert_int_equal(st_io_submit(io, &none[k], 1), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "destination"));
    st_io_close(io);
    /* buffered files take any offset, length and destination */
    io = open_engine(&(st_io_options){.queue_depth = 4, .buffered = true});
    assert_false(st_io_file_direct(io, 1));
    assert_int_equal(st_io_read_sync(io, 1, 12345, 7777, buf + 3), 0);
    assert_memory_equal(buf + 3, content[1] + 12345, 7777);
    st_io_close(io);
    free(buf);
}

static void eof_and_truncated_files(void **state) {
    (void)state;
    bool pread_modes[] = {false, true};
    for (int m = 0; m < 2; m++) {
        st_io *io = open_engine(&(st_io_options){.queue_depth = 4, .force_pread = pread_modes[m], .buffer_bytes = 4 * K});
        uint8_t *buf = st_io_buffer(io, NULL);
        /* file 2 ends 1000 bytes into the block at FILE_BYTES: the read gets them, then end of file */
        memset(buf, 0xEE, 4 * K);
        assert_int_equal(st_io_read_sync(io, 2, FILE_BYTES, K, buf), ST_ERR_FORMAT);
        assert_non_null(strstr(st_last_error(), paths[2]));
        assert_non_null(strstr(st_last_error(), "end of file"));
        assert_non_null(strstr(st_last_error(), "offset 1048576"));
        assert_non_null(strstr(st_last_error(), "got 1000 bytes"));
        assert_memory_equal(buf, content[2] + FILE_BYTES, TAIL_BYTES);
        /* entirely past the end */
        st_io_read r = {.file = 0, .offset = 2 * FILE_BYTES, .length = 2 * K, .dst = buf, .tag = 7};
        assert_int_equal(st_io_submit(io, &r, 1), 0);
        st_io_completion c;
        assert_int_equal(st_io_wait(io, &c, 1, 1, 10000), 1);
        assert_int_equal(c.status, ST_ERR_FORMAT);
        assert_int_equal(c.bytes, 0);
        assert_int_equal(c.tag, 7);
        assert_non_null(strstr(c.message, "offset 2097152"));
        assert_non_null(strstr(c.message, "8192 bytes"));
        st_io_close(io);
    }
    /* a file truncated after open: the read names the new size */
    char path[700];
    snprintf(path, sizeof path, "%s/truncated.bin", dir);
    write_file(path, content[0], FILE_BYTES);
    const char *p[] = {path};
    st_io *io;
    assert_int_equal(st_io_open(p, 1, &(st_io_options){.queue_depth = 2}, &io), 0);
    assert_int_equal(st_io_file_size(io, 0), FILE_BYTES);
    assert_int_equal(truncate(path, FILE_BYTES / 2), 0);
    uint8_t *buf = st_aligned_alloc(K, 2 * K);
    assert_int_equal(st_io_read_sync(io, 0, FILE_BYTES / 2 + K, 2 * K, buf), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "file is 524288 bytes, 1048576 at open"));
    assert_int_equal(st_io_read_sync(io, 0, FILE_BYTES / 2 - K, 2 * K, buf), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "got 4096 bytes"));
    assert_int_equal(st_io_read_sync(io, 0, 0, 2 * K, buf), 0);
    assert_memory_equal(buf, content[0], 2 * K);
    st_io_close(io);
    free(buf);
    unlink(path);
}

static void injected_errors(void **state) {
    (void)state;
    bool pread_modes[] = {false, true};
    for (int m = 0; m < 2; m++) {
        st_io *io = open_engine(&(st_io_options){.queue_depth = 8, .force_pread = pread_modes[m], .buffer_bytes = 16 * K,
                                                 .faults = "eio@0x2000#1,enospc@65536"});
        uint8_t *buf = st_io_buffer(io, NULL);
        /* EIO only on file 1, for a read covering 8192 */
        assert_int_equal(st_io_read_sync(io, 1, 0, 4 * K, buf), ST_ERR_IO);
        const char *e = st_last_error();
        assert_non_null(strstr(e, paths[1]));
        assert_non_null(strstr(e, "offset 0"));
        assert_non_null(strstr(e, "errno 5"));
        assert_non_null(strstr(e, strerror(EIO)));
        assert_int_equal(st_io_read_sync(io, 1, 3 * K, 4 * K, buf), 0); /* 12288.. does not cover 8192 */
        assert_memory_equal(buf, content[1] + 3 * K, 4 * K);
        assert_int_equal(st_io_read_sync(io, 0, 0, 4 * K, buf), 0);    /* file 0 is not affected */
        assert_memory_equal(buf, content[0], 4 * K);
        /* ENOSPC on every file, reported in the completion with errno */
        st_io_read reqs[3];
        for (int f = 0; f < 3; f++) reqs[f] = (st_io_read){.file = f, .offset = 16 * K - K, .length = 2 * K, .dst = buf + 2 * f * K, .tag = (uint64_t)f};
        assert_int_equal(st_io_submit(io, reqs, 3), 0);
        st_io_completion c[3];
        assert_int_equal(wait_all(io, c, 3), 3);
        for (int k = 0; k < 3; k++) {
            assert_int_equal(c[k].status, ST_ERR_IO);
            assert_int_equal(c[k].err, ENOSPC);
            assert_non_null(strstr(c[k].message, paths[c[k].file]));
            assert_non_null(strstr(c[k].message, "offset 61440"));
            assert_non_null(strstr(c[k].message, "errno 28"));
        }
        st_io_stats st;
        st_io_get_stats(io, &st);
        assert_int_equal(st.errors, 4);
        /* rules cleared: the same reads succeed */
        assert_int_equal(st_io_set_faults(io, NULL), 0);
        assert_int_equal(st_io_read_sync(io, 1, 0, 4 * K, buf), 0);
        assert_memory_equal(buf, content[1], 4 * K);
        st_io_close(io);
    }
}

static void injected_short_reads_are_retried(void **state) {
    (void)state;
    bool pread_modes[] = {false, true};
    for (int m = 0; m < 2; m++) {
        st_io *io = open_engine(&(st_io_options){.queue_depth = 4, .force_pread = pread_modes[m], .buffer_bytes = 32 * K});
        uint8_t *buf = st_io_buffer(io, NULL);
        /* aligned short (stays O_DIRECT), odd short (remainder goes buffered), and again on the remainder */
        assert_int_equal(st_io_set_faults(io, "short@0:4096,short@4096:100,short@4196:1,short@65536:12288#2"), 0);
        memset(buf, 0, 32 * K);
        int rc = st_io_read_sync(io, 0, 0, 16 * K, buf);
        if (rc) fprintf(stderr, "%s\n", st_last_error());
        assert_int_equal(rc, 0);
        assert_memory_equal(buf, content[0], 16 * K);
        st_io_read reqs[] = {{.file = 2, .offset = 16 * K, .length = 16 * K, .dst = buf, .tag = 1},
                             {.file = 1, .offset = K, .length = 16 * K, .dst = buf + 16 * K, .tag = 2}};
        assert_int_equal(st_io_submit(io, reqs, 2), 0);
        st_io_completion c[2];
        assert_int_equal(wait_all(io, c, 2), 2);
        for (int k = 0; k < 2; k++) {
            assert_int_equal(c[k].status, 0);
            const st_io_read *r = &reqs[c[k].tag - 1];
            assert_memory_equal(r->dst, content[r->file] + r->offset, r->length);
        }
        st_io_stats st;
        st_io_get_stats(io, &st);
        assert_int_equal(st.short_reads, 6); /* 3 on file 0, 1 on file 2, 2 on file 1 */
        assert_int_equal(st.errors, 0);
        /* a short read of 0 bytes looks like end of file: an error, not zeros */
        assert_int_equal(st_io_set_faults(io, "short@0:8192,short@8192:0"), 0);
        assert_int_equal(st_io_read_sync(io, 0, 0, 4 * K, buf), ST_ERR_FORMAT);
        assert_non_null(strstr(st_last_error(), "got 8192 bytes"));
        st_io_close(io);
    }
}

static void direct_refused_at_open_warns_once(void **state) {
    (void)state;
    capture_begin();
    st_io *io = open_engine(&(st_io_options){.queue_depth = 4, .faults = "nodirect@*"});
    int warnings = capture_end("O_DIRECT");
    assert_int_equal(warnings, 1);
    for (int f = 0; f < N_FILES; f++) assert_false(st_io_file_direct(io, f));
    uint8_t *buf = malloc(10000);
    assert_int_equal(st_io_read_sync(io, 2, FILE_BYTES - 5, 1005, buf), 0); /* unaligned is fine when buffered */
    assert_memory_equal(buf, content[2] + FILE_BYTES - 5, 1005);
    st_io_close(io);
    free(buf);

    if (st_odirect_probe(dir) != 0) return; /* this directory is buffered anyway */
    capture_begin();
    io = open_engine(&(st_io_options){.queue_depth = 4, .faults = "nodirect@1"});
    assert_int_equal(capture_end("O_DIRECT"), 1);
    assert_true(st_io_file_direct(io, 0));
    assert_false(st_io_file_direct(io, 1));
    assert_true(st_io_file_direct(io, 2));
    st_io_stats st;
    st_io_get_stats(io, &st);
    assert_int_equal(st.direct_files, 2);
    assert_int_equal(st.direct_fallbacks, 1);
    st_io_close(io);
}

/* tmpfs refuses O_DIRECT on older kernels (newer ones accept it): either way
 * the reads are right and there is at most the one warning. */
static void tmpfs_fallback(void **state) {
    (void)state;
    if (!is_tmpfs("/dev/shm") || access("/dev/shm", W_OK) != 0) skip();
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/strata-test-uring-%d.bin", (int)getpid());
    write_file(path, content[1], FILE_BYTES);
    bool refused = st_odirect_probe("/dev/shm") == ST_ERR_UNSUPPORTED;
    const char *p[] = {path, path};
    st_io *io;
    capture_begin();
    int rc = st_io_open(p, 2, &(st_io_options){.queue_depth = 4}, &io);
    assert_int_equal(capture_end("O_DIRECT"), refused ? 1 : 0);
    assert_int_equal(rc, 0);
    assert_int_equal(st_io_file_direct(io, 0), !refused);
    uint8_t *buf = st_aligned_alloc(K, 8 * K);
    for (int f = 0; f < 2; f++) {
        assert_int_equal(st_io_read_sync(io, f, 16 * K, 8 * K, buf), 0);
        assert_memory_equal(buf, content[1] + 16 * K, 8 * K);
    }
    st_io_close(io);
    free(buf);
    unlink(path);
}

static void direct_refused_at_read_time(void **state) {
    (void)state;
    st_io *io = open_engine(&(st_io_options){.queue_depth = 4, .buffer_bytes = 16 * K});
    if (!st_io_file_direct(io, 0)) { st_io_close(io); skip(); }
    uint8_t *buf = st_io_buffer(io, NULL);
    assert_int_equal(st_io_set_faults(io, "einval@4096#0"), 0);
    capture_begin();
    int rc = st_io_read_sync(io, 0, 0, 16 * K, buf);
    int rc2 = st_io_read_sync(io, 0, 4 * K, 4 * K, buf + 16 * K - 4 * K); /* no second warning */
    assert_int_equal(capture_end("O_DIRECT"), 1);
    assert_int_equal(rc, 0);
    assert_int_equal(rc2, 0);
    assert_memory_equal(buf, content[0], 12 * K);
    assert_memory_equal(buf + 12 * K, content[0] + 4 * K, 4 * K);
    assert_false(st_io_file_direct(io, 0));
    assert_true(st_io_file_direct(io, 1));
    st_io_stats st;
    st_io_get_stats(io, &st);
    assert_int_equal(st.direct_fallbacks, 1);
    st_io_close(io);
}

static void cancellation(void **state) {
    (void)state;
    bool pread_modes[] = {false, true};
    for (int m = 0; m < 2; m++) {
        st_io *io = open_engine(&(st_io_options){.queue_depth = 1, .force_pread = pread_modes[m], .buffer_bytes = 64 * K});
        uint8_t *pool = st_io_buffer(io, NULL);
        memset(pool, 0, 64 * K);
        enum { N = 16 };
        st_io_read reqs[N];
        for (int k = 0; k < N; k++)
            reqs[k] = (st_io_read){.file = k % N_FILES, .offset = (uint64_t)k * 4 * K, .length = 4 * K, .dst = pool + k * 4 * K, .tag = (uint64_t)(k % 4)};
        assert_int_equal(st_io_submit(io, reqs, N), 0);
        /* depth 1: only the first read (tag 0) is in the kernel, the rest are queued
         * (the pread back end issues nothing before st_io_poll/st_io_wait) */
        assert_int_equal(st_io_cancel(io, 2), 4);
        assert_int_equal(st_io_cancel(io, 0), pread_modes[m] ? 4 : 3); /* + an async cancel of the one in the kernel */
        assert_int_equal(st_io_cancel(io, 99), 0);
        st_io_completion c[N];
        assert_int_equal(wait_all(io, c, N), N);
        int cancelled = 0;
        for (int k = 0; k < N; k++) {
            const st_io_read *r = &reqs[(c[k].offset / (4 * K))];
            if (c[k].status == ST_ERR_CANCELLED) {
                assert_true(c[k].tag == 2 || c[k].tag == 0);
                assert_non_null(strstr(c[k].message, "cancelled"));
                cancelled++;
                continue;
            }
            assert_int_equal(c[k].status, 0);
            assert_memory_equal(r->dst, content[r->file] + r->offset, r->length);
        }
        assert_true(cancelled == 8 || (!pread_modes[m] && cancelled == 7)); /* the one in the kernel may finish first */
        static const uint8_t zero[4 * K];
        for (int k = 2; k < N; k += 2) /* cancelled before issue: destination untouched */
            assert_memory_equal(pool + k * 4 * K, zero, 4 * K);
        assert_int_equal(st_io_outstanding(io), 0);
        st_io_close(io);
    }
}

static void poll_wait_and_sync_reads(void **state) {
    (void)state;
    st_io *io = open_engine(&(st_io_options){.queue_depth = 2, .buffer_bytes = 16 * K});
    uint8_t *pool = st_io_buffer(io, NULL);
    st_io_completion c[4];
    assert_int_equal(st_io_poll(io, c, 4), 0);
    double t0 = st_time_s();
    assert_int_equal(st_io_wait(io, c, 4, 1, 2000), 0); /* nothing outstanding: returns at once */
    assert_true(st_time_s() - t0 < 1.0);
    st_io_read reqs[3];
    for (int k = 0; k < 3; k++) reqs[k] = (st_io_read){.file = k, .offset = (uint64_t)k * K, .length = K, .dst = pool + k * K, .tag = 10 + (uint64_t)k};
    assert_int_equal(st_io_submit(io, reqs, 3), 0);
    /* a synchronous read in between leaves the others' completions for the caller */
    assert_int_equal(st_io_read_sync(io, 1, 8 * K, 4 * K, pool + 8 * K), 0);
    assert_memory_equal(pool + 8 * K, content[1] + 8 * K, 4 * K);
    assert_int_equal(st_io_outstanding(io), 3);
    assert_int_equal(wait_all(io, c, 4), 3);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(c[k].status, 0);
        assert_true(c[k].tag >= 10 && c[k].tag < 13);
        assert_memory_equal(pool + (c[k].tag - 10) * K, content[c[k].tag - 10] + (c[k].tag - 10) * K, K);
    }
    st_io_close(io);
    /* close with reads still queued and in the kernel: waits, leaks nothing (ASan) */
    io = open_engine(&(st_io_options){.queue_depth = 2, .buffer_bytes = 64 * K});
    pool = st_io_buffer(io, NULL);
    st_io_read many[16];
    for (int k = 0; k < 16; k++) many[k] = (st_io_read){.file = k % 3, .offset = (uint64_t)k * 4 * K, .length = 4 * K, .dst = pool + k * 4 * K};
    assert_int_equal(st_io_submit(io, many, 16), 0);
    st_io_close(io);
}

static void bad_arguments_and_rules(void **state) {
    (void)state;
    st_io *io = NULL;
    char missing[700];
    snprintf(missing, sizeof missing, "%s/missing.bin", dir);
    const char *p[] = {paths[0], missing};
    assert_int_equal(st_io_open(p, 2, NULL, &io), ST_ERR_NOT_FOUND);
    assert_null(io);
    assert_non_null(strstr(st_last_error(), missing));
    assert_int_equal(st_io_open(p, 1, &(st_io_options){.queue_depth = 5000}, &io), ST_ERR_INVALID);
    assert_int_equal(st_io_open(p, 0, NULL, &io), ST_ERR_INVALID);
    const char *p_dir[] = {dir};
    assert_int_equal(st_io_open(p_dir, 1, NULL, &io), ST_ERR_INVALID);
    const char *bad[] = {"eio", "eio@", "eio@x", "short@5", "short@5:", "eio@5:3", "boom@1", "nodirect@", "eio@1#", "eio@-1"};
    for (size_t i = 0; i < ST_ARRAY_LEN(bad); i++) {
        assert_int_equal(st_io_open(p, 1, &(st_io_options){.faults = bad[i]}, &io), ST_ERR_INVALID);
        assert_non_null(strstr(st_last_error(), "bad rule"));
    }
    setenv("STRATA_IO_FAULTS", "eio@zz", 1);
    assert_int_equal(st_io_open(p, 1, NULL, &io), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "STRATA_IO_FAULTS"));
    /* the environment variable drives the same rules */
    setenv("STRATA_IO_FAULTS", "eio@0", 1);
    assert_int_equal(st_io_open(p, 1, &(st_io_options){.buffer_bytes = K}, &io), 0);
    unsetenv("STRATA_IO_FAULTS");
    assert_int_equal(st_io_read_sync(io, 0, 0, K, st_io_buffer(io, NULL)), ST_ERR_IO);
    st_io_close(io);
    st_io_close(NULL);
    /* the rule grammar itself */
    st_fault_set set = {0};
    assert_int_equal(st_fault_parse("short@0x1000:12#2, eio@5", &set), ST_ERR_INVALID); /* no spaces */
    assert_int_equal(st_fault_parse("short@0x1000:12#2,eio@8192,,nodirect@3", &set), 0);
    assert_int_equal(set.n, 3);
    assert_int_equal(st_fault_apply(&set, 2, true, 4096, 4096, 4096), 12);
    assert_int_equal(st_fault_apply(&set, 1, true, 4096, 4096, 4096), 4096);
    assert_int_equal(st_fault_apply(&set, 1, true, 4096, 4096, 100), 100);
    assert_int_equal(st_fault_apply(&set, 0, false, 8192, 1, 1), -EIO);
    assert_int_equal(st_fault_apply(&set, 0, false, 0, 8192, 8192), 8192); /* [0, 8192) does not cover 8192 */
    assert_int_equal(st_fault_apply(&set, 0, false, 8192, 1, -EAGAIN), -EAGAIN);
    assert_true(st_fault_nodirect(&set, 3));
    assert_false(st_fault_nodirect(&set, 2));
    st_fault_free(&set);
}

/* ---- pieces, the in-flight byte cap, urgency, promotion ---- */

static const bool pread_modes2[] = {false, true}; /* force_pread: io_uring (where it works), then pread */

/* Waits for every outstanding read, completions in the order they came. */
static int collect(st_io *io, st_io_completion *out, int max) {
    int n = wait_all(io, out, max);
    assert_int_equal(st_io_outstanding(io), 0);
    return n;
}

/* Requests cut into pieces read the same bytes as whole reads (odd sizes, a
 * partial last piece, short reads inside a piece), one completion each. */
static void split_reads_match(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        for (int buffered = 0; buffered < 2; buffered++) {
            /* O_DIRECT: pieces of 8 KiB; buffered: of 3000 bytes, at odd offsets */
            size_t piece = buffered ? 3000 : 2 * K;
            st_io_options opt = {.queue_depth = 8, .force_pread = pread_modes2[m], .buffered = buffered, .max_piece = piece,
                                 .max_inflight_bytes = buffered ? 7000 : 5 * K,
                                 /* a piece-aligned short read (stays O_DIRECT) and an odd one (remainder buffered) */
                                 .faults = "short@106496:4096#0,short@204800:100#0"};
            st_io *io = open_engine(&opt);
            uint8_t *mem = st_aligned_alloc(K, 64 * K);
            enum { N = 8 };
            static const size_t direct_len[N] = {K, 2 * K, 3 * K, 17 * K, 2 * K, 5 * K, 12 * K, K};
            static const size_t buffered_len[N] = {1, 2999, 3000, 3001, 10001, 6000, 9000, 12345};
            st_io_read reqs[N];
            size_t used = 0;
            uint64_t want_pieces = 0;
            for (int k = 0; k < N; k++) {
                size_t len = buffered ? buffered_len[k] : direct_len[k];
                uint64_t off = buffered ? 777 * (uint64_t)k + 13 : (uint64_t)k * 8 * K;
                reqs[k] = (st_io_read){.file = k % N_FILES, .offset = off, .length = len, .dst = mem + used, .tag = 50 + (uint64_t)k};
                used += ST_ALIGN_UP(len, K);
                want_pieces += ST_DIV_UP(len, piece);
            }
            memset(mem, 0xC3, 64 * K);
            assert_int_equal(st_io_submit(io, reqs, N), 0);
            st_io_completion c[N];
            assert_int_equal(collect(io, c, N), N);
            bool seen[N] = {0};
            for (int k = 0; k < N; k++) {
                if (c[k].status) fprintf(stderr, "%s\n", c[k].message);
                assert_int_equal(c[k].status, 0);
                int t = (int)(c[k].tag - 50);
                assert_true(t >= 0 && t < N && !seen[t]);
                seen[t] = true;
                assert_int_equal(c[k].bytes, reqs[t].length);
                assert_memory_equal(reqs[t].dst, content[reqs[t].file] + reqs[t].offset, reqs[t].length);
            }
            st_io_stats st;
            st_io_get_stats(io, &st);
            assert_int_equal(st.reads_done, N);
            assert_int_equal(st.max_piece, piece);
            if (!buffered && st_io_file_direct(io, 0)) {
                /* the two short reads each add one op for the remainder */
                assert_int_equal(st.short_reads, 2);
                assert_int_equal(st.pieces, want_pieces + 2);
            } else {
                assert_true(st.pieces >= want_pieces);
            }
            assert_true(st.peak_inflight_bytes <= opt.max_inflight_bytes);
            assert_int_equal(st.inflight_bytes, 0);
            st_io_close(io);
            free(mem);
        }
    }
    /* bad pieces are refused at open */
    st_io *io = NULL;
    if (st_odirect_probe(dir) == 0) {
        assert_int_equal(st_io_open(path_list(), N_FILES, &(st_io_options){.max_piece = 1000}, &io), ST_ERR_INVALID);
        assert_non_null(strstr(st_last_error(), "max_piece 1000"));
        assert_non_null(strstr(st_last_error(), "alignment"));
        assert_null(io);
    }
    assert_int_equal(st_io_open(path_list(), N_FILES, &(st_io_options){.max_piece = (size_t)2 << 30}, &io), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "max_piece"));
    io = open_engine(&(st_io_options){.buffered = true, .max_piece = 1000}); /* any size when buffered */
    st_io_close(io);
}

/* The kernel never holds more than max_inflight_bytes, and always one piece. */
static void inflight_bytes_capped(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        struct { size_t piece, cap, want_peak; } cases[] = {{2 * K, 6 * K, 6 * K}, {2 * K, 7 * K, 6 * K}, {4 * K, 2 * K, 4 * K}, {2 * K, 0, 16 * 2 * K}};
        for (size_t t = 0; t < ST_ARRAY_LEN(cases); t++) {
            st_io *io = open_engine(&(st_io_options){.queue_depth = 16, .force_pread = pread_modes2[m], .buffer_bytes = 256 * K,
                                                     .max_piece = cases[t].piece, .max_inflight_bytes = cases[t].cap});
            uint8_t *pool = st_io_buffer(io, NULL);
            enum { N = 8 };
            st_io_read reqs[N];
            for (int k = 0; k < N; k++)
                reqs[k] = (st_io_read){.file = k % N_FILES, .offset = (uint64_t)k * 32 * K, .length = 32 * K, .dst = pool + k * 32 * K, .tag = (uint64_t)k};
            assert_int_equal(st_io_submit(io, reqs, N), 0);
            st_io_stats st;
            st_io_get_stats(io, &st);
            if (!pread_modes2[m]) assert_int_equal(st.inflight_bytes, cases[t].want_peak); /* filled at submit */
            st_io_completion c[N];
            assert_int_equal(collect(io, c, N), N);
            for (int k = 0; k < N; k++) {
                assert_int_equal(c[k].status, 0);
                assert_memory_equal(reqs[c[k].tag].dst, content[reqs[c[k].tag].file] + reqs[c[k].tag].offset, 32 * K);
            }
            st_io_get_stats(io, &st);
            /* pread: one op at a time, the peak is one piece */
            assert_int_equal(st.peak_inflight_bytes, pread_modes2[m] ? cases[t].piece : cases[t].want_peak);
            assert_int_equal(st.pieces, N * 32 * K / cases[t].piece);
            st_io_close(io);
        }
    }
}

/* max_inflight_urgent_bytes: normal pieces fill the kernel up to max_inflight_bytes,
 * urgent ones up to the urgent cap (io_uring: filled at submit). */
static void urgent_reads_go_deeper(void **state) {
    (void)state;
    st_io *io = open_engine(&(st_io_options){.queue_depth = 16, .buffer_bytes = 256 * K, .max_piece = 2 * K,
                                             .max_inflight_bytes = 4 * K, .max_inflight_urgent_bytes = 10 * K});
    uint8_t *pool = st_io_buffer(io, NULL);
    enum { N = 4 };
    st_io_read reqs[2 * N];
    for (int k = 0; k < 2 * N; k++)
        reqs[k] = (st_io_read){.file = k % N_FILES, .offset = (uint64_t)k * 8 * K, .length = 8 * K, .dst = pool + k * 8 * K,
                               .tag = (uint64_t)k, .urgent = k >= N};
    assert_int_equal(st_io_submit(io, reqs, N), 0); /* normal ones: 2 pieces of 2 KiB in the kernel */
    st_io_stats st;
    st_io_get_stats(io, &st);
    assert_int_equal(st.inflight_bytes, 4 * K);
    assert_int_equal(st_io_submit(io, reqs + N, N), 0); /* urgent ones: up to 10 KiB */
    st_io_get_stats(io, &st);
    assert_int_equal(st.inflight_bytes, 10 * K);
    st_io_completion c[2 * N];
    assert_int_equal(collect(io, c, 2 * N), 2 * N);
    for (int k = 0; k < 2 * N; k++) {
        assert_int_equal(c[k].status, 0);
        assert_memory_equal(reqs[c[k].tag].dst, content[reqs[c[k].tag].file] + reqs[c[k].tag].offset, 8 * K);
    }
    st_io_get_stats(io, &st);
    assert_int_equal(st.peak_inflight_bytes, 10 * K);
    st_io_close(io);
}

/* Ordered completions: one piece in the kernel at a time (the cap is one piece). */
static st_io *open_one_at_a_time(bool force_pread) {
    return open_engine(&(st_io_options){.queue_depth = 8, .force_pread = force_pread, .buffer_bytes = 256 * K,
                                        .max_piece = 2 * K, .max_inflight_bytes = 2 * K});
}

static int position_of(const st_io_completion *c, int n, uint64_t tag) {
    for (int k = 0; k < n; k++)
        if (c[k].tag == tag) return k;
    return -1;
}

static void urgent_reads_overtake(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        st_io *io = open_one_at_a_time(pread_modes2[m]);
        uint8_t *pool = st_io_buffer(io, NULL);
        enum { N = 6 };
        st_io_read reqs[N + 2];
        for (int k = 0; k < N; k++) /* normal reads on files 0 and 1, 2 pieces each */
            reqs[k] = (st_io_read){.file = k % 2, .offset = (uint64_t)k * 4 * K, .length = 4 * K, .dst = pool + k * 4 * K, .tag = (uint64_t)k};
        assert_int_equal(st_io_submit(io, reqs, N), 0);
        /* then two urgent ones on file 2 (another file: urgency wins across the round-robin) */
        for (int k = N; k < N + 2; k++)
            reqs[k] = (st_io_read){.file = 2, .offset = (uint64_t)k * 4 * K, .length = 4 * K, .dst = pool + k * 4 * K,
                                   .tag = 100 + (uint64_t)k, .urgent = true};
        assert_int_equal(st_io_submit(io, reqs + N, 1), 0);
        assert_int_equal(st_io_submit(io, reqs + N + 1, 1), 0);
        st_io_completion c[N + 2];
        assert_int_equal(collect(io, c, N + 2), N + 2);
        /* the urgent ones first, in their order; the normal ones after (the ring
         * had the first normal piece in the kernel already: it finishes later) */
        assert_int_equal(c[0].tag, 100 + N);
        assert_int_equal(c[1].tag, 101 + N);
        for (int k = 0; k < N + 2; k++) {
            assert_int_equal(c[k].status, 0);
            const st_io_read *r = &reqs[c[k].tag >= 100 ? c[k].tag - 100 : c[k].tag];
            assert_memory_equal(r->dst, content[r->file] + r->offset, r->length);
        }
        st_io_stats st;
        st_io_get_stats(io, &st);
        assert_int_equal(st.urgent, 2);
        st_io_close(io);
    }
}

static void promote_moves_queued_pieces_ahead(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        st_io *io = open_one_at_a_time(pread_modes2[m]);
        uint8_t *pool = st_io_buffer(io, NULL);
        enum { N = 6 };
        st_io_read reqs[N];
        for (int k = 0; k < N; k++)
            reqs[k] = (st_io_read){.file = 0, .offset = (uint64_t)k * 4 * K, .length = 4 * K, .dst = pool + k * 4 * K, .tag = (uint64_t)k};
        assert_int_equal(st_io_submit(io, reqs, N), 0);
        assert_int_equal(st_io_promote(io, 4), 1);
        assert_int_equal(st_io_promote(io, 4), 0); /* already urgent */
        assert_int_equal(st_io_promote(io, 99), 0);
        assert_int_equal(st_io_promote(io, 3), 1);
        st_io_completion c[N];
        assert_int_equal(collect(io, c, N), N);
        assert_int_equal(c[0].tag, 4);
        assert_int_equal(c[1].tag, 3);
        for (int k = 0; k < N; k++) {
            assert_int_equal(c[k].status, 0);
            assert_memory_equal(reqs[c[k].tag].dst, content[0] + reqs[c[k].tag].offset, 4 * K);
        }
        /* the rest in submit order */
        assert_true(position_of(c, N, 0) < position_of(c, N, 1) && position_of(c, N, 1) < position_of(c, N, 2) &&
                    position_of(c, N, 2) < position_of(c, N, 5));
        st_io_stats st;
        st_io_get_stats(io, &st);
        assert_int_equal(st.promoted, 2);
        assert_int_equal(st.urgent, 0);
        /* a request entirely in the kernel has nothing queued to promote */
        if (pread_modes2[m] == false) {
            st_io_read one = {.file = 0, .offset = 0, .length = 2 * K, .dst = pool, .tag = 0};
            assert_int_equal(st_io_submit(io, &one, 1), 0);
            assert_int_equal(st_io_promote(io, 0), 0);
            assert_int_equal(collect(io, c, 1), 1);
            assert_int_equal(c[0].status, 0);
        }
        st_io_close(io);
    }
}

/* Cancel of a request with pieces in the kernel (ring) or already read
 * (pread): its queued pieces are dropped, their bytes never written; it
 * completes as cancelled once the issued pieces are back. */
static void cancel_half_issued(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        st_io *io = open_engine(&(st_io_options){.queue_depth = 2, .force_pread = pread_modes2[m], .buffer_bytes = 64 * K,
                                                 .max_piece = K, .max_inflight_bytes = 2 * K});
        uint8_t *pool = st_io_buffer(io, NULL);
        memset(pool, 0x5A, 64 * K);
        st_io_read reqs[] = {{.file = 0, .offset = 0, .length = 8 * K, .dst = pool, .tag = 1},
                             {.file = 0, .offset = 8 * K, .length = 4 * K, .dst = pool + 8 * K, .tag = 2}};
        assert_int_equal(st_io_submit(io, reqs, 2), 0);
        st_io_completion c[2];
        if (pread_modes2[m]) assert_int_equal(st_io_poll(io, c, 2), 0); /* pread: runs the first 2 pieces (the depth) */
        st_io_stats st;
        st_io_get_stats(io, &st);
        assert_int_equal(st.pieces, 2);
        /* ring: the 2 pieces are in the kernel, the request waits for them */
        assert_int_equal(st_io_cancel(io, 1), pread_modes2[m] ? 1 : 0);
        assert_int_equal(collect(io, c, 2), 2);
        assert_int_equal(c[0].tag, 1);
        assert_int_equal(c[0].status, ST_ERR_CANCELLED);
        assert_non_null(strstr(c[0].message, "cancelled"));
        assert_true(c[0].bytes <= 2 * K);
        if (pread_modes2[m]) {
            assert_int_equal(c[0].bytes, 2 * K);
            assert_memory_equal(pool, content[0], 2 * K);
        }
        static const uint8_t untouched[6 * K] = {[0 ... 6 * K - 1] = 0x5A};
        assert_memory_equal(pool + 2 * K, untouched, 6 * K);
        assert_int_equal(c[1].tag, 2);
        assert_int_equal(c[1].status, 0);
        assert_memory_equal(pool + 8 * K, content[0] + 8 * K, 4 * K);
        st_io_get_stats(io, &st);
        assert_int_equal(st.pieces, 2 + 4);
        assert_int_equal(st.cancelled, 1);
        st_io_close(io);
    }
}

/* EIO in the 3rd piece fails the request naming file and offset; no piece
 * writes after the completion (at depth 2 and with every piece in the kernel). */
static void error_in_a_piece_fails_the_request(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        for (int depth = 2; depth <= 8; depth += 6) {
            st_io *io = open_engine(&(st_io_options){.queue_depth = depth, .force_pread = pread_modes2[m], .buffer_bytes = 64 * K,
                                                     .max_piece = K, .faults = "eio@0x2000#1"});
            uint8_t *pool = st_io_buffer(io, NULL);
            st_io_read r = {.file = 1, .offset = 0, .length = 6 * K, .dst = pool, .tag = 9};
            assert_int_equal(st_io_submit(io, &r, 1), 0);
            st_io_completion c;
            assert_int_equal(collect(io, &c, 1), 1);
            assert_int_equal(c.status, ST_ERR_IO);
            assert_int_equal(c.err, EIO);
            assert_int_equal(c.tag, 9);
            assert_non_null(strstr(c.message, paths[1]));
            assert_non_null(strstr(c.message, "offset 8192"));
            assert_non_null(strstr(c.message, "errno 5"));
            assert_non_null(strstr(c.message, "piece 3 of 6"));
            st_io_stats st;
            st_io_get_stats(io, &st);
            assert_int_equal(st.inflight_bytes, 0);
            assert_int_equal(st.errors, 1);
            /* pread: pieces 1..3; depth 8: all 6 at once; depth 2: 1 and 2, then 3 and maybe 4
             * (4 goes when 2 is back before 3 fails), never 5 or 6 */
            if (pread_modes2[m] || depth == 8) assert_int_equal(st.pieces, pread_modes2[m] ? 3 : 6);
            else assert_true(st.pieces == 3 || st.pieces == 4);
            memset(pool, 0x11, 6 * K);
            usleep(20000);
            assert_int_equal(st_io_poll(io, &c, 1), 0);
            static const uint8_t same[6 * K] = {[0 ... 6 * K - 1] = 0x11};
            assert_memory_equal(pool, same, 6 * K);
            /* the engine goes on: the next read is fine */
            assert_int_equal(st_io_read_sync(io, 1, 3 * K, 3 * K, pool), 0);
            assert_memory_equal(pool, content[1] + 3 * K, 3 * K);
            st_io_close(io);
        }
    }
}

int main(void) {
    tu_rng_set(0x9e3779b97f4a7c15ull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_match_pread_at_many_depths),
        cmocka_unit_test(pread_backend_matches),
        cmocka_unit_test(reads_spread_over_files),
        cmocka_unit_test(unaligned_requests),
        cmocka_unit_test(eof_and_truncated_files),
        cmocka_unit_test(injected_errors),
        cmocka_unit_test(injected_short_reads_are_retried),
        cmocka_unit_test(direct_refused_at_open_warns_once),
        cmocka_unit_test(tmpfs_fallback),
        cmocka_unit_test(direct_refused_at_read_time),
        cmocka_unit_test(cancellation),
        cmocka_unit_test(poll_wait_and_sync_reads),
        cmocka_unit_test(bad_arguments_and_rules),
        cmocka_unit_test(split_reads_match),
        cmocka_unit_test(inflight_bytes_capped),
        cmocka_unit_test(urgent_reads_go_deeper),
        cmocka_unit_test(urgent_reads_overtake),
        cmocka_unit_test(promote_moves_queued_pieces_ahead),
        cmocka_unit_test(cancel_half_issued),
        cmocka_unit_test(error_in_a_piece_fails_the_request),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
