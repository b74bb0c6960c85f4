/* safetensors reader: one file, a directory of shards with
 * model.safetensors.index.json, or a directory of *.safetensors.
 *
 * DESIGN: nothing in a header is trusted until checked against the file it
 * came from: the header length against the file size, every tensor's byte
 * count against its dtype and shape, its offsets against the data area, and
 * its neighbours for overlap. Reads never go past a file's end: the mapping
 * covers exactly the file, and pread stops at the tensor's checked extent.
 * Must never abort on bad input. Knows nothing about models. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "base/base.h"
#include "io/safetensors.h"

static const struct {
    const char *name;
    size_t size;
} DTYPES[ST_SFT_DTYPE_COUNT] = {
    [ST_SFT_BOOL] = {"BOOL", 1},       [ST_SFT_U8] = {"U8", 1},         [ST_SFT_I8] = {"I8", 1},
    [ST_SFT_F8_E4M3] = {"F8_E4M3", 1}, [ST_SFT_F8_E5M2] = {"F8_E5M2", 1}, [ST_SFT_F8_E8M0] = {"F8_E8M0", 1},
    [ST_SFT_I16] = {"I16", 2},         [ST_SFT_U16] = {"U16", 2},       [ST_SFT_F16] = {"F16", 2},
    [ST_SFT_BF16] = {"BF16", 2},       [ST_SFT_I32] = {"I32", 4},       [ST_SFT_U32] = {"U32", 4},
    [ST_SFT_F32] = {"F32", 4},         [ST_SFT_I64] = {"I64", 8},       [ST_SFT_U64] = {"U64", 8},
    [ST_SFT_F64] = {"F64", 8},
};

const char *st_sft_dtype_name(st_sft_dtype dt) {
    return (unsigned)dt < ST_SFT_DTYPE_COUNT ? DTYPES[dt].name : "?";
}

size_t st_sft_dtype_size(st_sft_dtype dt) {
    return (unsigned)dt < ST_SFT_DTYPE_COUNT ? DTYPES[dt].size : 0;
}

int st_sft_dtype_parse(const char *name, st_sft_dtype *out) {
    for (int i = 0; i < ST_SFT_DTYPE_COUNT; i++)
        if (!strcmp(name, DTYPES[i].name)) {
            *out = (st_sft_dtype)i;
            return 0;
        }
    return ST_ERR_NOT_FOUND;
}

typedef struct shard {
    char *path;
    int fd;
    uint64_t size;
    uint64_t data_start; /* 8 + header length */
    void *map;           /* whole file, mapped on first use */
    cJSON *metadata;     /* __metadata__ or NULL */
} shard;

struct st_sft {
    shard *shards;
    int n_shards;
    st_sft_tensor *t;
    int n, cap;
    int *table; /* open addressing: tensor index + 1, 0 empty */
    size_t table_size;
    pthread_mutex_t map_lock;
};

/* ---- small helpers ---- */

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int find_index(const st_sft *s, const char *name) {
    if (!s->table_size) return -1;
    size_t mask = s->table_size - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        int k = s->table[i];
        if (!k) return -1;
        if (!strcmp(s->t[k - 1].name, name)) return k - 1;
    }
}

static int build_table(st_sft *s) {
    size_t size = 16;
    while (size < (size_t)s->n * 2) size *= 2;
    s->table = calloc(size, sizeof *s->table);
    if (!s->table) return st_error(ST_ERR_NOMEM, "safetensors: out of memory");
    s->table_size = size;
    for (int k = 0; k < s->n; k++) {
        size_t i = hash_name(s->t[k].name) & (size - 1);
        while (s->table[i]) {
            const st_sft_tensor *o = &s->t[s->table[i] - 1];
            if (!strcmp(o->name, s->t[k].name)) {
                if (o->shard == s->t[k].shard)
                    return st_error(ST_ERR_FORMAT, "%s: tensor %s appears twice in the header", s->shards[o->shard].path,
                                    o->name);
                return st_error(ST_ERR_FORMAT, "tensor %s is in two shards: %s and %s", o->name,
                                s->shards[o->shard].path, s->shards[s->t[k].shard].path);
            }
            i = (i + 1) & (size - 1);
        }
        s->table[i] = k + 1;
    }
    return 0;
}

