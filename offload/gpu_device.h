/* The GPU device as the offload layer sees it: a const struct of function
 * pointers plus an opaque context (DESIGN.md "Backends"). Two implementations:
 *   cuda      over kernels/gpu.h (device memory, streams, events, st_gpu_expert_ffn);
 *   emulated  host memory standing in for the device, for tests and debugging
 *             without a GPU: copies are memcpy and every queued operation runs
 *             DEFERRED, only when the host waits (event sync, stream sync, or
 *             every other event_done query), so whoever uses it must not depend
 *             on when the device's work finishes. Its FFN is the kernels' host
 *             emulation (st_gpu_emulate_expert_ffn) where CUDA is compiled in
 *             and built, else the caller's CPU expert computation (host_ffn).
 * st_gpu_dev_open picks one: STRATA_GPU=emulate, else CUDA when a device is
 * present, else none (a reason, not an error).
 *
 * Knows bytes, streams and the FFN's plain arguments, never the model.
 * Threads: one owner thread per device (the engine's).
 */
#ifndef ST_OFFLOAD_GPU_DEVICE_H
#define ST_OFFLOAD_GPU_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/gpu.h"

typedef struct st_gpu_dev_ops {
    const char *name; /* "cuda", "emulated" */
    /* Device memory (*out NULL on failure). free: NULL-safe. */
    int (*alloc)(void *ctx, size_t bytes, void **out);
    void (*free)(void *ctx, void *dev);
    /* Streams (opaque); free: NULL-safe, waits for the stream's work first. */
    int (*stream_new)(void *ctx, void **out);
    void (*stream_free)(void *ctx, void *stream);
    int (*stream_sync)(void *ctx, void *stream);
    /* Asynchronous copies on a stream, ordered with its other work. The host
     * memory must stay valid and unchanged until the work has finished. */
    int (*copy_to_device)(void *ctx, void *dev, const void *host, size_t bytes, void *stream);
    int (*copy_to_host)(void *ctx, void *host, const void *dev, size_t bytes, void *stream);
    /* Page-lock host memory copies will read ([host, host + bytes), page-aligned;
     * read_only: a read-only mapping): without it async copies are staged by the
     * driver and do not overlap the host's work. 0 or an error (the caller goes on
     * with pageable copies). unregister: before that memory is freed. */
    int (*host_register)(void *ctx, void *host, size_t bytes, bool read_only);
    void (*host_unregister)(void *ctx, void *host);
    /* Events: record marks the stream's current end; done: 1 finished, 0 not
     * yet, < 0 error; sync: the host waits (and gets errors of the work). */
    int (*event_new)(void *ctx, void **out);
    void (*event_free)(void *ctx, void *event);
    int (*event_record)(void *ctx, void *event, void *stream);
    int (*event_done)(void *ctx, void *event);
    int (*event_sync)(void *ctx, void *event);
    /* One routed expert's FFN queued on the stream (kernels/gpu.h st_gpu_ffn:
     * device pointers, o not accumulated), and its scratch bytes. */
    int (*expert_ffn)(void *ctx, const st_gpu_ffn *f, void *stream);
    size_t (*ffn_scratch_bytes)(void *ctx, int64_t inter, int64_t n);
    void (*destroy)(void *ctx);
} st_gpu_dev_ops;

typedef struct st_gpu_dev {
    const st_gpu_dev_ops *ops;
    void *ctx;
} st_gpu_dev;

/* The CPU's own computation of one expert (host pointers), for the emulated
 * device when the kernels' emulation is not available: o (n, dim) exactly as
 * the CPU computes that expert (engine/moe.c). 0 or an error. */
typedef int (*st_gpu_host_ffn)(const st_gpu_ffn *f);

/* ---- the emulated device ---------------------------------------------------- */

typedef struct st_gpu_emu_stats {
    uint64_t allocated, peak; /* device bytes now / at most */
    uint64_t ops_queued, ops_run, deferred_runs; /* deferred_runs: waits that found work still queued */
    uint64_t ffn_kernel, ffn_host; /* FFNs run by the kernels' emulation / by host_ffn */
    uint64_t copied_pinned, copied_pageable; /* host->device bytes from registered / other host memory */
    int pinned_ranges;        /* host ranges registered now */
} st_gpu_emu_stats;

/* host_ffn: the fallback FFN (NULL: the kernels' emulation only, else
 * ST_ERR_UNSUPPORTED at the FFN). */
int st_gpu_dev_emulated_new(st_gpu_host_ffn host_ffn, st_gpu_dev **out);
/* 0 with *out filled, ST_ERR_INVALID when dev is not an emulated device. */
int st_gpu_emu_get_stats(const st_gpu_dev *dev, st_gpu_emu_stats *out);
/* Tests: every FFN's output is then scaled by 1.03125 (proves a comparison
 * notices results computed on the device). */
extern bool st_gpu_emu_perturb;
/* Tests: the emulated FFN never uses the kernels' emulation (host_ffn only). */
extern bool st_gpu_emu_host_only;
/* Tests: host_register fails (as the pinned-memory limit or a refused mapping would). */
extern bool st_gpu_emu_pin_fail;
/* Every host range an emulated device registered since the last reset, in order,
 * kept after the device is gone (tests check what was pinned and that each was
 * unregistered once). An emulated register refuses ranges that are not
 * page-aligned or overlap a registered one; register and unregister read every
 * page of the range (unregistering memory already freed faults, or ASan says so). */
typedef struct st_gpu_emu_pin {
    const void *p;
    size_t bytes;
    bool read_only;
    int unregistered; /* times host_unregister(p) was called for this registration */
} st_gpu_emu_pin;
int st_gpu_emu_pins(const st_gpu_emu_pin **out); /* count; *out valid until the next register or reset */
void st_gpu_emu_pins_reset(void);

/* ---- CUDA -------------------------------------------------------------------- */

/* The CUDA device `device` (made current). ST_ERR_UNSUPPORTED without one. */
int st_gpu_dev_cuda_new(int device, st_gpu_dev **out);

/* ---- choice ------------------------------------------------------------------- */

/* STRATA_GPU=emulate: the emulated device (with host_ffn); otherwise CUDA device
 * 0 when st_gpu_device_count() > 0; otherwise *out = NULL and *why (static
 * string) says why there is no GPU tier. STRATA_GPU=off: none. 0 or an error
 * (an unknown STRATA_GPU value, a CUDA device that fails to open). */
int st_gpu_dev_open(st_gpu_host_ffn host_ffn, st_gpu_dev **out, const char **why);
void st_gpu_dev_free(st_gpu_dev *dev); /* NULL-safe; destroys the context */

#endif
