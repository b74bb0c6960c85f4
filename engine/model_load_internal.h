/* Between model_load.c (config, binding, expert placement) and
 * model_resident.c (the weights that stay in DRAM): the loader's state.
 * Internal to engine/. */
#ifndef ST_ENGINE_MODEL_LOAD_INTERNAL_H
#define ST_ENGINE_MODEL_LOAD_INTERNAL_H

#include "engine/config.h"
#include "engine/model.h"
#include "engine/model_stream.h"
#include "io/safetensors.h"

/* A dense matrix copied out of the mapping (st_loader_make_resident), freed with the model. */
typedef struct dram_copy { void *p; uint64_t bytes; } dram_copy;

typedef struct loader {
    st_config cfg;
    st_checkpoint *ck;
    void **owned; /* buffers to free */
    int n_owned, cap_owned;
    st_model_stream *stream; /* routed experts from the NVMe tier (NULL: all resident) */
    struct dram_copy *copies; /* dense matrices copied out of the mapping (st_loader_make_resident) */
    int n_copies, cap_copies;
} loader;

/* Keeps p (malloc'ed) until the model is freed. */
int st_loader_own(loader *ld, void *p);
/* Copies the dense matrices into huge-page DRAM (split over the NUMA teams'
 * nodes when the pool has teams) and populates what stays mapped. */
int st_loader_make_resident(st_model *m, loader *ld, const st_model_opts *o);

#endif
