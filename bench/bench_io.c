/* `strata bench io FILE|PACK|CHECKPOINT`: random expert-sized O_DIRECT reads
 * through the read engine (io/uring.h) at several queue depths, each against
 * fio (--ioengine=io_uring --direct=1) with the same block size, depth, files
 * and region, run in the same invocation, interleaved round by round; prints
 * GB/s, the ratio and its spread. A PACK is read in its own routed-expert
 * extents over all its data files (bench/io_target.c). With --piece, instead
 * of fio: whole reads against reads cut into pieces (st_io_options.max_piece)
 * under in-flight byte caps (max_inflight_bytes), interleaved the same way.
 * Owns no engine code: it only drives st_io and fio. */
#include <sys/mman.h>
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/bench.h"
#include "bench/io_target.h"
#include "engine/cli.h"
#include "io/uring.h"

/* One V4-Flash routed expert in FP4: w1, w3 (2048 x 4096 each... as (moe_inter, dim))
 * and w2, each e2m1 (half a byte) plus one ue8m0 scale per 32 values. */
#define EXPERT_BYTES ST_ALIGN_UP(3ull * (2048ull * 4096 / 2 + 2048ull * 4096 / 32), 4096)
enum { MAX_DEPTHS = 16, MAX_ROUNDS = 100, ALIGN = 4096, MAX_SIZES = 8 };

typedef struct {
    const char *file; /* FILE, PACK or checkpoint directory, as given */
    uint64_t block, create;
    bool block_given;
    int depths[MAX_DEPTHS], n_depths;
    double seconds;
    int rounds;
    bool json, no_fio;
    uint64_t pieces[MAX_SIZES], inflights[MAX_SIZES]; /* --piece, --inflight */
    int n_pieces, n_inflights;
} io_args;

typedef struct {
    int depth;
    double bytes, secs, fio_bytes, fio_secs; /* summed over the rounds */
    double gbs, fio_gbs;                      /* fio_gbs < 0: not measured */
    double ratio_lo, ratio_hi, ratio_median;  /* spread of the per-round ratios */
    char fio_cmd[2600];
    char fio_error[256];
} io_result;

static int usage(FILE *f, int rc) {
    fprintf(f,
            "usage: strata bench io FILE|PACK|CHECKPOINT [--block SIZE] [--depths 1,2,4,...] [--seconds S]\n"
            "                       [--rounds N] [--create SIZE] [--no-fio] [--json]\n"
            "                       [--piece SIZE,... [--inflight SIZE,...]]\n\n"
            "Random expert-sized reads through strata's io_uring engine (O_DIRECT, registered buffers and\n"
            "files) for S seconds (default 6) at each queue depth (default 1,2,4,8,16,32,64), and fio\n"
            "--ioengine=io_uring --direct=1 --rw=randread with the same block size, depth, files and region\n"
            "(plus --fixedbufs --registerfiles when strata registered its buffers and files).\n"
            "  FILE        random blocks of SIZE bytes (default %llu: one FP4 V4-Flash expert, w1+w3+w2\n"
            "              with scales, 4096-aligned) at block-aligned offsets\n"
            "  PACK        the pack's own routed-expert extents (one read each, over all its data files);\n"
            "              the block is the extent size and fio reads random offsets over the same region\n"
            "  CHECKPOINT  a safetensors checkpoint directory: each expert's six tensors widened to 4096\n"
            "              and read as one block (the longest such span)\n"
            "The S seconds are split into N rounds (default 6) alternating strata and fio (strata first on\n"
            "even rounds, fio first on odd ones) so a drifting disk (virtual disks, other jobs) biases\n"
            "neither. Prints GB/s, strata/fio over all rounds, and the median and range of the per-round\n"
            "ratios. --create SIZE writes FILE first when it does not exist (e.g. 4G).\n"
            "--piece SIZE,...  instead of fio: whole reads against each request cut into pieces of SIZE\n"
            "              (st_io_options.max_piece) with at most --inflight SIZE,... bytes in the kernel\n"
            "              (max_inflight_bytes; default: no cap), every combination, same depths, S seconds\n"
            "              each, interleaved in N rounds; prints GB/s and the ratio to whole reads.\n",
            (unsigned long long)EXPERT_BYTES);
    return rc;
}