/* pread exactly len bytes at off; a short file is a FORMAT error. */
static int pread_full(int fd, void *buf, uint64_t len, uint64_t off, const char *path) {
    uint8_t *p = buf;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return st_error(ST_ERR_IO, "%s: read at offset %llu failed: %s", path, (unsigned long long)off,
                            strerror(errno));
        }
        if (r == 0)
            return st_error(ST_ERR_IO, "%s: unexpected end of file at offset %llu", path, (unsigned long long)off);
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

static int push_tensor(st_sft *s, const st_sft_tensor *t) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        st_sft_tensor *nt = realloc(s->t, (size_t)cap * sizeof *nt);
        if (!nt) return st_error(ST_ERR_NOMEM, "safetensors: out of memory");
        s->t = nt;
        s->cap = cap;
    }
    s->t[s->n++] = *t;
    return 0;
}

/* Non-negative integral JSON number below 2^53 (exact in a double). */
static bool json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int cmp_offset(const void *a, const void *b) {
    const st_sft_tensor *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

/* One tensor entry of a header. */
static int parse_entry(const char *path, const cJSON *e, uint64_t data_start, uint64_t data_size, int shard_index,
                       st_sft_tensor *t) {
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return st_error(ST_ERR_FORMAT, "%s: tensor %s: header entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return st_error(ST_ERR_FORMAT, "%s: tensor %s: missing or non-string dtype", path, name);
    memset(t, 0, sizeof *t);
    if (st_sft_dtype_parse(dt->valuestring, &t->dtype))
        return st_error(ST_ERR_FORMAT, "%s: tensor %s: unknown dtype \"%s\"", path, name, dt->valuestring);
    if (!cJSON_IsArray(sh)) return st_error(ST_ERR_FORMAT, "%s: tensor %s: missing or non-list shape", path, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_SFT_MAX_DIMS)
        return st_error(ST_ERR_FORMAT, "%s: tensor %s: %d dimensions (at most %d)", path, name, nd, ST_SFT_MAX_DIMS);
    t->ndim = nd;
    uint64_t count = 1;
    bool overflow = false;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_u64(cJSON_GetArrayItem(sh, i), &d))
            return st_error(ST_ERR_FORMAT, "%s: tensor %s: shape[%d] is not a non-negative integer", path, name, i);
        t->shape[i] = (int64_t)d;
        if (d && count > UINT64_MAX / d) overflow = true;
        else count *= d;
    }
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return st_error(ST_ERR_FORMAT, "%s: tensor %s: data_offsets is not a list of two integers", path, name);
    uint64_t b, en;
    if (!json_u64(cJSON_GetArrayItem(off, 0), &b) || !json_u64(cJSON_GetArrayItem(off, 1), &en))
        return st_error(ST_ERR_FORMAT, "%s: tensor %s: data_offsets are not non-negative integers", path, name);
    if (en < b)
        return st_error(ST_ERR_FORMAT, "%s: tensor %s: data_offsets [%llu, %llu] end before they begin", path, name,
                        (unsigned long long)b, (unsigned long long)en);
    size_t es = st_sft_dtype_size(t->dtype);
    if (overflow || count > UINT64_MAX / es || count * es != en - b) {
        char shape[160];
        int n = snprintf(shape, sizeof shape, "[");
        for (int i = 0; i < nd && n < (int)sizeof shape - 24; i++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        snprintf(shape + n, sizeof shape - (size_t)n, "]");
        if (overflow || count > UINT64_MAX / es)
            return st_error(ST_ERR_FORMAT, "%s: tensor %s: %s %s is too large", path, name, st_sft_dtype_name(t->dtype),
                            shape);
        return st_error(ST_ERR_FORMAT, "%s: tensor %s: %s %s needs %llu bytes, data_offsets [%llu, %llu] hold %llu",
                        path, name, st_sft_dtype_name(t->dtype), shape, (unsigned long long)(count * es),
                        (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b));
    }
    if (en > data_size)
        return st_error(ST_ERR_FORMAT,
                        "%s: tensor %s: data_offsets [%llu, %llu] go past the end of the data area (%llu bytes; file truncated?)",
                        path, name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    t->nbytes = en - b;
    t->offset = data_start + b;
    t->shard = shard_index;
    return 0;
}

/* Open, size-check and parse one shard; appends its tensors to s. */
static int open_shard(st_sft *s, const char *path) {
    shard *ns = realloc(s->shards, (size_t)(s->n_shards + 1) * sizeof *ns);
    if (!ns) return st_error(ST_ERR_NOMEM, "safetensors: out of memory");
    s->shards = ns;
    const int si = s->n_shards++;
    shard *sh = &s->shards[si];
    memset(sh, 0, sizeof *sh);
    sh->fd = -1;
    sh->path = strdup(path);
    if (!sh->path) return st_error(ST_ERR_NOMEM, "safetensors: out of memory");
    sh->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (sh->fd < 0)
        return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(sh->fd, &sb)) return st_error(ST_ERR_IO, "%s: stat failed: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return st_error(ST_ERR_FORMAT, "%s: not a regular file", path);
    sh->size = (uint64_t)sb.st_size;
    if (sh->size < 8)
        return st_error(ST_ERR_FORMAT, "%s: file is %llu bytes, shorter than the 8-byte header length", path,
                        (unsigned long long)sh->size);
    uint8_t lenb[8];
    int rc = pread_full(sh->fd, lenb, 8, 0, path);
    if (rc) return rc;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lenb[i];
    if (hlen > ST_SFT_MAX_HEADER)
        return st_error(ST_ERR_FORMAT, "%s: header length %llu is absurd (limit %u; not a safetensors file?)", path,
                        (unsigned long long)hlen, ST_SFT_MAX_HEADER);
    if (hlen > sh->size - 8)
        return st_error(ST_ERR_FORMAT, "%s: header length %llu goes past the end of the file (%llu bytes; truncated?)",
                        path, (unsigned long long)hlen, (unsigned long long)sh->size);
    if (hlen < 2) return st_error(ST_ERR_FORMAT, "%s: header length %llu is too short for a JSON object", path,
                                  (unsigned long long)hlen);
    char *text = malloc((size_t)hlen);
    if (!text) return st_error(ST_ERR_NOMEM, "%s: out of memory for a %llu-byte header", path, (unsigned long long)hlen);
    if ((rc = pread_full(sh->fd, text, hlen, 8, path))) {
        free(text);
        return rc;
    }
    cJSON *root = cJSON_ParseWithLength(text, (size_t)hlen);
    free(text);
    if (!root) return st_error(ST_ERR_FORMAT, "%s: header is not valid JSON", path);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return st_error(ST_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    sh->data_start = 8 + hlen;
    const uint64_t data_size = sh->size - sh->data_start;
    const int first = s->n;
    cJSON *e;
    rc = 0;
    cJSON_ArrayForEach(e, root) {
        if (!e->string) continue;
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) {
                rc = st_error(ST_ERR_FORMAT, "%s: __metadata__ is not an object", path);
                break;
            }
            if (!sh->metadata) sh->metadata = cJSON_Duplicate(e, true);
            continue;
        }
        st_sft_tensor t;
        if ((rc = parse_entry(path, e, sh->data_start, data_size, si, &t))) break;
        if (!(t.name = strdup(e->string))) {
            rc = st_error(ST_ERR_NOMEM, "safetensors: out of memory");
            break;
        }
        if ((rc = push_tensor(s, &t))) {
            free((char *)t.name);
            break;
        }
    }
    cJSON_Delete(root);
    if (rc) return rc;
    /* overlap check in offset order (zero-byte tensors overlap nothing) */
    if (s->n > first) qsort(s->t + first, (size_t)(s->n - first), sizeof *s->t, cmp_offset); /* none: s->t may be NULL */
    const st_sft_tensor *prev = NULL;
    for (int k = first; k < s->n; k++) {
        const st_sft_tensor *t = &s->t[k];
        if (!t->nbytes) continue;
        if (prev && t->offset < prev->offset + prev->nbytes)
            return st_error(ST_ERR_FORMAT, "%s: tensors %s [%llu, %llu) and %s [%llu, %llu) overlap", path, prev->name,
                            (unsigned long long)(prev->offset - sh->data_start),
                            (unsigned long long)(prev->offset - sh->data_start + prev->nbytes), t->name,
                            (unsigned long long)(t->offset - sh->data_start),
                            (unsigned long long)(t->offset - sh->data_start + t->nbytes));
        prev = t;
    }
    return 0;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int join(char *buf, size_t len, const char *dir, const char *name) {
    if (snprintf(buf, len, "%s/%s", dir, name) >= (int)len) return st_error(ST_ERR_INVALID, "%s/%s: path too long", dir, name);
    return 0;
}

/* Directory with model.safetensors.index.json. */
static int open_indexed(st_sft *s, const char *dir, const char *index_path) {
    char *text;
    size_t len;
    int rc = st_read_file(index_path, 256u << 20, &text, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return st_error(ST_ERR_FORMAT, "%s: not valid JSON", index_path);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return st_error(ST_ERR_FORMAT, "%s: no weight_map object", index_path);
    }
    /* shards in order of first mention */
    const cJSON *e;
    char path[4096];
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e)) {
            rc = st_error(ST_ERR_FORMAT, "%s: weight_map entry %s is not a file name", index_path, e->string);
            break;
        }
        const char *f = e->valuestring;
        if (!*f || strchr(f, '/') || !strcmp(f, "..") || !strcmp(f, ".")) {
            rc = st_error(ST_ERR_FORMAT, "%s: weight_map entry %s names \"%s\", not a file in this directory", index_path,
                          e->string, f);
            break;
        }
        if ((rc = join(path, sizeof path, dir, f))) break;
        bool seen = false;
        for (int i = 0; i < s->n_shards && !seen; i++) seen = !strcmp(s->shards[i].path, path);
        if (seen) continue;
        if ((rc = open_shard(s, path))) {
            if (rc == ST_ERR_NOT_FOUND)
                st_error_prefix(rc, "%s: weight_map lists tensor %s in a missing shard: ", index_path, e->string);
            break;
        }
    }
    if (!rc && !s->n_shards) rc = st_error(ST_ERR_FORMAT, "%s: weight_map is empty", index_path);
    if (!rc) rc = build_table(s);
    /* every listed tensor is in the shard the index names */
    if (!rc) cJSON_ArrayForEach(e, wm) {
        join(path, sizeof path, dir, e->valuestring);
        int k = find_index(s, e->string);
        if (k < 0) {
            rc = st_error(ST_ERR_FORMAT, "%s: weight_map lists tensor %s in %s, which has no such tensor", index_path,
                          e->string, e->valuestring);
            break;
        }
        if (strcmp(s->shards[s->t[k].shard].path, path)) {
            rc = st_error(ST_ERR_FORMAT, "%s: weight_map lists tensor %s in %s, but it is in %s", index_path, e->string,
                          e->valuestring, s->shards[s->t[k].shard].path);
            break;
        }
    }
    if (!rc) {
        int listed = cJSON_GetArraySize(wm);
        if (listed != s->n) {
            for (int k = 0; k < s->n; k++)
                if (!cJSON_GetObjectItemCaseSensitive(wm, s->t[k].name)) {
                    ST_WARN("%s: tensor %s is not listed in %s (used anyway)", s->shards[s->t[k].shard].path,
                            s->t[k].name, index_path);
                    break;
                }
        }
    }
    cJSON_Delete(root);
    return rc;
}

