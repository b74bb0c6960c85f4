/* What `strata bench io` reads: a plain FILE (block-aligned random blocks), a
 * PACK (its own routed-expert extents, one read each, over all its data
 * files) or a checkpoint directory (each routed expert's safetensors bytes,
 * widened to 4096 and read as one block). Also the region fio reads so both
 * engines cover the same bytes. */
#ifndef ST_BENCH_IO_TARGET_H
#define ST_BENCH_IO_TARGET_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { IO_TARGET_FILE, IO_TARGET_PACK, IO_TARGET_CHECKPOINT } io_target_kind;

typedef struct io_target {
    io_target_kind kind;
    int n_files;
    char **paths;          /* n_files, owned */
    uint64_t *file_bytes;  /* n_files */
    uint64_t block;        /* bytes of every read: the expert extent size (PACK, CHECKPOINT) */
    /* reads: n_extents (file, offset) pairs; FILE mode has none and reads
     * block-aligned offsets [0, n_blocks * block) of file 0 */
    int n_extents;
    int *ext_file;
    uint64_t *ext_offset;
    uint64_t n_blocks;
    int skipped;           /* experts left out (other length, spanning shards, ...) */
    /* fio: --offset=fio_offset --size=n_files * fio_size over every file (fio splits size evenly) */
    uint64_t fio_offset, fio_size;
} io_target;

/* Classifies `path` and lists its reads. block: the FILE mode block (PACK and
 * CHECKPOINT use their expert size; a different non-zero value is refused
 * there unless it equals it). 0 or an error naming the path. */
int io_target_open(const char *path, uint64_t block, bool block_given, io_target *t);
void io_target_free(io_target *t);
/* The read for random number r. */
void io_target_pick(const io_target *t, uint64_t r, int *file, uint64_t *offset);
const char *io_target_kind_name(io_target_kind k);

#endif
