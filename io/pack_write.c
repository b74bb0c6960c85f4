/* pack writer: declares extents and tensors, freezes an aligned layout, then
 * streams the bytes (any chunking) into the data files, hashing as it goes,
 * and writes the manifest last.
 *
 * DESIGN: never holds tensor data; memory is the declaration tables only.
 * Everything is written in "<dir>.tmp.<pid>/" and that directory is renamed to
 * <dir> only after every file is fsync'd, so an interrupted conversion leaves
 * no directory that looks like a finished pack (the manifest is written last
 * and the final name appears last). Written data is flushed in windows and
 * dropped from the page cache so a 9 GB conversion does not fill memory with
 * dirty pages.
 *
 * Layout: groups in file 0, routed experts round-robin over every data file
 * (--split N, or --stripe over directories on other devices: see
 * io/pack_files.c), so the experts of one step are spread over all devices. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/base.h"
#include "io/pack.h"
#include "io/pack_internal.h"
#include "io/pack_write_internal.h"

#define FLUSH_WINDOW (64ull << 20)

/* the writer's state (struct st_pack_writer) is in io/pack_write_internal.h */

int st_pack_writer_new(const char *dir, const st_pack_writer_opts *opts, st_pack_writer **out) {
    *out = NULL;
    st_pack_writer_opts o = opts ? *opts : (st_pack_writer_opts){0};
    if (o.n_files <= 0) o.n_files = 1;
    if (o.n_stripe_dirs < 0 || (o.n_stripe_dirs && !o.stripe_dirs))
        return st_error(ST_ERR_INVALID, "pack: bad stripe directory list");
    if (o.n_stripe_dirs && o.n_files > 1)
        return st_error(ST_ERR_INVALID, "pack: %d data files and %d stripe directories requested: give one or the other",
                        o.n_files, o.n_stripe_dirs);
    if (o.n_stripe_dirs) o.n_files = 1 + o.n_stripe_dirs;
    if (o.n_files > 256) return st_error(ST_ERR_INVALID, "pack: %d data files requested (at most 256)", o.n_files);
    struct stat sb;
    if (!stat(dir, &sb) && !o.force)
        return st_error(ST_ERR_INVALID, "%s: already exists (remove it, or --force to replace it)", dir);
    st_pack_writer *w = calloc(1, sizeof *w);
    if (!w) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    w->opts = o;
    w->dir = strdup(dir);
    size_t tl = strlen(dir) + 32;
    w->tmp = malloc(tl);
    w->thash = XXH3_createState();
    if (!w->dir || !w->tmp || !w->thash) {
        st_pack_writer_abort(w);
        return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    }
    snprintf(w->tmp, tl, "%s.tmp.%ld", dir, (long)getpid());
    pkw_rm_tree(w->tmp); /* a leftover of an earlier process with our pid */
    pkw_remove_stale_tmp(dir);
    if (mkdir(w->tmp, 0755)) {
        int rc = st_error(ST_ERR_IO, "%s: cannot create: %s", w->tmp, strerror(errno));
        free(w->tmp);
        w->tmp = NULL;
        st_pack_writer_abort(w);
        return rc;
    }
    w->n_files = o.n_files;
    w->files = calloc((size_t)o.n_files, sizeof *w->files);
    if (!w->files) {
        st_pack_writer_abort(w);
        return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    }
    for (int i = 0; i < w->n_files; i++) w->files[i].fd = -1;
    if (getrandom(&w->pack_id, sizeof w->pack_id, 0) != (ssize_t)sizeof w->pack_id)
        w->pack_id = st_time_ns() ^ ((uint64_t)getpid() << 32);
    w->pack_id |= 1; /* never 0 (older packs) */
    int rc = 0;
    for (int i = 0; i < w->n_files && !rc; i++) rc = pkw_name_file(w, i);
    if (rc) {
        st_pack_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

int st_pack_writer_copy_file(st_pack_writer *w, const char *src_path, const char *name) {
    if (strchr(name, '/') || !strcmp(name, ST_PACK_MANIFEST))
        return st_error(ST_ERR_INVALID, "pack: cannot copy a file named '%s' into a pack", name);
    char dst[4200];
    snprintf(dst, sizeof dst, "%s/%s", w->tmp, name);
    int in = open(src_path, O_RDONLY);
    if (in < 0) return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "%s: %s", src_path, strerror(errno));
    int outfd = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (outfd < 0) {
        close(in);
        return st_error(ST_ERR_IO, "%s: %s", dst, strerror(errno));
    }
    char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { rc = st_error(ST_ERR_IO, "%s: read: %s", src_path, strerror(errno)); break; }
        if (n == 0) break;
        for (ssize_t o = 0; o < n;) {
            ssize_t k = write(outfd, buf + o, (size_t)(n - o));
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) { rc = st_error(ST_ERR_IO, "%s: write: %s", dst, strerror(errno)); break; }
            o += k;
        }
        if (rc) break;
    }
    if (!rc && fsync(outfd)) rc = st_error(ST_ERR_IO, "%s: fsync: %s", dst, strerror(errno));
    close(in);
    close(outfd);
    return rc;
}

