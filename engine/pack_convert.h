/* pack_convert: a checkpoint (official or transformers layout, or a pack) to a
 * pack (io/pack.h), streaming. Decides what goes where: every tensor under its
 * canonical official name; each routed expert (block, e) is one extent with
 * w1.weight, w1.scale, w3.weight, w3.scale, w2.weight, w2.scale; the other
 * tensors grouped per block ("layers.L", "mtp.K") plus one "global" group
 * (embed, head, norm, hc_head_*), in the order global, then per block its
 * group followed by its experts. Blocks are numbered as the config numbers
 * them: mtp.K is block n_layers + K. */
#ifndef ST_ENGINE_PACK_CONVERT_H
#define ST_ENGINE_PACK_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct st_convert_opts {
    int split;             /* data files in the pack directory (<= 1: one) */
    const char *const *stripe_dirs; /* data files 1.. in these directories (one each; see io/pack.h) */
    int n_stripe_dirs;
    bool force;            /* replace an existing output */
    bool quiet;            /* no progress bar, no warnings about skipped tensors */
    uint64_t fault_kill_at, fault_fail_at; /* tests: see st_pack_writer_opts */
} st_convert_opts;

typedef struct st_convert_stats {
    int tensors, extents, experts, skipped; /* skipped: source tensors with no official name */
    uint64_t tensor_bytes, data_bytes;      /* payload, and data files with padding */
    double seconds;
} st_convert_stats;

/* Convert `in` (a directory with config.json) to a pack at `out`. The source
 * must pass the tensor checker for its config. Copies config.json and the
 * tokenizer files present. 0 or an error naming the file / tensor; on error
 * (or a kill) no directory named `out` is created. stats may be NULL. */
int st_pack_convert(const char *in, const char *out, const st_convert_opts *opts, st_convert_stats *stats);

/* Parse "kill@BYTES" / "fail@BYTES" (STRATA_PACK_FAULT) into opts. 0 or ST_ERR_INVALID. */
int st_convert_parse_fault(const char *spec, st_convert_opts *opts);

#endif
