/* bench io targets (bench/io_target.h): turns a FILE, a PACK or a checkpoint
 * directory into the list of expert-sized reads `strata bench io` issues and
 * the region fio covers. Owns no engine code: reads the pack manifest and the
 * checkpoint's tensor index only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/io_target.h"
#include "engine/config.h"
#include "engine/tensor_names.h"
#include "io/pack.h"

enum { ALIGN = 4096 };

static const char *const EXPERT_SLOTS[] = {"w1.weight", "w1.scale", "w3.weight", "w3.scale", "w2.weight", "w2.scale"};

const char *io_target_kind_name(io_target_kind k) {
    return k == IO_TARGET_PACK ? "pack" : k == IO_TARGET_CHECKPOINT ? "checkpoint" : "file";
}

void io_target_free(io_target *t) {
    for (int f = 0; t->paths && f < t->n_files; f++) free(t->paths[f]);
    free(t->paths);
    free(t->file_bytes);
    free(t->ext_file);
    free(t->ext_offset);
    memset(t, 0, sizeof *t);
}

void io_target_pick(const io_target *t, uint64_t r, int *file, uint64_t *offset) {
    if (!t->n_extents) {
        *file = 0;
        *offset = r % t->n_blocks * t->block;
        return;
    }
    int i = (int)(r % (uint64_t)t->n_extents);
    *file = t->ext_file[i];
    *offset = t->ext_offset[i];
}

static int set_files(io_target *t, int n, const char *const *paths, const uint64_t *sizes) {
    t->n_files = n;
    t->paths = calloc((size_t)n, sizeof *t->paths);
    t->file_bytes = calloc((size_t)n, sizeof *t->file_bytes);
    if (!t->paths || !t->file_bytes) return st_error(ST_ERR_NOMEM, "bench io: out of memory");
    for (int f = 0; f < n; f++) {
        if (!(t->paths[f] = strdup(paths[f]))) return st_error(ST_ERR_NOMEM, "bench io: out of memory");
        t->file_bytes[f] = sizes[f];
    }
    return 0;
}

static int alloc_extents(io_target *t, int n) {
    t->ext_file = calloc((size_t)(n ? n : 1), sizeof *t->ext_file);
    t->ext_offset = calloc((size_t)(n ? n : 1), sizeof *t->ext_offset);
    return t->ext_file && t->ext_offset ? 0 : st_error(ST_ERR_NOMEM, "bench io: out of memory");
}

/* fio covers, in every file, the common range [lo, hi) that holds the reads:
 * with one file exactly the span of the expert extents. */
static void set_fio_region(io_target *t) {
    uint64_t lo = UINT64_MAX, hi = UINT64_MAX;
    for (int f = 0; f < t->n_files; f++) {
        uint64_t flo = UINT64_MAX, fhi = 0;
        for (int i = 0; i < t->n_extents; i++)
            if (t->ext_file[i] == f) {
                flo = ST_MIN(flo, t->ext_offset[i]);
                fhi = ST_MAX(fhi, t->ext_offset[i] + t->block);
            }
        if (flo == UINT64_MAX) continue;
        lo = ST_MIN(lo, flo);
        hi = ST_MIN(hi, fhi);
    }
    if (hi <= lo || hi - lo < t->block) { /* no common range: from the start of each file */
        lo = 0;
        hi = UINT64_MAX;
        for (int f = 0; f < t->n_files; f++) hi = ST_MIN(hi, t->file_bytes[f]);
    }
    t->fio_offset = lo;
    t->fio_size = (hi - lo) / t->block * t->block;
}

/* The pack's routed-expert extents of the most common length (normally all). */
static int open_pack(const char *dir, io_target *t) {
    st_pack *p;
    int rc = st_pack_open(dir, &p);
    if (rc) return rc;
    const int n = st_pack_extent_count(p);
    uint64_t best = 0;
    int best_count = 0;
    for (int i = 0; i < n; i++) { /* mode of the expert lengths: quadratic only over distinct lengths in practice */
        const st_pack_extent *e = st_pack_extent_at(p, i);
        if (e->kind != ST_PACK_EXPERT || e->length == best) continue;
        int c = 0;
        for (int k = 0; k < n; k++) {
            const st_pack_extent *x = st_pack_extent_at(p, k);
            c += x->kind == ST_PACK_EXPERT && x->length == e->length;
        }
        if (c > best_count) { best = e->length; best_count = c; }
    }
    if (!best_count) {
        st_pack_close(p);
        return st_error(ST_ERR_INVALID, "%s: the pack has no routed-expert extents to read", dir);
    }
    const int nf = st_pack_file_count(p);
    const char **paths = calloc((size_t)nf, sizeof *paths);
    uint64_t *sizes = calloc((size_t)nf, sizeof *sizes);
    rc = paths && sizes ? 0 : st_error(ST_ERR_NOMEM, "bench io: out of memory");
    for (int f = 0; f < nf && !rc; f++) {
        paths[f] = st_pack_file_path(p, f);
        sizes[f] = st_pack_file_size(p, f);
    }
    if (!rc) rc = set_files(t, nf, paths, sizes);
    if (!rc) rc = alloc_extents(t, best_count);
    for (int i = 0; i < n && !rc; i++) {
        const st_pack_extent *e = st_pack_extent_at(p, i);
        if (e->kind != ST_PACK_EXPERT) continue;
        if (e->length != best) { t->skipped++; continue; }
        t->ext_file[t->n_extents] = e->file;
        t->ext_offset[t->n_extents++] = e->offset;
    }
    free(paths);
    free(sizes);
    st_pack_close(p);
    t->block = best;
    return rc;
}