/* A comma-separated list of sizes ("2M,4M"), each > 0. */
static int parse_sizes(const char *opt, const char *v, uint64_t *out, int *n) {
    *n = 0;
    for (const char *p = v; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char item[32];
        if (*n == MAX_SIZES || len == 0 || len >= sizeof item)
            return st_error(ST_ERR_INVALID, "%s: expected up to %d comma-separated sizes, found '%s'", opt, MAX_SIZES, v);
        memcpy(item, p, len);
        item[len] = 0;
        if (st_parse_size(item, 0, opt, &out[*n])) return ST_ERR_INVALID;
        if (!out[*n]) return st_error(ST_ERR_INVALID, "%s: sizes must be > 0, found '%s'", opt, item);
        (*n)++;
        p = end ? end + 1 : p + len;
    }
    if (!*n) return st_error(ST_ERR_INVALID, "%s: empty list", opt);
    return 0;
}

static int parse_args(int argc, char **argv, io_args *a) {
    *a = (io_args){.block = EXPERT_BYTES, .seconds = 6, .rounds = 6, .depths = {1, 2, 4, 8, 16, 32, 64}, .n_depths = 7};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = !strcmp(o, "--block") || !strcmp(o, "--depths") || !strcmp(o, "--seconds") || !strcmp(o, "--create") ||
                     !strcmp(o, "--rounds") || !strcmp(o, "--piece") || !strcmp(o, "--inflight");
        if (takes && !v) return st_error(ST_ERR_INVALID, "%s needs a value", o);
        if (!strcmp(o, "--json")) a->json = true;
        else if (!strcmp(o, "--no-fio")) a->no_fio = true;
        else if (!strcmp(o, "--block")) { if (st_parse_size(v, 0, "--block", &a->block)) return ST_ERR_INVALID; a->block_given = true; i++; }
        else if (!strcmp(o, "--create")) { if (st_parse_size(v, 0, "--create", &a->create)) return ST_ERR_INVALID; i++; }
        else if (!strcmp(o, "--seconds")) {
            char *end;
            a->seconds = strtod(v, &end);
            if (*end || !(a->seconds > 0 && a->seconds <= 3600)) return st_error(ST_ERR_INVALID, "--seconds: expected 0 < S <= 3600, found '%s'", v);
            i++;
        } else if (!strcmp(o, "--rounds")) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > MAX_ROUNDS) return st_error(ST_ERR_INVALID, "--rounds: expected 1..%d, found '%s'", MAX_ROUNDS, v);
            a->rounds = (int)n;
            i++;
        } else if (!strcmp(o, "--depths")) {
            a->n_depths = 0;
            for (const char *p = v; *p;) {
                char *end;
                long d = strtol(p, &end, 10);
                if (end == p || d < 1 || d > 4096 || a->n_depths == MAX_DEPTHS || (*end && *end != ','))
                    return st_error(ST_ERR_INVALID, "--depths: expected up to %d comma-separated depths 1..4096, found '%s'", MAX_DEPTHS, v);
                a->depths[a->n_depths++] = (int)d;
                p = *end ? end + 1 : end;
            }
            if (!a->n_depths) return st_error(ST_ERR_INVALID, "--depths: empty list");
            i++;
        } else if (!strcmp(o, "--piece") || !strcmp(o, "--inflight")) {
            bool piece = !strcmp(o, "--piece");
            if (parse_sizes(o, v, piece ? a->pieces : a->inflights, piece ? &a->n_pieces : &a->n_inflights)) return ST_ERR_INVALID;
            i++;
        } else if (o[0] == '-') return st_error(ST_ERR_INVALID, "unknown option '%s'", o);
        else if (a->file) return st_error(ST_ERR_INVALID, "one FILE expected, found '%s' and '%s'", a->file, o);
        else a->file = o;
    }
    if (!a->file) return st_error(ST_ERR_INVALID, "FILE, PACK or CHECKPOINT missing");
    if (a->n_inflights && !a->n_pieces) return st_error(ST_ERR_INVALID, "--inflight needs --piece");
    for (int k = 0; k < a->n_pieces; k++)
        if (a->pieces[k] % ALIGN || a->pieces[k] > (1ull << 30))
            return st_error(ST_ERR_INVALID, "--piece: a multiple of %d bytes up to 1 GiB expected, found %llu", ALIGN,
                            (unsigned long long)a->pieces[k]);
    if (!a->block) return st_error(ST_ERR_INVALID, "--block: must be > 0");
    if (a->block % ALIGN && a->block_given) {
        uint64_t up = ST_ALIGN_UP(a->block, ALIGN);
        fprintf(stderr, "strata bench io: --block %llu rounded up to %llu (O_DIRECT needs 4096-byte multiples)\n",
                (unsigned long long)a->block, (unsigned long long)up);
        a->block = up;
    }
    if (a->block > (1ull << 30)) return st_error(ST_ERR_INVALID, "--block: at most 1 GiB, found %llu", (unsigned long long)a->block);
    return 0;
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

