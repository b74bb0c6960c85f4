/* pack reader: opens a pack directory, checks its manifest against itself and
 * against the data files, answers name -> (file, offset, bytes) and
 * (layer, expert) -> extent, maps data files for the CPU path and verifies
 * checksums.
 *
 * DESIGN: the manifest is read whole into memory and checked before any of it
 * is used: header checksum, magic, version, sizes, body checksum, then every
 * record's fields against the tables' and the data files' real sizes. Nothing
 * read from disk becomes a size, index or offset without a bound check. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/base.h"
#include "io/pack.h"
#include "io/pack_internal.h"

typedef struct pk_file {
    char *path;
    int fd;
    uint64_t size;
    void *map;
} pk_file;

struct st_pack {
    char *dir, *mpath;
    st_pack_header h;
    char *manifest; /* the whole file; names point into its string area */
    pk_file *files;
    st_pack_extent *ext;
    st_pack_tensor *t;
    int *name_slots; /* open addressing over tensors: -1 empty */
    int *expert_slots;
    uint32_t name_mask, expert_mask;
};

bool st_pack_is_pack(const char *path) {
    char p[4200];
    struct stat sb;
    if (snprintf(p, sizeof p, "%s/" ST_PACK_MANIFEST, path) >= (int)sizeof p) return false;
    return !stat(path, &sb) && S_ISDIR(sb.st_mode) && !stat(p, &sb) && S_ISREG(sb.st_mode);
}

static uint64_t name_hash(const char *s) { return XXH3_64bits(s, strlen(s)); }
static uint64_t expert_hash(int layer, int expert) {
    uint64_t k = ((uint64_t)(uint32_t)layer << 32) | (uint32_t)expert;
    return XXH3_64bits(&k, sizeof k);
}

static uint32_t table_size(int n) {
    uint32_t s = 16;
    while (s < 2u * (uint32_t)n) s *= 2;
    return s;
}

/* The string at (off, len) of the string area, checked: inside, NUL-terminated, no inner NUL. */
static int get_string(st_pack *p, const char *strings, uint32_t off, uint32_t len, const char *what, int idx,
                      const char **out) {
    if ((uint64_t)off + len >= p->h.strings_bytes || strings[off + len] != 0 || memchr(strings + off, 0, len) || !len)
        return st_error(ST_ERR_FORMAT, "%s: %s %d: name at [%u, +%u) is outside the string area (%llu bytes) or not a name",
                        p->mpath, what, idx, off, len, (unsigned long long)p->h.strings_bytes);
    *out = strings + off;
    return 0;
}

static int check_header(st_pack *p, uint64_t file_size) {
    const st_pack_header *h = &p->h;
    if (file_size < sizeof *h)
        return st_error(ST_ERR_FORMAT, "%s: truncated: %llu bytes, a manifest header needs %zu", p->mpath,
                        (unsigned long long)file_size, sizeof *h);
    if (memcmp(h->magic, ST_PACK_MAGIC, 8))
        return st_error(ST_ERR_FORMAT, "%s: not a strata pack manifest (magic \"%.8s\" expected, found other bytes)", p->mpath,
                        ST_PACK_MAGIC);
    if (XXH3_64bits(h, PK_HEADER_HASHED) != h->header_xxh3)
        return st_error(ST_ERR_FORMAT, "%s: header checksum mismatch (corrupt manifest)", p->mpath);
    if (h->version != ST_PACK_VERSION)
        return st_error(ST_ERR_UNSUPPORTED, "%s: pack format version %u, this strata reads version %u (convert again)",
                        p->mpath, h->version, ST_PACK_VERSION);
    if (h->header_bytes != sizeof *h)
        return st_error(ST_ERR_FORMAT, "%s: header_bytes: expected %zu, found %u", p->mpath, sizeof *h, h->header_bytes);
    if (h->alignment != ST_PACK_ALIGN)
        return st_error(ST_ERR_FORMAT, "%s: alignment: expected %u, found %u", p->mpath, ST_PACK_ALIGN, h->alignment);
    if (h->manifest_bytes != file_size)
        return st_error(ST_ERR_FORMAT, "%s: %s: header says %llu bytes, the file has %llu", p->mpath,
                        file_size < h->manifest_bytes ? "truncated" : "trailing bytes",
                        (unsigned long long)h->manifest_bytes, (unsigned long long)file_size);
    if (h->n_files < 1 || h->n_files > 256)
        return st_error(ST_ERR_FORMAT, "%s: n_files: expected 1..256, found %u", p->mpath, h->n_files);
    if (h->n_tensors > (1u << 28) || h->n_extents > (1u << 28) || h->strings_bytes > (1ull << 32))
        return st_error(ST_ERR_FORMAT, "%s: table sizes out of range (%u tensors, %u extents, %llu string bytes)", p->mpath,
                        h->n_tensors, h->n_extents, (unsigned long long)h->strings_bytes);
    uint64_t need = sizeof *h + (uint64_t)h->n_files * sizeof(pk_file_rec) + (uint64_t)h->n_extents * sizeof(pk_extent_rec) +
                    (uint64_t)h->n_tensors * sizeof(pk_tensor_rec) + h->strings_bytes;
    if (need != file_size)
        return st_error(ST_ERR_FORMAT, "%s: tables need %llu bytes, the manifest has %llu", p->mpath,
                        (unsigned long long)need, (unsigned long long)file_size);
    return 0;
}