int st_pack_writer_begin_extent(st_pack_writer *w, st_pack_extent_kind kind, int layer, int expert, const char *name) {
    if (w->frozen) return st_error(ST_ERR_INVALID, "pack writer: extent %s declared after data was written", name);
    if (w->n_ext == w->cap_ext) {
        int cap = w->cap_ext ? w->cap_ext * 2 : 64;
        wt_extent *n = realloc(w->ext, (size_t)cap * sizeof *n);
        if (!n) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
        w->ext = n;
        w->cap_ext = cap;
    }
    wt_extent *e = &w->ext[w->n_ext];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    e->kind = kind;
    e->layer = layer;
    e->expert = expert;
    e->first = w->n_t;
    w->n_ext++;
    return 0;
}

int st_pack_writer_declare(st_pack_writer *w, const char *name, st_sft_dtype dt, int ndim, const int64_t *shape) {
    if (w->frozen) return st_error(ST_ERR_INVALID, "pack writer: tensor %s declared after data was written", name);
    if (!w->n_ext) return st_error(ST_ERR_INVALID, "pack writer: tensor %s declared outside an extent", name);
    if (ndim < 0 || ndim > ST_PACK_MAX_DIMS || (unsigned)dt >= ST_SFT_DTYPE_COUNT)
        return st_error(ST_ERR_INVALID, "pack writer: tensor %s: bad dtype or %d dimensions", name, ndim);
    uint64_t nb = st_sft_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && nb > UINT64_MAX / (uint64_t)shape[i]))
            return st_error(ST_ERR_INVALID, "pack writer: tensor %s: bad shape", name);
        nb *= (uint64_t)shape[i];
    }
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? w->cap_t * 2 : 256;
        wt_tensor *n = realloc(w->t, (size_t)cap * sizeof *n);
        if (!n) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
        w->t = n;
        w->cap_t = cap;
    }
    wt_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nb;
    t->extent = w->n_ext - 1;
    w->ext[w->n_ext - 1].n++;
    w->n_t++;
    return 0;
}

/* Lay out: extents in declaration order; groups in file 0 (the pack
 * directory), routed experts round-robin over all files, so neighbouring
 * experts (and any step's set of experts) are spread over the files. */
static void freeze(st_pack_writer *w) {
    if (w->frozen) return;
    w->frozen = true;
    int next_expert = 0;
    for (int i = 0; i < w->n_ext; i++) {
        wt_extent *e = &w->ext[i];
        const int f = e->kind == ST_PACK_EXPERT ? next_expert++ % w->n_files : 0;
        e->file = f;
        e->offset = w->files[f].size;
        uint64_t at = 0;
        for (int k = e->first; k < e->first + e->n; k++) {
            at = ST_ALIGN_UP(at, ST_PACK_TENSOR_ALIGN);
            w->t[k].offset = e->offset + at;
            at += w->t[k].nbytes;
        }
        e->length = ST_ALIGN_UP(at, ST_PACK_ALIGN);
        w->files[f].size += e->length;
    }
    w->data_bytes = 0;
    for (int k = 0; k < w->n_files; k++) w->data_bytes += w->files[k].size;
    w->cur = 0;
    w->cur_done = 0;
}

uint64_t st_pack_writer_data_bytes(st_pack_writer *w) {
    freeze(w);
    return w->data_bytes;
}

const char *st_pack_writer_current(const st_pack_writer *w) {
    for (int i = w->cur; i < w->n_t; i++)
        if (w->t[i].nbytes > (i == w->cur ? w->cur_done : 0)) return w->t[i].name;
    return NULL;
}