/* Writes `bytes` of pseudo-random data (not zeros: nothing may shortcut them). */
static int create_file(const char *path, uint64_t bytes, bool quiet) {
    enum { CHUNK = 8 << 20 };
    bytes = ST_ALIGN_UP(bytes, ALIGN);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EINVAL) fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return st_error(ST_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    uint64_t *buf = st_aligned_alloc(ALIGN, CHUNK);
    if (!buf) { close(fd); unlink(path); return st_error(ST_ERR_NOMEM, "no memory for a %d-byte write buffer", CHUNK); }
    uint64_t seed = 0x2545f4914f6cdd1dull;
    st_progress bar;
    st_progress_begin(&bar, "writing test file", bytes, true, quiet);
    int status = 0;
    for (uint64_t at = 0; at < bytes && !status; at += CHUNK) {
        size_t n = (size_t)ST_MIN((uint64_t)CHUNK, bytes - at);
        for (size_t i = 0; i < n / 8; i++) buf[i] = xorshift(&seed);
        ssize_t w = pwrite(fd, buf, n, (off_t)at);
        if (w != (ssize_t)n) status = st_error(ST_ERR_IO, "%s: write at offset %llu: %s", path, (unsigned long long)at, w < 0 ? strerror(errno) : "short write");
        st_progress_update(&bar, at + n);
    }
    st_progress_end(&bar);
    if (!status && fsync(fd) != 0) status = st_error(ST_ERR_IO, "%s: fsync: %s", path, strerror(errno));
    close(fd);
    free(buf);
    if (status) unlink(path);
    return status;
}

/* Keeps `depth` reads of random blocks in flight for `seconds`; adds the
 * bytes of completed reads and the time until the last one to *bytes, *secs. */