static int open_files(st_pack *p, const pk_file_rec *fr, const char *strings, bool names_only) {
    p->files = calloc(p->h.n_files, sizeof *p->files);
    if (!p->files) return st_error(ST_ERR_NOMEM, "pack: out of memory");
    for (uint32_t i = 0; i < p->h.n_files; i++) p->files[i].fd = -1;
    uint64_t total = 0;
    for (uint32_t i = 0; i < p->h.n_files; i++) {
        const char *nm;
        int rc = get_string(p, strings, fr[i].name_off, fr[i].name_len, "file", (int)i, &nm);
        if (rc) return rc;
        /* a plain name inside the pack directory, or the absolute path of a stripe file on another device */
        const bool external = nm[0] == '/';
        if ((!external && strchr(nm, '/')) || !strcmp(nm, "..") || !strcmp(nm, ".") || strstr(nm, "/../") ||
            (external && (strlen(nm) < 4 || !strcmp(nm + strlen(nm) - 3, "/..") || nm[strlen(nm) - 1] == '/')))
            return st_error(ST_ERR_FORMAT, "%s: file %u: name '%s' is neither a plain file name nor an absolute file path",
                            p->mpath, i, nm);
        pk_file *f = &p->files[i];
        size_t l = strlen(p->dir) + strlen(nm) + 2;
        if (!(f->path = malloc(l))) return st_error(ST_ERR_NOMEM, "pack: out of memory");
        if (external) snprintf(f->path, l, "%s", nm);
        else snprintf(f->path, l, "%s/%s", p->dir, nm);
        if (names_only) continue;
        f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (f->fd < 0)
            return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "%s: %s (data file %u of the pack %s)", f->path,
                            strerror(errno), i, p->dir);
        struct stat sb;
        if (fstat(f->fd, &sb)) return st_error(ST_ERR_IO, "%s: %s", f->path, strerror(errno));
        if ((uint64_t)sb.st_size != fr[i].size)
            return st_error(ST_ERR_FORMAT, "%s: %s: the manifest of %s records %llu bytes for data file %u, the file has %llu",
                            f->path, (uint64_t)sb.st_size < fr[i].size ? "truncated" : "wrong size", p->dir,
                            (unsigned long long)fr[i].size, i, (unsigned long long)sb.st_size);
        f->size = fr[i].size;
        total += f->size;
    }
    if (!names_only && total != p->h.data_bytes)
        return st_error(ST_ERR_FORMAT, "%s: data_bytes: header says %llu, the files sum to %llu", p->mpath,
                        (unsigned long long)p->h.data_bytes, (unsigned long long)total);
    return 0;
}

