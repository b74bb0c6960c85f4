/* pack internals shared by the reader (pack.c) and the writer (pack_write.c):
 * the on-disk record layouts of the manifest tables. */
#ifndef ST_IO_PACK_INTERNAL_H
#define ST_IO_PACK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "io/pack.h"

typedef struct pk_file_rec {
    uint32_t name_off, name_len;
    uint64_t size;
} pk_file_rec;

typedef struct pk_extent_rec {
    uint32_t name_off, name_len, file, kind;
    int32_t layer, expert;
    uint32_t first_tensor, n_tensors;
    uint64_t offset, length, xxh3;
} pk_extent_rec;

typedef struct pk_tensor_rec {
    uint32_t name_off, name_len, extent;
    uint16_t dtype, ndim;
    int64_t shape[ST_PACK_MAX_DIMS];
    uint64_t offset, nbytes, xxh3;
} pk_tensor_rec;

_Static_assert(sizeof(st_pack_header) == 104, "pack header layout");
_Static_assert(sizeof(pk_file_rec) == 16, "pack file record layout");
_Static_assert(sizeof(pk_extent_rec) == 56, "pack extent record layout");
_Static_assert(sizeof(pk_tensor_rec) == 104, "pack tensor record layout");

/* Bytes of the header covered by header_xxh3. */
#define PK_HEADER_HASHED offsetof(st_pack_header, header_xxh3)

/* The manifest of `dir`, checked, with its data files' paths but nothing
 * opened or checked against them (st_pack_file_count / st_pack_file_path only):
 * the writer's --force uses it to find an old, possibly broken, pack's stripe
 * files. Close with st_pack_close. */
int pk_open_names(const char *dir, st_pack **out);

/* "data-K.bin" */
#define PK_DATA_NAME_FMT "data-%d.bin"

#endif
