/* Prompt-prefix KV persistence (--kv-save DIR).
 *
 * A file holds one sequence's state after a prompt: every layer's window ring,
 * compressor partial blocks and compressed entries, plus the last position's
 * logits. Layout: header (magic "STKV", version, model identity, numerics,
 * n_tokens, vocab, n_layers), the token ids, then per layer the raw arrays in
 * a fixed order (F32 window ring and compressor partial blocks; compressed
 * entries as stored: F32, or the official compact layout in official numerics,
 * since version 2), then an xxh3-64 of everything before it. A file whose
 * magic, version, identity, sizes or checksum disagree is ignored with a
 * warning: never trusted. Files are written to a temporary name and renamed. */
#include "engine/kv_store.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/base.h"

#define KV_MAGIC 0x564b5453u /* "STKV" */
#define KV_VERSION 2u /* 2: compact compressed entries in official numerics */

typedef struct kv_header {
    uint32_t magic, version;
    uint64_t model_id;
    uint32_t numerics, n_layers;
    int64_t n_tokens, vocab;
} kv_header;

/* The arrays of one layer's state, in file order, with their byte counts. */
static int layer_arrays(const st_attn_w *w, const st_layer_state *s, void **ptr, int64_t *cnt) {
    int n = 0;
    ptr[n] = s->window;
    cnt[n++] = (int64_t)w->window * w->head_dim * (int64_t)sizeof(float);
    const st_compressor_w *cw[2] = {&w->comp, &w->idx.comp};
    const st_comp_state *cs[2] = {&s->comp, &s->icomp};
    const int ncomp = w->kind == ST_LAYER_WINDOW ? 0 : w->kind == ST_LAYER_CSA ? 2 : 1;
    for (int c = 0; c < ncomp; c++) {
        const int64_t coff = cw[c]->overlap ? 2 : 1, st = coff * cw[c]->ratio * coff * cw[c]->d;
        ptr[n] = cs[c]->kv_state;
        cnt[n++] = st * (int64_t)sizeof(float);
        ptr[n] = cs[c]->score_state;
        cnt[n++] = st * (int64_t)sizeof(float);
        ptr[n] = cs[c]->entries;
        cnt[n++] = cs[c]->n_entries * (int64_t)cs[c]->entry_bytes;
    }
    return n;
}

static void path_for(const char *dir, const int32_t *ids, int64_t n, uint64_t model_id, char *buf, size_t len) {
    uint64_t h = XXH3_64bits_withSeed(ids, (size_t)n * sizeof *ids, model_id);
    snprintf(buf, len, "%s/%016llx-%lld.kv", dir, (unsigned long long)h, (long long)n);
}

int st_kv_save(const st_seq *s, const int32_t *ids, int64_t n, const float *logits, uint64_t model_id, const char *dir) {
    const st_model *m = s->m;
    if (s->kv) return st_error(ST_ERR_UNSUPPORTED, "kv save: not supported with --kv-budget (entries are paged)");
    if (s->pos != n) return st_error(ST_ERR_INVALID, "kv save: the sequence holds %lld tokens, not %lld", (long long)s->pos, (long long)n);
    if (mkdir(dir, 0755) && errno != EEXIST) return st_error(ST_ERR_IO, "kv save: mkdir %s: %s", dir, strerror(errno));
    char path[4096], tmp[4120];
    path_for(dir, ids, n, model_id, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return st_error(ST_ERR_IO, "kv save: %s: %s", tmp, strerror(errno));
    XXH3_state_t *hs = XXH3_createState();
    XXH3_64bits_reset(hs);
    bool ok = hs != NULL;
#define PUT(p, bytes)                                                             \
    do {                                                                          \
        if (ok && (bytes) > 0) {                                                  \
            ok = fwrite((p), 1, (size_t)(bytes), f) == (size_t)(bytes);           \
            XXH3_64bits_update(hs, (p), (size_t)(bytes));                         \
        }                                                                         \
    } while (0)
    kv_header h = {KV_MAGIC, KV_VERSION, model_id, (uint32_t)m->numerics, (uint32_t)m->n_layers, n, m->vocab};
    PUT(&h, sizeof h);
    PUT(ids, n * (int64_t)sizeof *ids);
    PUT(logits, m->vocab * (int64_t)sizeof(float));
    for (int l = 0; l < m->n_layers && ok; l++) {
        void *ptr[8];
        int64_t cnt[8];
        int na = layer_arrays(&m->layers[l].attn, &s->state[l], ptr, cnt);
        for (int a = 0; a < na; a++) PUT(ptr[a], cnt[a]);
    }
#undef PUT
    uint64_t sum = hs ? XXH3_64bits_digest(hs) : 0;
    XXH3_freeState(hs);
    ok = ok && fwrite(&sum, sizeof sum, 1, f) == 1 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path)) {
        unlink(tmp);
        return st_error(ST_ERR_IO, "kv save: %s: %s", path, strerror(errno));
    }
    return 0;
}