static int cmp_extent_pos(const void *a, const void *b, void *ctx) {
    const st_pack_extent *E = ctx;
    const st_pack_extent *x = &E[*(const int *)a], *y = &E[*(const int *)b];
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int load_extents(st_pack *p, const pk_extent_rec *er, const char *strings) {
    const int n = (int)p->h.n_extents;
    p->ext = calloc(n ? (size_t)n : 1, sizeof *p->ext);
    int *order = calloc(n ? (size_t)n : 1, sizeof *order);
    p->expert_mask = table_size(n) - 1;
    p->expert_slots = malloc((p->expert_mask + 1) * sizeof *p->expert_slots);
    int rc = p->ext && order && p->expert_slots ? 0 : st_error(ST_ERR_NOMEM, "pack: out of memory");
    if (!rc) memset(p->expert_slots, 0xff, (p->expert_mask + 1) * sizeof *p->expert_slots);
    uint64_t next_tensor = 0;
    for (int i = 0; i < n && !rc; i++) {
        const pk_extent_rec *r = &er[i];
        st_pack_extent *e = &p->ext[i];
        if ((rc = get_string(p, strings, r->name_off, r->name_len, "extent", i, &e->name))) break;
        if (r->file >= p->h.n_files || r->kind > ST_PACK_EXPERT) {
            rc = st_error(ST_ERR_FORMAT, "%s: extent %s: file %u (of %u) / kind %u invalid", p->mpath, e->name, r->file,
                          p->h.n_files, r->kind);
            break;
        }
        if (r->offset % ST_PACK_ALIGN || r->length % ST_PACK_ALIGN || r->offset > p->files[r->file].size ||
            r->length > p->files[r->file].size - r->offset) {
            rc = st_error(ST_ERR_FORMAT, "%s: extent %s: [%llu, +%llu) is not %u-aligned inside %s (%llu bytes)", p->mpath,
                          e->name, (unsigned long long)r->offset, (unsigned long long)r->length, ST_PACK_ALIGN,
                          p->files[r->file].path, (unsigned long long)p->files[r->file].size);
            break;
        }
        /* tensors are stored extent by extent, in order */
        if (r->first_tensor != next_tensor || (uint64_t)r->first_tensor + r->n_tensors > p->h.n_tensors) {
            rc = st_error(ST_ERR_FORMAT, "%s: extent %s: tensors [%u, +%u) expected to start at %llu within %u", p->mpath,
                          e->name, r->first_tensor, r->n_tensors, (unsigned long long)next_tensor, p->h.n_tensors);
            break;
        }
        next_tensor += r->n_tensors;
        e->kind = (st_pack_extent_kind)r->kind;
        e->layer = r->layer;
        e->expert = r->expert;
        e->file = (int)r->file;
        e->offset = r->offset;
        e->length = r->length;
        e->xxh3 = r->xxh3;
        e->first_tensor = (int)r->first_tensor;
        e->n_tensors = (int)r->n_tensors;
        order[i] = i;
        if (e->kind == ST_PACK_EXPERT) {
            if (e->layer < 0 || e->expert < 0) {
                rc = st_error(ST_ERR_FORMAT, "%s: expert extent %s: layer %d, expert %d", p->mpath, e->name, e->layer, e->expert);
                break;
            }
            for (uint32_t s = (uint32_t)expert_hash(e->layer, e->expert) & p->expert_mask;; s = (s + 1) & p->expert_mask) {
                int k = p->expert_slots[s];
                if (k < 0) { p->expert_slots[s] = i; break; }
                if (p->ext[k].layer == e->layer && p->ext[k].expert == e->expert) {
                    rc = st_error(ST_ERR_FORMAT, "%s: two extents for layer %d expert %d (%s, %s)", p->mpath, e->layer,
                                  e->expert, p->ext[k].name, e->name);
                    break;
                }
            }
        }
    }
    if (!rc && next_tensor != p->h.n_tensors)
        rc = st_error(ST_ERR_FORMAT, "%s: extents cover %llu tensors, the table has %u", p->mpath,
                      (unsigned long long)next_tensor, p->h.n_tensors);
    if (!rc) { /* no two extents overlap */
        qsort_r(order, (size_t)n, sizeof *order, cmp_extent_pos, p->ext);
        for (int i = 1; i < n && !rc; i++) {
            const st_pack_extent *a = &p->ext[order[i - 1]], *b = &p->ext[order[i]];
            if (a->file == b->file && a->offset + a->length > b->offset)
                rc = st_error(ST_ERR_FORMAT, "%s: extents %s and %s overlap", p->mpath, a->name, b->name);
        }
    }
    free(order);
    return rc;
}

static int load_tensors(st_pack *p, const pk_tensor_rec *tr, const char *strings) {
    const int n = (int)p->h.n_tensors;
    p->t = calloc(n ? (size_t)n : 1, sizeof *p->t);
    p->name_mask = table_size(n) - 1;
    p->name_slots = malloc((p->name_mask + 1) * sizeof *p->name_slots);
    if (!p->t || !p->name_slots) return st_error(ST_ERR_NOMEM, "pack: out of memory");
    memset(p->name_slots, 0xff, (p->name_mask + 1) * sizeof *p->name_slots);
    for (int i = 0; i < n; i++) {
        const pk_tensor_rec *r = &tr[i];
        st_pack_tensor *t = &p->t[i];
        int rc = get_string(p, strings, r->name_off, r->name_len, "tensor", i, &t->name);
        if (rc) return rc;
        if (r->extent >= p->h.n_extents || r->dtype >= ST_SFT_DTYPE_COUNT || r->ndim > ST_PACK_MAX_DIMS)
            return st_error(ST_ERR_FORMAT, "%s: tensor %s: extent %u (of %u), dtype %u or ndim %u out of range", p->mpath,
                            t->name, r->extent, p->h.n_extents, r->dtype, r->ndim);
        const st_pack_extent *e = &p->ext[r->extent];
        if (i < e->first_tensor || i >= e->first_tensor + e->n_tensors)
            return st_error(ST_ERR_FORMAT, "%s: tensor %s: listed in extent %s, which holds tensors [%d, +%d)", p->mpath,
                            t->name, e->name, e->first_tensor, e->n_tensors);
        uint64_t nb = st_sft_dtype_size((st_sft_dtype)r->dtype);
        bool overflow = false;
        for (int d = 0; d < r->ndim; d++) {
            if (r->shape[d] < 0 || (r->shape[d] && nb > UINT64_MAX / (uint64_t)r->shape[d])) overflow = true;
            else nb *= (uint64_t)r->shape[d];
        }
        if (overflow || nb != r->nbytes)
            return st_error(ST_ERR_FORMAT, "%s: tensor %s: shape and dtype %s give %llu bytes, the manifest says %llu",
                            p->mpath, t->name, st_sft_dtype_name((st_sft_dtype)r->dtype), overflow ? 0ull : (unsigned long long)nb,
                            (unsigned long long)r->nbytes);
        /* inside its extent, 64-aligned, after the previous tensor of the extent */
        const uint64_t lo = i == e->first_tensor ? e->offset : p->t[i - 1].offset + p->t[i - 1].nbytes;
        if (r->offset % ST_PACK_TENSOR_ALIGN || r->offset < lo || r->offset > e->offset + e->length ||
            r->nbytes > e->offset + e->length - r->offset)
            return st_error(ST_ERR_FORMAT, "%s: tensor %s: bytes [%llu, +%llu) are not %u-aligned in order inside extent %s [%llu, +%llu)",
                            p->mpath, t->name, (unsigned long long)r->offset, (unsigned long long)r->nbytes,
                            ST_PACK_TENSOR_ALIGN, e->name, (unsigned long long)e->offset, (unsigned long long)e->length);
        t->dtype = (st_sft_dtype)r->dtype;
        t->ndim = r->ndim;
        memcpy(t->shape, r->shape, sizeof t->shape);
        for (int d = t->ndim; d < ST_PACK_MAX_DIMS; d++) t->shape[d] = 0;
        t->extent = (int)r->extent;
        t->file = e->file;
        t->offset = r->offset;
        t->nbytes = r->nbytes;
        t->xxh3 = r->xxh3;
        for (uint32_t s = (uint32_t)name_hash(t->name) & p->name_mask;; s = (s + 1) & p->name_mask) {
            int k = p->name_slots[s];
            if (k < 0) { p->name_slots[s] = i; break; }
            if (!strcmp(p->t[k].name, t->name))
                return st_error(ST_ERR_FORMAT, "%s: tensor %s is listed twice", p->mpath, t->name);
        }
    }
    return 0;
}

static int pack_open(const char *dir, bool names_only, st_pack **out) {
    *out = NULL;
    st_pack *p = calloc(1, sizeof *p);
    if (!p) return st_error(ST_ERR_NOMEM, "pack: out of memory");
    size_t l = strlen(dir) + sizeof ST_PACK_MANIFEST + 2;
    p->dir = strdup(dir);
    p->mpath = malloc(l);
    int rc = p->dir && p->mpath ? 0 : st_error(ST_ERR_NOMEM, "pack: out of memory");
    if (!rc) snprintf(p->mpath, l, "%s/" ST_PACK_MANIFEST, dir);
    int fd = -1;
    struct stat sb;
    if (!rc && (fd = open(p->mpath, O_RDONLY | O_CLOEXEC)) < 0)
        rc = st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "%s: not a pack (%s: %s)", dir, ST_PACK_MANIFEST,
                      strerror(errno));
    if (!rc && fstat(fd, &sb)) rc = st_error(ST_ERR_IO, "%s: %s", p->mpath, strerror(errno));
    if (!rc && (uint64_t)sb.st_size > (8ull << 30))
        rc = st_error(ST_ERR_FORMAT, "%s: %lld bytes is too large for a manifest", p->mpath, (long long)sb.st_size);
    const uint64_t size = rc ? 0 : (uint64_t)sb.st_size;
    if (!rc && !(p->manifest = malloc(size ? size : 1))) rc = st_error(ST_ERR_NOMEM, "pack: out of memory");
    for (uint64_t got = 0; !rc && got < size;) {
        ssize_t n = pread(fd, p->manifest + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) rc = st_error(ST_ERR_IO, "%s: read: %s", p->mpath, strerror(errno));
        else if (n == 0) rc = st_error(ST_ERR_FORMAT, "%s: truncated while reading (file shrank)", p->mpath);
        else got += (uint64_t)n;
    }
    if (fd >= 0) close(fd);
    if (!rc) {
        memset(&p->h, 0, sizeof p->h);
        memcpy(&p->h, p->manifest, ST_MIN(size, sizeof p->h));
        rc = check_header(p, size);
    }
    if (!rc && XXH3_64bits(p->manifest + sizeof p->h, size - sizeof p->h) != p->h.body_xxh3)
        rc = st_error(ST_ERR_FORMAT, "%s: body checksum mismatch (corrupt manifest)", p->mpath);
    if (!rc) {
        /* records are copied out of the buffer field by field: no alignment assumptions */
        const char *base = p->manifest + sizeof p->h;
        const size_t fb = p->h.n_files * sizeof(pk_file_rec), eb = p->h.n_extents * sizeof(pk_extent_rec),
                     tb = p->h.n_tensors * sizeof(pk_tensor_rec);
        pk_file_rec *fr = malloc(fb);
        pk_extent_rec *er = malloc(eb ? eb : 1);
        pk_tensor_rec *tr = malloc(tb ? tb : 1);
        if (!fr || !er || !tr) rc = st_error(ST_ERR_NOMEM, "pack: out of memory");
        if (!rc) {
            memcpy(fr, base, fb);
            memcpy(er, base + fb, eb);
            memcpy(tr, base + fb + eb, tb);
            const char *strings = base + fb + eb + tb;
            if (p->h.strings_bytes == 0 || strings[p->h.strings_bytes - 1] != 0)
                rc = st_error(ST_ERR_FORMAT, "%s: string area is empty or not NUL-terminated", p->mpath);
            if (!rc) rc = open_files(p, fr, strings, names_only);
            if (!rc && !names_only) rc = load_extents(p, er, strings);
            if (!rc && !names_only) rc = load_tensors(p, tr, strings);
        }
        free(fr);
        free(er);
        free(tr);
    }
    if (rc) {
        st_pack_close(p);
        return rc;
    }
    *out = p;
    return 0;
}