static int open_files(st_pack_writer *w) {
    for (int k = 0; k < w->n_files; k++) {
        if (w->files[k].fd >= 0) continue;
        w->files[k].fd = open(w->files[k].path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (w->files[k].fd < 0) return st_error(ST_ERR_IO, "%s: %s", w->files[k].path, strerror(errno));
    }
    return 0;
}

/* Write at the file's current position; keeps the dirty page cache bounded. */
static int file_put(st_pack_writer *w, int f, const void *data, size_t len) {
    wt_file *F = &w->files[f];
    const char *p = data;
    while (len) {
        ssize_t n = pwrite(F->fd, p, len, (off_t)F->pos);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return st_error(ST_ERR_IO, "%s: write at offset %llu: %s", F->path, (unsigned long long)F->pos, strerror(errno));
        p += n;
        len -= (size_t)n;
        F->pos += (uint64_t)n;
    }
    if (F->pos - F->flushed >= 2 * FLUSH_WINDOW) {
        /* start writeback of the newest window, wait for the older one and drop it */
        sync_file_range(F->fd, (off_t)(F->flushed + FLUSH_WINDOW), FLUSH_WINDOW, SYNC_FILE_RANGE_WRITE);
        sync_file_range(F->fd, (off_t)F->flushed, FLUSH_WINDOW,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        posix_fadvise(F->fd, (off_t)F->flushed, FLUSH_WINDOW, POSIX_FADV_DONTNEED);
        F->flushed += FLUSH_WINDOW;
    }
    return 0;
}

static const uint8_t ZEROS[ST_PACK_ALIGN];

/* Pad the file of extent e with zeros up to absolute offset `to`. */
static int pad_to(st_pack_writer *w, wt_extent *e, uint64_t to) {
    wt_file *F = &w->files[e->file];
    ST_ASSERT(to >= F->pos && to - F->pos < ST_PACK_ALIGN);
    size_t n = (size_t)(to - F->pos);
    if (!n) return 0;
    XXH3_64bits_update(e->hash, ZEROS, n);
    return file_put(w, e->file, ZEROS, n);
}

/* Entering tensor w->cur at its first byte: pad, start hashes. */
static int enter_tensor(st_pack_writer *w) {
    wt_tensor *t = &w->t[w->cur];
    wt_extent *e = &w->ext[t->extent];
    if (!e->hash) {
        if (!(e->hash = XXH3_createState())) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
        XXH3_64bits_reset(e->hash);
        ST_ASSERT(w->files[e->file].pos == e->offset);
    }
    XXH3_64bits_reset(w->thash);
    return pad_to(w, e, t->offset);
}

/* Leaving tensor w->cur: record its hash; close its extent when it was the last. */
static int leave_tensor(st_pack_writer *w) {
    wt_tensor *t = &w->t[w->cur];
    t->xxh3 = XXH3_64bits_digest(w->thash);
    wt_extent *e = &w->ext[t->extent];
    if (w->cur == e->first + e->n - 1) {
        int rc = pad_to(w, e, e->offset + e->length);
        if (rc) return rc;
    }
    w->cur++;
    w->cur_done = 0;
    return 0;
}

/* Empty extents and zero-byte tensors take no data: walk past them. */
static int skip_empty(st_pack_writer *w) {
    int rc;
    while (w->cur < w->n_t && w->cur_done == 0 && w->t[w->cur].nbytes == 0) {
        if ((rc = enter_tensor(w)) || (rc = leave_tensor(w))) return rc;
    }
    return 0;
}

static int fault_check(st_pack_writer *w) {
    if (w->opts.fault_kill_at && w->data_written >= w->opts.fault_kill_at) raise(SIGKILL);
    if (w->opts.fault_fail_at && w->data_written >= w->opts.fault_fail_at)
        return st_error(ST_ERR_IO, "%s: injected write failure after %llu bytes (fault hook)", w->tmp,
                        (unsigned long long)w->data_written);
    return 0;
}

int st_pack_writer_write(st_pack_writer *w, const void *data, size_t len) {
    freeze(w);
    int rc = open_files(w);
    if (rc) return rc;
    const uint8_t *p = data;
    while (len) {
        if ((rc = skip_empty(w))) return rc;
        if (w->cur >= w->n_t)
            return st_error(ST_ERR_INVALID, "pack writer: %zu bytes more than the declared tensors hold", len);
        wt_tensor *t = &w->t[w->cur];
        if (w->cur_done == 0 && (rc = enter_tensor(w))) return rc;
        uint64_t take = ST_MIN((uint64_t)len, t->nbytes - w->cur_done);
        /* stop at the fault thresholds so the hooks fire at an exact byte */
        uint64_t lim = 0;
        if (w->opts.fault_kill_at > w->data_written) lim = w->opts.fault_kill_at - w->data_written;
        if (w->opts.fault_fail_at > w->data_written && (!lim || w->opts.fault_fail_at - w->data_written < lim))
            lim = w->opts.fault_fail_at - w->data_written;
        if (lim && take > lim) take = lim;
        XXH3_64bits_update(w->thash, p, (size_t)take);
        XXH3_64bits_update(w->ext[t->extent].hash, p, (size_t)take);
        if ((rc = file_put(w, w->ext[t->extent].file, p, (size_t)take))) return rc;
        p += take;
        len -= (size_t)take;
        w->cur_done += take;
        w->data_written += take;
        if ((rc = fault_check(w))) return rc;
        if (w->cur_done == t->nbytes && (rc = leave_tensor(w))) return rc;
    }
    return skip_empty(w);
}

static uint32_t str_add(char **buf, uint64_t *len, uint64_t *cap, const char *s, uint32_t *slen) {
    size_t l = strlen(s);
    if (*len + l + 1 > *cap) {
        uint64_t c = *cap ? *cap : 4096;
        while (c < *len + l + 1) c *= 2;
        char *n = realloc(*buf, c);
        if (!n) return UINT32_MAX;
        *buf = n;
        *cap = c;
    }
    uint32_t off = (uint32_t)*len;
    memcpy(*buf + *len, s, l + 1);
    *len += l + 1;
    *slen = (uint32_t)l;
    return off;
}

static int write_manifest(st_pack_writer *w) {
    char *str = NULL;
    uint64_t slen = 0, scap = 0;
    const size_t fb = (size_t)w->n_files * sizeof(pk_file_rec), eb = (size_t)w->n_ext * sizeof(pk_extent_rec),
                 tb = (size_t)w->n_t * sizeof(pk_tensor_rec);
    pk_file_rec *fr = calloc(w->n_files, sizeof *fr);
    pk_extent_rec *er = calloc(w->n_ext ? w->n_ext : 1, sizeof *er);
    pk_tensor_rec *tr = calloc(w->n_t ? w->n_t : 1, sizeof *tr);
    int rc = fr && er && tr ? 0 : st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    bool oom = false;
    for (int i = 0; i < w->n_files && !rc; i++) {
        fr[i].name_off = str_add(&str, &slen, &scap, w->files[i].record, &fr[i].name_len);
        fr[i].size = w->files[i].size;
        oom |= fr[i].name_off == UINT32_MAX;
    }
    for (int i = 0; i < w->n_ext && !rc; i++) {
        const wt_extent *e = &w->ext[i];
        er[i] = (pk_extent_rec){.file = (uint32_t)e->file, .kind = e->kind, .layer = e->layer, .expert = e->expert,
                                .first_tensor = (uint32_t)e->first, .n_tensors = (uint32_t)e->n,
                                .offset = e->offset, .length = e->length,
                                .xxh3 = e->hash ? XXH3_64bits_digest(e->hash) : XXH3_64bits(ZEROS, 0)};
        er[i].name_off = str_add(&str, &slen, &scap, e->name, &er[i].name_len);
        oom |= er[i].name_off == UINT32_MAX;
    }
    for (int i = 0; i < w->n_t && !rc; i++) {
        const wt_tensor *t = &w->t[i];
        tr[i] = (pk_tensor_rec){.extent = (uint32_t)t->extent, .dtype = (uint16_t)t->dtype, .ndim = (uint16_t)t->ndim,
                                .offset = t->offset, .nbytes = t->nbytes, .xxh3 = t->xxh3};
        memcpy(tr[i].shape, t->shape, sizeof tr[i].shape);
        tr[i].name_off = str_add(&str, &slen, &scap, t->name, &tr[i].name_len);
        oom |= tr[i].name_off == UINT32_MAX;
    }
    if (!rc && oom) rc = st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    st_pack_header h = {.version = ST_PACK_VERSION, .header_bytes = sizeof h, .alignment = ST_PACK_ALIGN,
                        .n_files = (uint32_t)w->n_files, .n_extents = (uint32_t)w->n_ext, .n_tensors = (uint32_t)w->n_t,
                        .strings_bytes = slen, .data_bytes = w->data_bytes, .pack_id = w->pack_id};
    memcpy(h.magic, ST_PACK_MAGIC, 8);
    h.manifest_bytes = sizeof h + fb + eb + tb + slen;
    char path[4200];
    snprintf(path, sizeof path, "%s/" ST_PACK_MANIFEST, w->tmp);
    int fd = rc ? -1 : open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!rc && fd < 0) rc = st_error(ST_ERR_IO, "%s: %s", path, strerror(errno));
    if (!rc) {
        XXH3_state_t *s = XXH3_createState();
        if (!s) rc = st_error(ST_ERR_NOMEM, "pack writer: out of memory");
        else {
            XXH3_64bits_reset(s);
            XXH3_64bits_update(s, fr, fb);
            XXH3_64bits_update(s, er, eb);
            XXH3_64bits_update(s, tr, tb);
            XXH3_64bits_update(s, str, slen);
            h.body_xxh3 = XXH3_64bits_digest(s);
            XXH3_freeState(s);
            h.header_xxh3 = XXH3_64bits(&h, PK_HEADER_HASHED);
        }
        const void *parts[] = {&h, fr, er, tr, str};
        const size_t lens[] = {sizeof h, fb, eb, tb, slen};
        uint64_t at = 0;
        for (int i = 0; i < 5 && !rc; i++) {
            for (size_t o = 0; o < lens[i] && !rc;) {
                ssize_t n = pwrite(fd, (const char *)parts[i] + o, lens[i] - o, (off_t)at);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0) rc = st_error(ST_ERR_IO, "%s: write: %s", path, strerror(errno));
                else { o += (size_t)n; at += (uint64_t)n; }
            }
        }
        if (!rc && fsync(fd)) rc = st_error(ST_ERR_IO, "%s: fsync: %s", path, strerror(errno));
    }
    if (fd >= 0) close(fd);
    free(fr);
    free(er);
    free(tr);
    free(str);
    return rc;
}