static int strata_slice(st_io *io, uint8_t *pool, const io_target *t, int depth, double seconds, uint64_t *seed, double *bytes,
                        double *secs) {
    st_io_completion *done = calloc((size_t)depth, sizeof *done);
    st_io_read *next = calloc((size_t)depth, sizeof *next);
    if (!done || !next) { free(done); free(next); return st_error(ST_ERR_NOMEM, "no memory"); }
    int rc = 0;
    double got = 0, t0 = st_time_s(), stop = t0 + seconds;
    for (int k = 0; k < depth && !rc; k++) {
        st_io_read r = {.length = t->block, .dst = pool + (size_t)k * t->block, .tag = (uint64_t)k};
        io_target_pick(t, xorshift(seed), &r.file, &r.offset);
        next[k] = r;
    }
    if (!rc) rc = st_io_submit(io, next, depth);
    while (!rc && st_io_outstanding(io) > 0) {
        int n = st_io_wait(io, done, depth, 1, 10000);
        if (n < 0) { rc = n; break; }
        if (n == 0) { rc = st_error(ST_ERR_IO, "%s: no read finished in 10 s", t->paths[0]); break; }
        bool more = st_time_s() < stop;
        int n_next = 0;
        for (int k = 0; k < n && !rc; k++) {
            if (done[k].status) { rc = st_error(done[k].status, "%s", done[k].message); break; }
            got += (double)done[k].bytes;
            if (more) {
                st_io_read *r = &next[n_next++];
                *r = (st_io_read){.length = t->block, .dst = pool + done[k].tag * t->block, .tag = done[k].tag};
                io_target_pick(t, xorshift(seed), &r->file, &r->offset);
            }
        }
        if (!rc && n_next) rc = st_io_submit(io, next, n_next); /* one io_uring_enter for the batch */
    }
    *bytes += got;
    *secs += st_time_s() - t0;
    free(done);
    free(next);
    return rc;
}

static bool have_fio(void) {
    const char *path = getenv("PATH");
    if (!path) return false;
    char *copy = strdup(path), *save = NULL;
    bool found = false;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char exe[4096];
        snprintf(exe, sizeof exe, "%s/fio", d);
        found = access(exe, X_OK) == 0;
    }
    free(copy);
    return found;
}

/* Runs fio with the same block size, depth and file, and the same ring features
 * strata used (registered buffers and files: without them fio pins every
 * buffer's pages on each read, which halves its rate on 13 MB reads here);
 * fills r->fio_gbs or r->fio_error. */
static void run_fio(const io_target *t, const st_io_stats *st, double seconds, io_result *r, double *bytes, double *secs) {
    char names[2048];
    size_t used = 0;
    for (int f = 0; f < t->n_files; f++) {
        if (strpbrk(t->paths[f], "':")) {
            snprintf(r->fio_error, sizeof r->fio_error, "%s: a quote or colon in the path (fio cannot take it)", t->paths[f]);
            return;
        }
        int k = snprintf(names + used, sizeof names - used, "%s%s", f ? ":" : "", t->paths[f]);
        if (k < 0 || (size_t)k >= sizeof names - used) { snprintf(r->fio_error, sizeof r->fio_error, "file names too long"); return; }
        used += (size_t)k;
    }
    /* several files: one job, fio spreads the reads over them round-robin and
     * splits --size evenly, so each file's [offset, offset + fio_size) is read */
    snprintf(r->fio_cmd, sizeof r->fio_cmd,
             /* --readonly/--allow_file_create=0: a read job whose region passes a file's end makes
              * fio lay the file out anew (it rewrote a checkpoint shard once); never on our files */
             "fio --readonly --name=strata-bench-io --filename='%s' --allow_file_create=0 --ioengine=io_uring "
             "--direct=1 --rw=randread --bs=%llu "
             "--iodepth=%d --offset=%llu --size=%llu --norandommap --randrepeat=0 --time_based --runtime=%dms%s%s "
             "--output-format=json",
             names, (unsigned long long)t->block, r->depth, (unsigned long long)t->fio_offset,
             (unsigned long long)(t->fio_size * (uint64_t)t->n_files), (int)(seconds * 1000 + 0.5),
             st->fixed_buffers ? " --fixedbufs" : "", st->fixed_files ? " --registerfiles" : "");
    char cmd[sizeof r->fio_cmd + 16];
    snprintf(cmd, sizeof cmd, "%s 2>&1", r->fio_cmd);
    FILE *p = popen(cmd, "r");
    if (!p) { snprintf(r->fio_error, sizeof r->fio_error, "popen: %s", strerror(errno)); return; }
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    for (size_t got; out && (got = fread(out + len, 1, cap - len - 1, p)) > 0;) {
        len += got;
        if (len + 1 == cap) { char *bigger = realloc(out, cap *= 2); if (!bigger) { free(out); out = NULL; } else out = bigger; }
    }
    int status = pclose(p);
    if (!out) { snprintf(r->fio_error, sizeof r->fio_error, "no memory"); return; }
    out[len] = 0;
    const char *json = strstr(out, "\n{");
    json = !strncmp(out, "{", 1) ? out : json ? json + 1 : NULL;
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    const cJSON *job = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "jobs"), 0);
    const cJSON *read = cJSON_GetObjectItem(job, "read");
    const cJSON *io_bytes = cJSON_GetObjectItem(read, "io_bytes"), *runtime = cJSON_GetObjectItem(read, "runtime");
    const cJSON *err = cJSON_GetObjectItem(job, "error");
    if (cJSON_IsNumber(io_bytes) && cJSON_IsNumber(runtime) && runtime->valuedouble > 0 && (!cJSON_IsNumber(err) || err->valueint == 0)) {
        *bytes += io_bytes->valuedouble;
        *secs += runtime->valuedouble / 1e3; /* ms */
    } else {
        char *nl = strchr(out, '\n');
        if (nl && nl - out < 200) *nl = 0;
        snprintf(r->fio_error, sizeof r->fio_error, "fio failed (exit status %d): %.200s", status, out);
    }
    cJSON_Delete(root);
    free(out);
}