int st_pack_open(const char *dir, st_pack **out) { return pack_open(dir, false, out); }
int pk_open_names(const char *dir, st_pack **out) { return pack_open(dir, true, out); }

void st_pack_close(st_pack *p) {
    if (!p) return;
    for (uint32_t i = 0; p->files && i < p->h.n_files; i++) {
        pk_file *f = &p->files[i];
        if (f->map && f->map != MAP_FAILED) munmap(f->map, f->size);
        if (f->fd >= 0) close(f->fd);
        free(f->path);
    }
    free(p->files);
    free(p->ext);
    free(p->t);
    free(p->name_slots);
    free(p->expert_slots);
    free(p->manifest);
    free(p->dir);
    free(p->mpath);
    free(p);
}

const char *st_pack_dir(const st_pack *p) { return p->dir; }
const st_pack_header *st_pack_get_header(const st_pack *p) { return &p->h; }
int st_pack_file_count(const st_pack *p) { return (int)p->h.n_files; }
const char *st_pack_file_path(const st_pack *p, int file) { return p->files[file].path; }
uint64_t st_pack_file_size(const st_pack *p, int file) { return p->files[file].size; }
int st_pack_file_fd(const st_pack *p, int file) { return p->files[file].fd; }
int st_pack_tensor_count(const st_pack *p) { return (int)p->h.n_tensors; }
const st_pack_tensor *st_pack_tensor_at(const st_pack *p, int i) { return &p->t[i]; }
int st_pack_extent_count(const st_pack *p) { return (int)p->h.n_extents; }
const st_pack_extent *st_pack_extent_at(const st_pack *p, int i) { return &p->ext[i]; }

