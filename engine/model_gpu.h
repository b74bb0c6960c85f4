/* The model's GPU tier (offload/gpu_experts.h on the device offload/gpu_device.h
 * picks: STRATA_GPU=emulate, else CUDA when present): routed experts cached in
 * --gpu-mem of device memory and computed there; the rest stay on the DRAM and
 * NVMe tiers. Attached by the loader after the DRAM tier is in place. */
#ifndef ST_ENGINE_MODEL_GPU_H
#define ST_ENGINE_MODEL_GPU_H

#include <stddef.h>

#include "engine/model.h"
#include "offload/gpu_experts.h"

/* o->gpu_mem > 0: opens the device and makes the tier (m->experts.gpu); with no
 * device an info line says why and the run goes on without (0). 0 or an error
 * (a budget too small: the message names --gpu-mem and the least size). */
int st_model_gpu_attach(st_model *m, const st_model_opts *o);
/* Waits for the device, frees the tier and the device. NULL-safe. */
void st_model_gpu_detach(st_model *m);
/* 0 with *out, or ST_ERR_NOT_FOUND without a GPU tier. */
int st_model_gpu_stats(const st_model *m, st_gpu_tier_stats *out);
/* "GPU (emulated) 12 slots (3.1 MiB of --gpu-mem 4 MiB), hit 61.0% of 400, 35 misses computed there,
 * copied 2.0 MiB";
 * empty without a GPU tier. */
void st_model_gpu_summary(const st_model *m, char *buf, size_t len);

#endif