/* Loads one file into s if it is whole, ours and a prefix of ids[0..n). */
static int try_load(st_seq *s, const char *path, const int32_t *ids, int64_t n, uint64_t model_id, float *logits,
                    int64_t *got) {
    const st_model *m = s->m;
    char *buf;
    size_t len;
    int rc = st_read_file(path, (size_t)1 << 40, &buf, &len);
    if (rc) return rc;
    kv_header h;
    rc = ST_ERR_FORMAT;
    if (len < sizeof h + 8) goto bad;
    memcpy(&h, buf, sizeof h);
    if (h.magic != KV_MAGIC || h.version != KV_VERSION) goto bad;
    if (h.model_id != model_id || h.numerics != (uint32_t)m->numerics || h.n_layers != (uint32_t)m->n_layers ||
        h.vocab != m->vocab || h.n_tokens <= 0 || h.n_tokens > n) {
        rc = ST_ERR_NOT_FOUND; /* another model's or a longer prompt's: not for us, no warning */
        goto out;
    }
    uint64_t sum;
    memcpy(&sum, buf + len - 8, 8);
    if (XXH3_64bits(buf, len - 8) != sum) goto bad;
    const char *p = buf + sizeof h, *end = buf + len - 8;
    if ((size_t)(end - p) < (size_t)h.n_tokens * sizeof(int32_t) + (size_t)m->vocab * sizeof(float)) goto bad;
    if (memcmp(p, ids, (size_t)h.n_tokens * sizeof(int32_t))) { rc = ST_ERR_NOT_FOUND; goto out; }
    p += h.n_tokens * (int64_t)sizeof(int32_t);
    const char *lg = p;
    p += m->vocab * (int64_t)sizeof(float);
    st_seq_reset(s);
    for (int l = 0; l < m->n_layers; l++) {
        const st_attn_w *w = &m->layers[l].attn;
        st_layer_state *ls = &s->state[l];
        /* entries: make room for what the prefix produced */
        const st_compressor_w *cw[2] = {&w->comp, &w->idx.comp};
        st_comp_state *cs[2] = {&ls->comp, &ls->icomp};
        const int ncomp = w->kind == ST_LAYER_WINDOW ? 0 : w->kind == ST_LAYER_CSA ? 2 : 1;
        for (int c = 0; c < ncomp; c++) {
            int64_t ne = h.n_tokens / cw[c]->ratio;
            if (ne > cs[c]->cap) {
                void *e = realloc(cs[c]->entries, (size_t)ne * cs[c]->entry_bytes);
                if (!e) { rc = st_error(ST_ERR_NOMEM, "kv load: out of memory"); goto out; }
                cs[c]->entries = e;
                cs[c]->cap = ne;
            }
            cs[c]->n_entries = ne;
        }
        void *ptr[8];
        int64_t cnt[8];
        int na = layer_arrays(w, ls, ptr, cnt);
        for (int a = 0; a < na; a++) {
            size_t b = (size_t)cnt[a];
            if ((size_t)(end - p) < b) { st_seq_reset(s); goto bad; }
            memcpy(ptr[a], p, b);
            p += b;
        }
    }
    if (p != end) { st_seq_reset(s); goto bad; }
    s->pos = h.n_tokens;
    if (logits) memcpy(logits, lg, (size_t)m->vocab * sizeof(float));
    *got = h.n_tokens;
    rc = 0;
    goto out;
bad:
    ST_WARN("ignoring %s: not a whole strata KV file for this model (corrupt, truncated or another version)", path);
    rc = ST_ERR_FORMAT;
out:
    free(buf);
    return rc;
}

int st_kv_load_prefix(st_seq *s, const int32_t *ids, int64_t n, uint64_t model_id, const char *dir, float *logits,
                      int64_t *n_loaded) {
    *n_loaded = 0;
    if (s->kv) return st_error(ST_ERR_UNSUPPORTED, "kv load: not supported with --kv-budget (entries are paged)");
    st_seq_reset(s); /* whatever happens, s then holds exactly *n_loaded tokens */
    DIR *d = opendir(dir);
    if (!d) return 0; /* nothing saved yet */
    /* longest saved prefix first: try every length present, longest to shortest */
    int64_t best = 0;
    char best_path[4096] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t L = strlen(e->d_name);
        if (L < 4 || strcmp(e->d_name + L - 3, ".kv")) continue;
        const char *dash = strrchr(e->d_name, '-');
        long long len = dash ? atoll(dash + 1) : 0;
        if (len <= best || len > n) continue;
        char want[4096];
        path_for(dir, ids, (int64_t)len, model_id, want, sizeof want);
        const char *base = strrchr(want, '/');
        if (strcmp(base + 1, e->d_name)) continue; /* not the hash of our prefix of that length */
        best = len;
        snprintf(best_path, sizeof best_path, "%s", want);
    }
    closedir(d);
    if (!best) return 0;
    int rc = try_load(s, best_path, ids, n, model_id, logits, n_loaded);
    if (rc == ST_ERR_NOT_FOUND || rc == ST_ERR_FORMAT) { st_error_clear(); return 0; }
    return rc;
}

uint64_t st_kv_model_id(const char *model_dir, int numerics) {
    char path[4096], *cfg = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    uint64_t h = (uint64_t)numerics * 0x9e3779b97f4a7c15ull;
    if (!st_read_file(path, 1 << 24, &cfg, &len)) h ^= XXH3_64bits(cfg, len);
    free(cfg);
    /* the weights' identity: every shard's name, size and modification time */
    DIR *d = opendir(model_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t L = strlen(e->d_name);
            if (L < 12 || strcmp(e->d_name + L - 12, ".safetensors")) continue;
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", model_dir, e->d_name);
            if (stat(path, &st)) continue;
            uint64_t parts[3] = {XXH3_64bits(e->d_name, L), (uint64_t)st.st_size, (uint64_t)st.st_mtime};
            h += XXH3_64bits(parts, sizeof parts); /* order-independent */
        }
        closedir(d);
    }
    return h;
}
