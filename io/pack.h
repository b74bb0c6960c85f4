/* pack: strata's on-disk weight format, built for streaming experts with
 * O_DIRECT. Knows names, dtypes, shapes, extents and bytes; nothing about
 * models (engine/pack_convert.c decides which tensors go where).
 *
 * A pack is a directory:
 *   PACK/pack.manifest   binary manifest (below), written last
 *   PACK/data-K.bin      data files (one, or N with --split N)
 *   PACK/config.json, tokenizer files: copied from the source
 * A pack striped over devices (--stripe DIR1,DIR2,...) keeps data-0.bin in
 * PACK and has data file k >= 1 at DIRk/<name of PACK>.<ID>.data-k.bin (ID:
 * the low 32 bits of the header's pack_id in hex, so two packs of the same
 * name striped into one directory never share or overwrite a file); the
 * manifest's file record then holds that absolute path (plain names are
 * relative to PACK). Groups are in file 0, routed experts round-robin over
 * all files (expert extent i in file i mod n_files).
 *
 * Data: a sequence of extents. Every extent starts on a 4096-byte boundary of
 * its data file and its length is padded with zeros to a multiple of 4096, so
 * one O_DIRECT read brings a whole extent. Inside an extent every tensor
 * starts on a 64-byte boundary, in declaration order. An extent is either a
 * GROUP (a layer's non-expert tensors, or the global ones) or an EXPERT (one
 * routed expert: w1.weight, w1.scale, w3.weight, w3.scale, w2.weight,
 * w2.scale back to back).
 *
 * Manifest (little-endian, version ST_PACK_VERSION):
 *   header (st_pack_header below: magic "STRATAPK", version, sizes, counts,
 *           xxh3 of the body, xxh3 of the header itself)
 *   files   n_files   x {u32 name_off, u32 name_len, u64 size}  (name: plain, or absolute for a stripe)
 *   extents n_extents x {u32 name_off, name_len, file, kind; i32 layer, expert;
 *                        u32 first_tensor, n_tensors; u64 offset, length, xxh3}
 *   tensors n_tensors x {u32 name_off, name_len, extent; u16 dtype, ndim;
 *                        i64 shape[8]; u64 offset, nbytes, xxh3}
 *   strings (each name NUL-terminated; name_off/len index this area)
 * Offsets are absolute in the extent's data file. Checksums are XXH3-64 of a
 * tensor's bytes and of an extent's whole length (padding included).
 *
 * Reader: nothing is trusted before it is checked (header and body
 * checksums, magic, version, every count and offset against the manifest's
 * and the data files' real sizes, shapes against byte counts, tensors inside
 * their extent in order, extents aligned and not overlapping, unique names
 * and expert keys). Data files are mapped read-only on first use for the CPU
 * path; (file, offset, length) serve pread / io_uring streaming. */
#ifndef ST_IO_PACK_H
#define ST_IO_PACK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "io/safetensors.h"

#define ST_PACK_MAGIC "STRATAPK"
#define ST_PACK_VERSION 1u
#define ST_PACK_ALIGN 4096u       /* extent start and length */
#define ST_PACK_TENSOR_ALIGN 64u  /* tensor start inside an extent */
#define ST_PACK_MANIFEST "pack.manifest"
#define ST_PACK_MAX_DIMS 8

typedef struct st_pack_header {
    char magic[8];            /* "STRATAPK" */
    uint32_t version;         /* ST_PACK_VERSION */
    uint32_t header_bytes;    /* sizeof(st_pack_header) */
    uint64_t manifest_bytes;  /* size of the whole manifest file */
    uint32_t alignment;       /* ST_PACK_ALIGN */
    uint32_t n_files, n_extents, n_tensors;
    uint64_t strings_bytes;
    uint64_t data_bytes;      /* sum of the data files' sizes */
    uint64_t pack_id;         /* random, set at conversion (0: older packs); stripe file names carry it */
    uint64_t reserved[3];
    uint64_t body_xxh3;       /* XXH3-64 of bytes [header_bytes, manifest_bytes) */
    uint64_t header_xxh3;     /* XXH3-64 of the header up to this field */
} st_pack_header;

typedef enum st_pack_extent_kind {
    ST_PACK_GROUP = 0,  /* non-expert tensors of one layer (layer >= 0) or global (layer -1) */
    ST_PACK_EXPERT = 1, /* one routed expert (layer, expert) */
} st_pack_extent_kind;

typedef struct st_pack_extent {
    const char *name;   /* "global", "layers.3", "layers.3.ffn.experts.7", ... (owned by the pack) */
    st_pack_extent_kind kind;
    int layer, expert;  /* -1 where not applicable */
    int file;
    uint64_t offset, length; /* 4096-aligned */
    uint64_t xxh3;
    int first_tensor, n_tensors; /* tensors [first, first + n) of the table, in offset order */
} st_pack_extent;

typedef struct st_pack_tensor {
    const char *name;   /* owned by the pack */
    st_sft_dtype dtype;
    int ndim;
    int64_t shape[ST_PACK_MAX_DIMS];
    int extent, file;
    uint64_t offset;    /* absolute in the data file, 64-aligned */
    uint64_t nbytes;
    uint64_t xxh3;
} st_pack_tensor;

typedef struct st_pack st_pack;