static void print_json(const io_args *a, const io_target *t, const io_result *res, int n, bool fio) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "path", a->file);
    cJSON_AddStringToObject(root, "kind", io_target_kind_name(t->kind));
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    for (int f = 0; f < t->n_files; f++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", t->paths[f]);
        cJSON_AddNumberToObject(o, "bytes", (double)t->file_bytes[f]);
        cJSON_AddItemToArray(files, o);
    }
    cJSON_AddNumberToObject(root, "block_bytes", (double)t->block);
    cJSON_AddNumberToObject(root, "extents", t->n_extents ? t->n_extents : (double)t->n_blocks);
    cJSON_AddNumberToObject(root, "seconds", a->seconds);
    cJSON_AddNumberToObject(root, "rounds", a->rounds);
    cJSON_AddBoolToObject(root, "fio", fio);
    cJSON *arr = cJSON_AddArrayToObject(root, "results");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "depth", res[i].depth);
        cJSON_AddNumberToObject(o, "strata_gbs", res[i].gbs);
        if (res[i].fio_gbs > 0) {
            cJSON_AddNumberToObject(o, "fio_gbs", res[i].fio_gbs);
            cJSON_AddNumberToObject(o, "ratio", res[i].gbs / res[i].fio_gbs);
            cJSON_AddNumberToObject(o, "ratio_median_round", res[i].ratio_median);
            cJSON_AddNumberToObject(o, "ratio_min_round", res[i].ratio_lo);
            cJSON_AddNumberToObject(o, "ratio_max_round", res[i].ratio_hi);
        }
        if (res[i].fio_cmd[0]) cJSON_AddStringToObject(o, "fio_command", res[i].fio_cmd);
        if (res[i].fio_error[0]) cJSON_AddStringToObject(o, "fio_error", res[i].fio_error);
        cJSON_AddItemToArray(arr, o);
    }
    char *s = cJSON_Print(root);
    if (s) printf("%s\n", s);
    free(s);
    cJSON_Delete(root);
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* One depth: `rounds` alternating slices of strata and fio (strata first on
 * even rounds, fio first on odd ones), summed; each round's pair of rates also
 * gives one ratio (both sides saw nearly the same disk), whose median is
 * robust to a round where the disk stalled. */