/* Each routed expert's six tensors in one shard: [first byte rounded down,
 * last byte rounded up) to 4096; every read is the longest such span (clipped
 * experts at a file's end are left out). */
static int open_checkpoint(const char *dir, io_target *t) {
    st_config cfg;
    int rc = st_config_load(dir, &cfg);
    if (rc) return rc;
    st_checkpoint *ck = NULL;
    rc = st_checkpoint_open(dir, &cfg, &ck);
    st_sft *sf = rc ? NULL : st_checkpoint_files(ck);
    if (!rc && !sf) rc = st_error(ST_ERR_INVALID, "%s: not a safetensors checkpoint", dir);
    const int n_exp = cfg.n_layers * cfg.n_routed_experts;
    if (!rc && n_exp <= 0) rc = st_error(ST_ERR_INVALID, "%s: the config has no routed experts", dir);
    if (!rc) rc = alloc_extents(t, n_exp);
    uint64_t *ends = rc ? NULL : calloc((size_t)n_exp, sizeof *ends);
    if (!rc && !ends) rc = st_error(ST_ERR_NOMEM, "bench io: out of memory");
    for (int l = 0; l < cfg.n_layers && !rc; l++)
        for (int e = 0; e < cfg.n_routed_experts && !rc; e++) {
            uint64_t lo = UINT64_MAX, hi = 0;
            int shard = -1;
            bool ok = true;
            for (size_t s = 0; s < ST_ARRAY_LEN(EXPERT_SLOTS) && ok; s++) {
                char name[128];
                st_tensor_view v;
                snprintf(name, sizeof name, "layers.%d.ffn.experts.%d.%s", l, e, EXPERT_SLOTS[s]);
                if (st_checkpoint_locate(ck, name, &v)) { ok = s % 2 == 1; continue; } /* scales may be absent */
                if (shard >= 0 && v.shard != shard) ok = false;
                shard = v.shard;
                lo = ST_MIN(lo, v.file_offset);
                hi = ST_MAX(hi, v.file_offset + v.nbytes);
            }
            if (!ok || shard < 0) { t->skipped++; continue; }
            t->ext_file[t->n_extents] = shard;
            t->ext_offset[t->n_extents] = lo / ALIGN * ALIGN;
            ends[t->n_extents++] = ST_ALIGN_UP(hi, ALIGN);
        }
    if (!rc && !t->n_extents) rc = st_error(ST_ERR_INVALID, "%s: no routed expert lies in one shard", dir);
    if (!rc) {
        const int ns = st_sft_shard_count(sf);
        const char **paths = calloc((size_t)ns, sizeof *paths);
        uint64_t *sizes = calloc((size_t)ns, sizeof *sizes);
        rc = paths && sizes ? 0 : st_error(ST_ERR_NOMEM, "bench io: out of memory");
        for (int f = 0; f < ns && !rc; f++) {
            paths[f] = st_sft_shard_path(sf, f);
            sizes[f] = st_sft_shard_size(sf, f);
        }
        if (!rc) rc = set_files(t, ns, paths, sizes);
        free(paths);
        free(sizes);
    }
    if (!rc) { /* one block size: the longest span; drop experts whose block would pass their file's end */
        for (int i = 0; i < t->n_extents; i++) t->block = ST_MAX(t->block, ends[i] - t->ext_offset[i]);
        int k = 0;
        for (int i = 0; i < t->n_extents; i++) {
            if (t->ext_offset[i] + t->block > t->file_bytes[t->ext_file[i]]) { t->skipped++; continue; }
            t->ext_file[k] = t->ext_file[i];
            t->ext_offset[k++] = t->ext_offset[i];
        }
        t->n_extents = k;
        if (!k) rc = st_error(ST_ERR_INVALID, "%s: no expert span fits a %llu-byte read", dir, (unsigned long long)t->block);
    }
    free(ends);
    st_checkpoint_close(ck);
    st_config_free(&cfg);
    return rc;
}

int io_target_open(const char *path, uint64_t block, bool block_given, io_target *t) {
    memset(t, 0, sizeof *t);
    struct stat sb;
    if (stat(path, &sb)) return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "%s: %s", path, strerror(errno));
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        char cfg[4200];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        if (st_pack_is_pack(path)) {
            t->kind = IO_TARGET_PACK;
            rc = open_pack(path, t);
        } else if (!access(cfg, R_OK)) {
            t->kind = IO_TARGET_CHECKPOINT;
            rc = open_checkpoint(path, t);
        } else {
            return st_error(ST_ERR_INVALID, "%s: a directory but neither a pack (no %s) nor a checkpoint (no config.json)", path,
                            ST_PACK_MANIFEST);
        }
        if (!rc && block_given && block != t->block)
            rc = st_error(ST_ERR_INVALID, "%s: --block %llu: a %s is read in its own expert extents of %llu bytes (drop --block)",
                          path, (unsigned long long)block, io_target_kind_name(t->kind), (unsigned long long)t->block);
        if (!rc) set_fio_region(t);
        if (rc) io_target_free(t);
        return rc;
    }
    t->kind = IO_TARGET_FILE;
    t->block = block;
    const uint64_t size = (uint64_t)sb.st_size;
    if ((rc = set_files(t, 1, &path, &size))) { io_target_free(t); return rc; }
    t->n_blocks = size / block;
    if (!t->n_blocks) {
        rc = st_error(ST_ERR_INVALID, "%s: %llu bytes, smaller than one %llu-byte block", path, (unsigned long long)size,
                      (unsigned long long)block);
        io_target_free(t);
        return rc;
    }
    t->fio_offset = 0;
    t->fio_size = t->n_blocks * block;
    return 0;
}