/* True when `path` is a directory holding a pack manifest. */
bool st_pack_is_pack(const char *path);

/* Open and check a pack directory. 0, ST_ERR_NOT_FOUND (no manifest),
 * ST_ERR_IO, ST_ERR_FORMAT (corrupt / truncated, message names the file and
 * the field, expected vs found), ST_ERR_UNSUPPORTED (other version),
 * ST_ERR_NOMEM. Data bytes are not read (see st_pack_verify). */
int st_pack_open(const char *dir, st_pack **out);
void st_pack_close(st_pack *p); /* NULL is fine */

const char *st_pack_dir(const st_pack *p);
const st_pack_header *st_pack_get_header(const st_pack *p);

int st_pack_file_count(const st_pack *p);
const char *st_pack_file_path(const st_pack *p, int file); /* full path */
uint64_t st_pack_file_size(const st_pack *p, int file);
int st_pack_file_fd(const st_pack *p, int file);           /* O_RDONLY, owned by the pack */

int st_pack_tensor_count(const st_pack *p);
const st_pack_tensor *st_pack_tensor_at(const st_pack *p, int i);
const st_pack_tensor *st_pack_find(const st_pack *p, const char *name); /* NULL when absent */

int st_pack_extent_count(const st_pack *p);
const st_pack_extent *st_pack_extent_at(const st_pack *p, int i);
/* The extent of routed expert (layer, expert), NULL when absent. To stream an
 * expert: one read of [offset, offset + length) of file `file` (aligned for
 * O_DIRECT) into buf; tensor first_tensor + k is then at
 * buf + (tensor->offset - extent->offset). */
const st_pack_extent *st_pack_find_expert(const st_pack *p, int layer, int expert);

/* Pointer to the tensor's first byte in a read-only mapping of its data file
 * (mapped on first use, valid until close). 0 or ST_ERR_IO. */
int st_pack_data(st_pack *p, const st_pack_tensor *t, const void **out);
/* Copy len bytes from byte `off` of the tensor with pread. 0, ST_ERR_INVALID
 * (range outside the tensor), ST_ERR_IO (errno or unexpected end of file). */
int st_pack_pread(const st_pack *p, const st_pack_tensor *t, uint64_t off, void *buf, uint64_t len);

/* Read every extent and check every tensor's and extent's XXH3. Problems are
 * printed one per line to `report` when non-NULL; the error message names the
 * count and the first ones ("data-0.bin: tensor layers.0...w1.weight at offset
 * N: checksum 0x.. expected 0x.."). Progress bar when show_progress and
 * stderr is a terminal. 0, ST_ERR_FORMAT (mismatch), ST_ERR_IO. */
int st_pack_verify(st_pack *p, FILE *report, bool show_progress);

/* ---- writer ---- */

typedef struct st_pack_writer st_pack_writer;

typedef struct st_pack_writer_opts {
    int n_files;           /* data files in the pack directory (>= 1; 0 means 1) */
    /* striping over devices: data file 0 in the pack directory plus one data
     * file "<stripe_dirs[k]>/<pack name>.<id>.data-<k+1>.bin" per directory (n_files
     * must then be 0 or 1); an existing file there is refused unless force */
    const char *const *stripe_dirs;
    int n_stripe_dirs;
    bool force;            /* replace an existing pack at the path */
    /* tests: after this many data bytes, kill the process (SIGKILL) or fail
     * with ST_ERR_IO. 0: off. */
    uint64_t fault_kill_at, fault_fail_at;
} st_pack_writer_opts;

/* Start a pack at `dir`, written in "<dir>.tmp.<pid>" and renamed when
 * finished (stripe files: "<final>.tmp.<pid>", renamed just before the
 * directory). Refuses an existing `dir` (or stripe file) unless opts->force;
 * ST_ERR_NOT_FOUND / ST_ERR_INVALID for a stripe directory that is missing or
 * not a directory. */
int st_pack_writer_new(const char *dir, const st_pack_writer_opts *opts, st_pack_writer **out);
/* Copy a small file (config, tokenizer) into the pack under `name`. */
int st_pack_writer_copy_file(st_pack_writer *w, const char *src_path, const char *name);
/* Declaration phase: open an extent, then declare its tensors in order. */
int st_pack_writer_begin_extent(st_pack_writer *w, st_pack_extent_kind kind, int layer, int expert, const char *name);
int st_pack_writer_declare(st_pack_writer *w, const char *name, st_sft_dtype dt, int ndim, const int64_t *shape);
/* Total bytes of the data files (padding included); freezes the layout. */
uint64_t st_pack_writer_data_bytes(st_pack_writer *w);
/* Data phase: the next len bytes of the declared tensors, in declaration order
 * (any chunking; may span tensors). Writing more than declared is refused. */
int st_pack_writer_write(st_pack_writer *w, const void *data, size_t len);
/* Name of the tensor the next byte belongs to (NULL when all are written). */
const char *st_pack_writer_current(const st_pack_writer *w);
/* Check every byte was written, fsync the data, write the manifest, fsync,
 * rename the directory into place and fsync its parent. Frees the writer; on
 * error the temporary directory is removed. */
int st_pack_writer_finish(st_pack_writer *w);
/* Remove the temporary directory and free. NULL is fine. */
void st_pack_writer_abort(st_pack_writer *w);

#endif