static int measure_depth(const io_args *a, const io_target *t, bool fio, io_result *r) {
    st_io *io;
    int rc = st_io_open((const char *const *)t->paths, t->n_files,
                        &(st_io_options){.queue_depth = r->depth, .buffer_bytes = (size_t)t->block * (size_t)r->depth}, &io);
    if (rc) return rc;
    st_io_stats st;
    st_io_get_stats(io, &st);
    if (st.direct_files < t->n_files)
        fprintf(stderr, "strata bench io: note: %d of %d files are read through the page cache (no O_DIRECT)\n",
                t->n_files - st.direct_files, t->n_files);
    /* a fresh sequence each run, like fio --randrepeat=0: repeating the same
     * blocks would let a host-side cache of a virtual disk favour one side */
    uint64_t seed = (st_time_ns() * 0x9e3779b97f4a7c15ull) | 1;
    double slice = a->seconds / a->rounds, ratios[MAX_ROUNDS];
    int n_ratios = 0;
    r->ratio_lo = 1e30;
    for (int k = 0; k < a->rounds && !rc; k++) {
        double sb = 0, ss = 0, fb = 0, fs = 0;
        for (int order = 0; order < 2 && !rc; order++) {
            if ((order == 0) == (k % 2 == 0)) rc = strata_slice(io, st_io_buffer(io, NULL), t, r->depth, slice, &seed, &sb, &ss);
            else if (fio && !r->fio_error[0]) run_fio(t, &st, slice, r, &fb, &fs);
        }
        r->bytes += sb; r->secs += ss; r->fio_bytes += fb; r->fio_secs += fs;
        if (fs > 0 && ss > 0 && fb > 0) {
            double ratio = (sb / ss) / (fb / fs);
            ratios[n_ratios++] = ratio;
            r->ratio_lo = ST_MIN(r->ratio_lo, ratio);
            r->ratio_hi = ST_MAX(r->ratio_hi, ratio);
        }
    }
    st_io_close(io);
    if (n_ratios) {
        qsort(ratios, (size_t)n_ratios, sizeof *ratios, cmp_double);
        r->ratio_median = n_ratios % 2 ? ratios[n_ratios / 2] : (ratios[n_ratios / 2 - 1] + ratios[n_ratios / 2]) / 2;
    }
    r->gbs = r->secs > 0 ? r->bytes / r->secs / 1e9 : 0;
    r->fio_gbs = r->fio_secs > 0 && !r->fio_error[0] ? r->fio_bytes / r->fio_secs / 1e9 : -1;
    return rc;
}

/* --piece: whole reads and each (piece, in-flight cap) at one depth, S seconds
 * each, interleaved in rounds (the starting configuration rotates) over one
 * shared buffer; prints GB/s and the ratio to whole reads. */
