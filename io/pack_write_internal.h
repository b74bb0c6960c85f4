/* The pack writer's state, shared by io/pack_write.c (layout, data, manifest)
 * and io/pack_files.c (temporary and stripe names, publishing). Nothing else
 * includes this. */
#ifndef ST_IO_PACK_WRITE_INTERNAL_H
#define ST_IO_PACK_WRITE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <xxhash.h>

#include "io/pack.h"

typedef struct wt_extent {
    char *name;
    st_pack_extent_kind kind;
    int layer, expert, file;
    int first, n;
    uint64_t offset, length;
    XXH3_state_t *hash;
} wt_extent;

typedef struct wt_tensor {
    char *name;
    st_sft_dtype dtype;
    int ndim;
    int64_t shape[ST_PACK_MAX_DIMS];
    int extent;
    uint64_t offset, nbytes, xxh3;
} wt_tensor;

typedef struct wt_file {
    int fd;
    char *path;       /* written here (inside the temporary directory, or "<final>.tmp.<pid>") */
    char *final;      /* stripe files: the name it gets at finish (NULL: inside the pack directory) */
    char *record;     /* the name in the manifest: "data-K.bin" or the absolute final path */
    bool renamed;     /* final exists now (undo on a failed finish) */
    uint64_t size;    /* planned */
    uint64_t pos;     /* written */
    uint64_t flushed; /* bytes handed to writeback and dropped from the cache */
} wt_file;

struct st_pack_writer {
    char *dir, *tmp;
    st_pack_writer_opts opts;
    wt_extent *ext;
    int n_ext, cap_ext;
    wt_tensor *t;
    int n_t, cap_t;
    wt_file *files;
    int n_files;
    bool frozen;
    int cur;               /* tensor receiving the next byte */
    uint64_t cur_done;     /* its bytes written */
    XXH3_state_t *thash;   /* current tensor's hash */
    uint64_t data_written; /* tensor bytes written (for the fault hooks) */
    uint64_t data_bytes;
    uint64_t pack_id;      /* random, non-zero: header pack_id and stripe file names */
};

void pkw_rm_tree(const char *path);
int pkw_fsync_path(const char *path, bool dir);
char *pkw_parent_of(const char *path);      /* malloc'd, NULL when out of memory */
void pkw_remove_stale_tmp(const char *path); /* "<path>.tmp.<pid>" of dead processes */
char *pkw_dup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Paths of data file i (w->files[i].path/final/record); checks a stripe directory. */
int pkw_name_file(st_pack_writer *w, int i);
/* Data and manifest are on disk in the temporary names: rename everything into
 * place (stripe files, then the directory), fsync the parents, remove what a
 * --force replaced. 0 or ST_ERR_IO / ST_ERR_NOMEM (the previous pack is put back). */
int pkw_publish(st_pack_writer *w);

#endif
