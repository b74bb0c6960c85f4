/* The model's routed experts served by the offload layer (offload/expert_source.h):
 * the loader attaches a stream when a DRAM budget leaves too little room for
 * every expert, or, on several NUMA nodes, to hold every expert in the memory
 * of the node that computes it; st_model.experts then reads them with O_DIRECT
 * into slots and predicts the next layer's experts from the current hidden state. */
#ifndef ST_ENGINE_MODEL_STREAM_H
#define ST_ENGINE_MODEL_STREAM_H

#include <stdio.h>

#include "engine/config.h"
#include "engine/model.h"
#include "engine/tensor_names.h"
#include "offload/expert_source.h"

typedef struct st_model_stream st_model_stream;

/* Streams every routed expert of m from ck: cache_bytes of slots (or n_slots)
 * from the options; the experts' descriptors in m stop pointing into the
 * checkpoint's mapping (data and scale become NULL: nothing may read them).
 * Sets m->experts. 0 or an error naming the budget / file. */
int st_model_stream_attach(st_model *m, st_checkpoint *ck, const st_config *cfg, const st_model_opts *o,
                           uint64_t cache_bytes, st_model_stream **out);
void st_model_stream_free(st_model_stream *ms);
/* Reads every routed expert into the slots now, layer by layer (the streams of
 * a model whose experts all fit: each lands on the NUMA node that computes it).
 * 0 or a read error naming the file. */
int st_model_stream_preload(st_model_stream *ms, bool progress);

/* The offload numbers of a model: 0 and *out filled, or ST_ERR_NOT_FOUND when
 * every expert is resident (no stream). */
int st_model_offload_stats(const st_model *m, st_stream_stats *out);
/* The per-NUMA-node expert streams (offload/expert_nodes.h), NULL without a stream. */
struct st_expert_nodes *st_model_expert_nodes(const st_model *m);
/* One line: "experts: N slots of S (C of E expert bytes), hit 93.1%, late 2.0%,
 * stall 4.1% of decode, wasted 1.2 MiB, read 88 MiB (io_uring, O_DIRECT)";
 * "all weights in DRAM" without a stream. elapsed_s: the run time the stall is
 * a fraction of (0: not shown). */
void st_model_offload_summary(const st_model *m, double elapsed_s, char *buf, size_t len);

#endif
