/* `strata synth` writing: shards (one per layer when the model is large, else
 * one file), the index, the tokenizer copies and config.json last, so an
 * interrupted run never leaves a directory that looks like a checkpoint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/synth_internal.h"
#include "io/safetensors.h"

#define SHARD_SPLIT_BYTES (1ull << 30) /* above this, one shard per layer */

static int mkdir_p(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) return st_error(ST_ERR_INVALID, "path too long: %s", dir);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return st_error(ST_ERR_IO, "mkdir %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) return st_error(ST_ERR_IO, "mkdir %s: %s", buf, strerror(errno));
    return 0;
}

static int copy_file(const char *src, const char *dst) {
    char *buf;
    size_t len;
    int rc = st_read_file(src, (size_t)1 << 30, &buf, &len);
    if (rc) return rc;
    rc = st_write_file_atomic(dst, buf, len);
    free(buf);
    return rc;
}

static int write_shard(const synth_list *L, int first, int last, const char *path, uint64_t seed, st_progress *pg,
                       uint64_t *done) {
    st_sft_writer *w;
    int rc = st_sft_writer_new(path, &w);
    if (rc) return rc;
    for (int i = first; i < last && !rc; i++) {
        st_sft_dtype dt;
        if (st_sft_dtype_parse(L->t[i].dtype, &dt)) rc = st_error(ST_ERR_INTERNAL, "synth: dtype %s", L->t[i].dtype);
        else rc = st_sft_writer_declare(w, L->t[i].name, dt, L->t[i].ndim, L->t[i].shape);
    }
    void *buf = NULL, *aux = NULL;
    size_t cap = 0, aux_cap = 0;
    for (int i = first; i < last && !rc; i++) {
        const synth_tensor *t = &L->t[i];
        if (t->bytes > cap) {
            free(buf);
            cap = t->bytes;
            if (!(buf = malloc(cap))) { rc = st_error(ST_ERR_NOMEM, "synth: %s: out of memory", t->name); break; }
        }
        if (t->gen == SG_FP8) { /* the next tensor holds its block scales */
            ST_ASSERT(i + 1 < last && L->t[i + 1].gen == SG_FP8_SCALE);
            if (L->t[i + 1].bytes > aux_cap) {
                free(aux);
                aux_cap = L->t[i + 1].bytes;
                if (!(aux = malloc(aux_cap))) { rc = st_error(ST_ERR_NOMEM, "synth: out of memory"); break; }
            }
        }
        synth_generate(t, seed, buf, aux);
        rc = st_sft_writer_write(w, buf, t->bytes);
        *done += t->bytes;
        st_progress_update(pg, *done);
    }
    free(buf);
    free(aux);
    if (rc) { st_sft_writer_abort(w); return rc; }
    return st_sft_writer_finish(w);
}

int st_synth_write(const st_synth_preset *p, const char *out_dir, uint64_t seed, const char *tokenizer_dir, bool quiet) {
    synth_list L;
    int layer_end[ST_SYNTH_MAX_LAYERS];
    if (p->n_layers + (p->from_config ? p->n_mtp : 0) > ST_SYNTH_MAX_LAYERS)
        return st_error(ST_ERR_INVALID, "synth: more than %d blocks", ST_SYNTH_MAX_LAYERS);
    int rc = mkdir_p(out_dir);
    if (rc) return rc;
    if ((rc = synth_list_build(p, &L, layer_end))) return rc;
    uint64_t total = 0, done = 0;
    for (int i = 0; i < L.n; i++) total += L.t[i].bytes;
    char path[4200], cfgbuf[8192];
    if (tokenizer_dir) { /* check early: a missing tokenizer should not cost a 9 GB write */
        snprintf(path, sizeof path, "%s/tokenizer.json", tokenizer_dir);
        if (access(path, R_OK))
            { synth_list_free(&L); return st_error(ST_ERR_NOT_FOUND, "synth: no tokenizer at %s (use --tokenizer DIR)", path); }
    }
    struct statvfs fs; /* refuse before writing what cannot fit, not after filling the disk */
    if (!statvfs(out_dir, &fs) && (uint64_t)fs.f_bavail * fs.f_frsize < total + (64u << 20)) {
        synth_list_free(&L);
        return st_error(ST_ERR_IO, "synth: the checkpoint needs %.2f GB, %s has %.2f GB free", (double)total / 1e9,
                        out_dir, (double)fs.f_bavail * (double)fs.f_frsize / 1e9);
    }
    st_progress pg;
    st_progress_begin(&pg, "synth", total, true, quiet);
    const bool split = total > SHARD_SPLIT_BYTES;
    const int n_shards = split ? p->n_layers + 1 : 1;
    char **names = calloc((size_t)n_shards, sizeof *names);
    if (!names) rc = st_error(ST_ERR_NOMEM, "synth: out of memory");
    for (int s = 0; s < n_shards && !rc; s++) {
        char nm[64];
        if (split) snprintf(nm, sizeof nm, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        else snprintf(nm, sizeof nm, "model.safetensors");
        names[s] = strdup(nm);
        snprintf(path, sizeof path, "%s/%s", out_dir, nm);
        int first = split ? (s == 0 ? 0 : layer_end[s - 1]) : 0;
        int last = split ? (s < p->n_layers ? layer_end[s] : L.n) : L.n;
        rc = names[s] ? write_shard(&L, first, last, path, seed, &pg, &done) : st_error(ST_ERR_NOMEM, "out of memory");
    }
    st_progress_end(&pg);
    if (!rc && split) rc = st_sft_write_index(out_dir, (const char *const *)names, n_shards);
    if (!rc && tokenizer_dir) {
        const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
        for (size_t i = 0; i < 2 && !rc; i++) {
            char src[4200];
            snprintf(src, sizeof src, "%s/%s", tokenizer_dir, files[i]);
            snprintf(path, sizeof path, "%s/%s", out_dir, files[i]);
            rc = copy_file(src, path);
        }
    }
    if (!rc) rc = st_synth_config_json(p, cfgbuf, sizeof cfgbuf);
    if (!rc) {
        snprintf(path, sizeof path, "%s/config.json", out_dir);
        rc = st_write_file_atomic(path, cfgbuf, strlen(cfgbuf));
    }
    for (int s = 0; names && s < n_shards; s++) free(names[s]);
    free(names);
    synth_list_free(&L);
    return rc;
}