static int measure_pieces(const io_args *a, const io_target *t, int depth) {
    enum { MAX_CFG = 1 + MAX_SIZES * MAX_SIZES };
    struct { uint64_t piece, cap; st_io *io; double bytes, secs, ratios[MAX_ROUNDS], peak; int n_ratios; } cfg[MAX_CFG];
    int n = 0;
    memset(cfg, 0, sizeof cfg);
    n++; /* whole reads */
    for (int p = 0; p < a->n_pieces; p++)
        for (int c = 0; c < ST_MAX(a->n_inflights, 1); c++) {
            cfg[n].piece = a->pieces[p];
            cfg[n].cap = a->n_inflights ? a->inflights[c] : 0;
            n++;
        }
    const size_t huge = 2u << 20, bytes = ST_ALIGN_UP((size_t)t->block * (size_t)depth, huge);
    uint8_t *pool = st_aligned_alloc(huge, bytes);
    if (!pool) return st_error(ST_ERR_NOMEM, "no memory for a %zu-byte read buffer", bytes);
    (void)madvise(pool, bytes, MADV_HUGEPAGE); /* as the engine's own pool: few large device requests */
    st_io_region regions[64];
    int n_regions = 0;
    for (size_t at = 0; at < bytes && n_regions < 64; at += 1u << 30)
        regions[n_regions++] = (st_io_region){pool + at, ST_MIN((size_t)1 << 30, bytes - at)};
    int rc = 0;
    for (int j = 0; j < n && !rc; j++)
        rc = st_io_open((const char *const *)t->paths, t->n_files,
                        &(st_io_options){.queue_depth = depth, .regions = regions, .n_regions = n_regions,
                                         .max_piece = (size_t)cfg[j].piece, .max_inflight_bytes = (size_t)cfg[j].cap},
                        &cfg[j].io);
    uint64_t seed = (st_time_ns() * 0x9e3779b97f4a7c15ull) | 1;
    double slice = a->seconds / a->rounds;
    for (int k = 0; k < a->rounds && !rc; k++) {
        double rate[MAX_CFG] = {0};
        for (int q = 0; q < n && !rc; q++) {
            int j = (q + k) % n;
            double b = 0, sec = 0;
            rc = strata_slice(cfg[j].io, pool, t, depth, slice, &seed, &b, &sec);
            cfg[j].bytes += b;
            cfg[j].secs += sec;
            rate[j] = sec > 0 ? b / sec : 0;
        }
        for (int j = 1; j < n && !rc; j++)
            if (rate[0] > 0) cfg[j].ratios[cfg[j].n_ratios++] = rate[j] / rate[0];
    }
    char ps[32], cs[32];
    for (int j = 0; j < n && !rc; j++) {
        st_io_stats st;
        st_io_get_stats(cfg[j].io, &st);
        double gbs = cfg[j].secs > 0 ? cfg[j].bytes / cfg[j].secs / 1e9 : 0;
        double whole = cfg[0].secs > 0 ? cfg[0].bytes / cfg[0].secs / 1e9 : 0;
        char median[32] = "-";
        if (cfg[j].n_ratios) {
            qsort(cfg[j].ratios, (size_t)cfg[j].n_ratios, sizeof(double), cmp_double);
            int m = cfg[j].n_ratios;
            snprintf(median, sizeof median, "%.3f", m % 2 ? cfg[j].ratios[m / 2] : (cfg[j].ratios[m / 2 - 1] + cfg[j].ratios[m / 2]) / 2);
        }
        printf("%6d %10s %10s %10.3f %8.3f %8s %12.1f\n", depth, j ? st_fmt_size(cfg[j].piece, ps, sizeof ps) : "whole",
               cfg[j].cap ? st_fmt_size(cfg[j].cap, cs, sizeof cs) : "-", gbs, whole > 0 ? gbs / whole : 0, median,
               (double)st.peak_inflight_bytes / (1 << 20));
    }
    fflush(stdout);
    for (int j = 0; j < n; j++) st_io_close(cfg[j].io);
    free(pool);
    return rc;
}