static int scan_filter(const struct dirent *d) {
    return d->d_name[0] != '.' && ends_with(d->d_name, ".safetensors");
}

static int open_dir(st_sft *s, const char *dir) {
    char path[4096];
    int rc;
    if ((rc = join(path, sizeof path, dir, "model.safetensors.index.json"))) return rc;
    if (!access(path, F_OK)) return open_indexed(s, dir, path);
    struct dirent **list;
    int n = scandir(dir, &list, scan_filter, alphasort);
    if (n < 0) return st_error(ST_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    rc = 0;
    for (int i = 0; i < n; i++) {
        if (!rc && !(rc = join(path, sizeof path, dir, list[i]->d_name))) rc = open_shard(s, path);
        free(list[i]);
    }
    free(list);
    if (!rc && !n)
        rc = st_error(ST_ERR_NOT_FOUND, "%s: no model.safetensors.index.json and no *.safetensors files", dir);
    if (!rc) rc = build_table(s);
    return rc;
}

int st_sft_open(const char *path, st_sft **out) {
    *out = NULL;
    if (!path) return st_error(ST_ERR_INVALID, "safetensors: no path");
    st_sft *s = calloc(1, sizeof *s);
    if (!s) return st_error(ST_ERR_NOMEM, "safetensors: out of memory");
    pthread_mutex_init(&s->map_lock, NULL);
    struct stat sb;
    int rc;
    if (stat(path, &sb)) rc = st_error(ST_ERR_NOT_FOUND, "%s: no such file or directory", path);
    else if (S_ISDIR(sb.st_mode)) rc = open_dir(s, path);
    else if (!(rc = open_shard(s, path))) rc = build_table(s);
    if (rc) {
        st_sft_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void st_sft_close(st_sft *s) {
    if (!s) return;
    for (int i = 0; i < s->n_shards; i++) {
        shard *sh = &s->shards[i];
        if (sh->map) munmap(sh->map, (size_t)sh->size);
        if (sh->fd >= 0) close(sh->fd);
        cJSON_Delete(sh->metadata);
        free(sh->path);
    }
    for (int k = 0; k < s->n; k++) free((char *)s->t[k].name);
    pthread_mutex_destroy(&s->map_lock);
    free(s->shards);
    free(s->t);
    free(s->table);
    free(s);
}

int st_sft_count(const st_sft *s) { return s ? s->n : 0; }

const st_sft_tensor *st_sft_at(const st_sft *s, int i) { return s && i >= 0 && i < s->n ? &s->t[i] : NULL; }

const st_sft_tensor *st_sft_find(const st_sft *s, const char *name) {
    int k = s && name ? find_index(s, name) : -1;
    return k < 0 ? NULL : &s->t[k];
}

int st_sft_shard_count(const st_sft *s) { return s ? s->n_shards : 0; }
const char *st_sft_shard_path(const st_sft *s, int i) { return s && i >= 0 && i < s->n_shards ? s->shards[i].path : NULL; }
int st_sft_shard_fd(const st_sft *s, int i) { return s && i >= 0 && i < s->n_shards ? s->shards[i].fd : -1; }
uint64_t st_sft_shard_size(const st_sft *s, int i) { return s && i >= 0 && i < s->n_shards ? s->shards[i].size : 0; }

const char *st_sft_metadata(const st_sft *s, const char *key) {
    for (int i = 0; s && i < s->n_shards; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(s->shards[i].metadata, key);
        if (cJSON_IsString(v)) return v->valuestring;
    }
    return NULL;
}

int st_sft_data(st_sft *s, const st_sft_tensor *t, const void **out) {
    *out = NULL;
    if (!s || !t || t->shard < 0 || t->shard >= s->n_shards)
        return st_error(ST_ERR_INVALID, "safetensors: tensor does not belong to this set");
    shard *sh = &s->shards[t->shard];
    pthread_mutex_lock(&s->map_lock);
    if (!sh->map) {
        void *m = mmap(NULL, (size_t)sh->size, PROT_READ, MAP_PRIVATE, sh->fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            pthread_mutex_unlock(&s->map_lock);
            return st_error(ST_ERR_IO, "%s: mmap of %llu bytes failed: %s", sh->path, (unsigned long long)sh->size,
                            strerror(e));
        }
        sh->map = m;
    }
    pthread_mutex_unlock(&s->map_lock);
    *out = (const uint8_t *)sh->map + t->offset;
    return 0;
}

int st_sft_pread(const st_sft *s, const st_sft_tensor *t, uint64_t off, void *buf, uint64_t len) {
    if (!s || !t || t->shard < 0 || t->shard >= s->n_shards)
        return st_error(ST_ERR_INVALID, "safetensors: tensor does not belong to this set");
    if (off > t->nbytes || len > t->nbytes - off)
        return st_error(ST_ERR_INVALID, "tensor %s: read of %llu bytes at %llu is outside its %llu bytes", t->name,
                        (unsigned long long)len, (unsigned long long)off, (unsigned long long)t->nbytes);
    const shard *sh = &s->shards[t->shard];
    return pread_full(sh->fd, buf, len, t->offset + off, sh->path);
}