int st_pack_writer_finish(st_pack_writer *w) {
    freeze(w);
    int rc = open_files(w);
    if (!rc) rc = skip_empty(w);
    if (!rc && w->cur < w->n_t)
        rc = st_error(ST_ERR_INVALID, "pack writer: tensor %s: %llu of %llu bytes written", w->t[w->cur].name,
                      (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes);
    for (int k = 0; k < w->n_files && !rc; k++) {
        if (w->files[k].pos != w->files[k].size)
            rc = st_error(ST_ERR_INVALID, "pack writer: data file %d: %llu of %llu bytes written", k,
                          (unsigned long long)w->files[k].pos, (unsigned long long)w->files[k].size);
        else if (fsync(w->files[k].fd)) rc = st_error(ST_ERR_IO, "%s: data file %d: fsync: %s", w->files[k].path, k, strerror(errno));
    }
    if (!rc) rc = write_manifest(w);
    if (!rc) rc = pkw_fsync_path(w->tmp, true);
    if (!rc) rc = pkw_publish(w);
    st_pack_writer_abort(w);
    return rc;
}

void st_pack_writer_abort(st_pack_writer *w) {
    if (!w) return;
    for (int k = 0; w->files && k < w->n_files; k++) {
        wt_file *F = &w->files[k];
        if (F->fd >= 0) close(F->fd);
        if (F->final && F->path) unlink(F->renamed ? F->final : F->path); /* an unfinished stripe file */
        free(F->path);
        free(F->final);
        free(F->record);
    }
    if (w->tmp) pkw_rm_tree(w->tmp);
    for (int i = 0; i < w->n_ext; i++) {
        free(w->ext[i].name);
        XXH3_freeState(w->ext[i].hash);
    }
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    XXH3_freeState(w->thash);
    free(w->ext);
    free(w->t);
    free(w->files);
    free(w->dir);
    free(w->tmp);
    free(w);
}