int bench_io(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) return usage(stdout, 0);
    io_args a;
    if (parse_args(argc, argv, &a)) { fprintf(stderr, "strata bench io: %s\n", st_last_error()); return usage(stderr, 2); }
    struct stat st;
    if (stat(a.file, &st) != 0) {
        if (errno != ENOENT || !a.create) {
            fprintf(stderr, "strata bench io: %s: %s%s\n", a.file, strerror(errno), errno == ENOENT ? " (--create SIZE writes a test file, e.g. --create 4G)" : "");
            return 1;
        }
        int rc = create_file(a.file, a.create, a.json);
        if (rc) return cli_fail("bench io", rc);
    } else if (a.create && !a.json) {
        printf("%s exists: using it as it is (--create only writes a missing file)\n", a.file);
    }
    io_target t;
    int rc = io_target_open(a.file, a.block, a.block_given, &t);
    if (rc) return cli_fail("bench io", rc);
    if (a.n_pieces) {
        if (a.json) { io_target_free(&t); fprintf(stderr, "strata bench io: --json is not available with --piece\n"); return 2; }
        char bs[32];
        printf("%s %s: %d file%s; %llu reads of %s; %g s per configuration in %d interleaved rounds\n",
               io_target_kind_name(t.kind), a.file, t.n_files, t.n_files == 1 ? "" : "s",
               (unsigned long long)(t.n_extents ? (uint64_t)t.n_extents : t.n_blocks), st_fmt_size(t.block, bs, sizeof bs),
               a.seconds, a.rounds);
        printf("%6s %10s %10s %10s %8s %8s %12s\n", "depth", "piece", "inflight", "GB/s", "ratio", "median", "peak MiB");
        for (int i = 0; i < a.n_depths && !rc; i++) rc = measure_pieces(&a, &t, a.depths[i]);
        io_target_free(&t);
        return rc ? cli_fail("bench io", rc) : 0;
    }
    bool fio = !a.no_fio && have_fio();
    char fs[32], bs[32];
    if (!a.json) {
        uint64_t total = 0;
        for (int f = 0; f < t.n_files; f++) total += t.file_bytes[f];
        printf("%s %s: %d file%s, %s; %llu %s of %s (%llu bytes)", io_target_kind_name(t.kind), a.file, t.n_files,
               t.n_files == 1 ? "" : "s", st_fmt_size(total, fs, sizeof fs),
               (unsigned long long)(t.n_extents ? (uint64_t)t.n_extents : t.n_blocks),
               t.kind == IO_TARGET_FILE ? "blocks" : "expert extents", st_fmt_size(t.block, bs, sizeof bs),
               (unsigned long long)t.block);
        if (t.skipped) printf(" (%d experts of another size or layout left out)", t.skipped);
        printf("\nfio region: [%llu, +%llu) of each file; %g s per depth and engine in %d interleaved rounds\n",
               (unsigned long long)t.fio_offset, (unsigned long long)t.fio_size, a.seconds, a.rounds);
        if (t.n_files > 1)
            for (int f = 0; f < t.n_files; f++) printf("  file %d: %s (%s)\n", f, t.paths[f], st_fmt_size(t.file_bytes[f], fs, sizeof fs));
        if (!fio) printf("%s: no ratio\n", a.no_fio ? "fio skipped (--no-fio)" : "fio not found in PATH (apt install fio)");
        printf("%6s %12s %12s %8s %8s %15s\n", "depth", "strata GB/s", "fio GB/s", "ratio", "median", "round ratios");
    }
    io_result res[MAX_DEPTHS];
    int failures = 0;
    for (int i = 0; i < a.n_depths; i++) {
        io_result *r = &res[i];
        memset(r, 0, sizeof *r);
        r->depth = a.depths[i];
        r->fio_gbs = -1;
        rc = measure_depth(&a, &t, fio, r);
        if (rc) { io_target_free(&t); return cli_fail("bench io", rc); }
        failures += fio && r->fio_gbs <= 0;
        if (a.json) continue;
        if (r->fio_gbs > 0)
            printf("%6d %12.3f %12.3f %8.3f %8.3f %7.2f..%-6.2f\n", r->depth, r->gbs, r->fio_gbs, r->gbs / r->fio_gbs,
                   r->ratio_median, r->ratio_lo, r->ratio_hi);
        else printf("%6d %12.3f %12s %8s\n", r->depth, r->gbs, "-", "-");
        if (r->fio_cmd[0] && i == 0) printf("       %s\n", r->fio_cmd);
        if (r->fio_error[0]) printf("       %s\n", r->fio_error);
        fflush(stdout);
    }
    if (a.json) print_json(&a, &t, res, a.n_depths, fio);
    else if (fio && !failures) {
        double worst = 1e9, worst_median = 1e9;
        for (int i = 0; i < a.n_depths; i++) {
            worst = ST_MIN(worst, res[i].gbs / res[i].fio_gbs);
            worst_median = ST_MIN(worst_median, res[i].ratio_median);
        }
        printf("lowest strata/fio ratio: %.3f over all rounds, %.3f by per-round median (goal >= 0.95)\n", worst, worst_median);
    }
    io_target_free(&t);
    return 0;
}