const st_pack_tensor *st_pack_find(const st_pack *p, const char *name) {
    for (uint32_t s = (uint32_t)name_hash(name) & p->name_mask;; s = (s + 1) & p->name_mask) {
        int k = p->name_slots[s];
        if (k < 0) return NULL;
        if (!strcmp(p->t[k].name, name)) return &p->t[k];
    }
}

const st_pack_extent *st_pack_find_expert(const st_pack *p, int layer, int expert) {
    for (uint32_t s = (uint32_t)expert_hash(layer, expert) & p->expert_mask;; s = (s + 1) & p->expert_mask) {
        int k = p->expert_slots[s];
        if (k < 0) return NULL;
        if (p->ext[k].layer == layer && p->ext[k].expert == expert) return &p->ext[k];
    }
}

int st_pack_data(st_pack *p, const st_pack_tensor *t, const void **out) {
    static const uint8_t empty[1];
    pk_file *f = &p->files[t->file];
    if (!f->size) {
        *out = empty;
        return 0;
    }
    if (!f->map) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
        if (m == MAP_FAILED) return st_error(ST_ERR_IO, "%s: mmap: %s", f->path, strerror(errno));
        f->map = m;
    }
    *out = (const uint8_t *)f->map + t->offset;
    return 0;
}

static int pread_full(const pk_file *f, uint64_t at, void *buf, uint64_t len) {
    char *b = buf;
    while (len) {
        ssize_t n = pread(f->fd, b, len, (off_t)at);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return st_error(ST_ERR_IO, "%s: read at offset %llu: %s", f->path, (unsigned long long)at, strerror(errno));
        if (n == 0)
            return st_error(ST_ERR_IO, "%s: unexpected end of file at offset %llu (the file shrank)", f->path,
                            (unsigned long long)at);
        b += n;
        at += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

int st_pack_pread(const st_pack *p, const st_pack_tensor *t, uint64_t off, void *buf, uint64_t len) {
    if (off > t->nbytes || len > t->nbytes - off)
        return st_error(ST_ERR_INVALID, "pack: tensor %s: read [%llu, +%llu) outside its %llu bytes", t->name,
                        (unsigned long long)off, (unsigned long long)len, (unsigned long long)t->nbytes);
    return pread_full(&p->files[t->file], t->offset + off, buf, len);
}

/* ---- verify ---- */

#define VERIFY_CHUNK (16u << 20)

typedef struct verify_ctx {
    int n;
    char first[1200];
    size_t used;
    FILE *report;
} verify_ctx;

static void bad(verify_ctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad(verify_ctx *v, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (v->report) fprintf(v->report, "%s\n", line);
    if (v->n < 6 && v->used + strlen(line) + 4 < sizeof v->first)
        v->used += (size_t)snprintf(v->first + v->used, sizeof v->first - v->used, "\n  %s", line);
    v->n++;
}

int st_pack_verify(st_pack *p, FILE *report, bool show_progress) {
    uint8_t *buf = malloc(VERIFY_CHUNK);
    XXH3_state_t *es = XXH3_createState(), *ts = XXH3_createState();
    int rc = buf && es && ts ? 0 : st_error(ST_ERR_NOMEM, "pack verify: out of memory");
    verify_ctx v = {.report = report};
    st_progress pg;
    st_progress_begin(&pg, "verify", p->h.data_bytes, true, !show_progress);
    uint64_t done = 0;
    for (int i = 0; i < (int)p->h.n_extents && !rc; i++) {
        const st_pack_extent *e = &p->ext[i];
        const pk_file *f = &p->files[e->file];
        XXH3_64bits_reset(es);
        int k = e->first_tensor; /* tensor being hashed or next to start */
        bool in_tensor = false;
        for (uint64_t at = 0; at < e->length && !rc;) {
            uint64_t n = ST_MIN((uint64_t)VERIFY_CHUNK, e->length - at);
            if ((rc = pread_full(f, e->offset + at, buf, n))) break;
            XXH3_64bits_update(es, buf, n);
            /* feed the tensors overlapping [at, at + n) of the extent */
            const uint64_t lo = e->offset + at, hi = lo + n;
            while (k < e->first_tensor + e->n_tensors) {
                const st_pack_tensor *t = &p->t[k];
                if (!in_tensor) {
                    if (t->offset > hi || (t->offset == hi && t->nbytes)) break;
                    XXH3_64bits_reset(ts);
                    in_tensor = true;
                }
                uint64_t a = ST_MAX(t->offset, lo), b = ST_MIN(t->offset + t->nbytes, hi);
                if (b > a) XXH3_64bits_update(ts, buf + (a - lo), b - a);
                if (t->offset + t->nbytes > hi) break;
                uint64_t h = XXH3_64bits_digest(ts);
                if (h != t->xxh3)
                    bad(&v, "%s: tensor %s at offset %llu (%llu bytes): checksum %016llx, manifest has %016llx", f->path,
                        t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes, (unsigned long long)h,
                        (unsigned long long)t->xxh3);
                in_tensor = false;
                k++;
            }
            at += n;
            done += n;
            st_progress_update(&pg, done);
        }
        if (!rc && XXH3_64bits_digest(es) != e->xxh3)
            bad(&v, "%s: extent %s [%llu, +%llu): checksum mismatch (padding or a tensor changed)", f->path, e->name,
                (unsigned long long)e->offset, (unsigned long long)e->length);
    }
    st_progress_end(&pg);
    free(buf);
    XXH3_freeState(es);
    XXH3_freeState(ts);
    if (rc) return rc;
    if (v.n)
        return st_error(ST_ERR_FORMAT, "%s: %d checksum mismatch%s:%s%s", p->dir, v.n, v.n == 1 ? "" : "es", v.first,
                        v.n > 6 ? "\n  ..." : "");
    return 0;
}
