/* The CUDA device of offload/gpu_device.h (thin wrappers over kernels/gpu.h,
 * which owns every CUDA call) and the choice of device for a run
 * (STRATA_GPU=emulate|off, else CUDA when present). The emulated device is
 * offload/gpu_device_emu.c. */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "offload/gpu_device.h"

static int cu_alloc(void *ctx, size_t bytes, void **out) {
    (void)ctx;
    return st_gpu_malloc(bytes, out);
}
static void cu_free(void *ctx, void *p) {
    (void)ctx;
    st_gpu_free(p);
}
static int cu_stream_new(void *ctx, void **out) {
    (void)ctx;
    return st_gpu_stream_new((st_gpu_stream **)out);
}
static int cu_stream_sync(void *ctx, void *s) {
    (void)ctx;
    return st_gpu_stream_sync(s);
}
static void cu_stream_free(void *ctx, void *s) {
    (void)ctx;
    if (!s) return;
    if (st_gpu_stream_sync(s)) ST_WARN("GPU stream: %s", st_last_error());
    st_gpu_stream_free(s);
}
static int cu_copy_to_device(void *ctx, void *dev, const void *host, size_t bytes, void *s) {
    (void)ctx;
    return st_gpu_copy_to_device(dev, host, bytes, s);
}
static int cu_copy_to_host(void *ctx, void *host, const void *dev, size_t bytes, void *s) {
    (void)ctx;
    return st_gpu_copy_to_host(host, dev, bytes, s);
}
static int cu_host_register(void *ctx, void *host, size_t bytes, bool read_only) {
    (void)ctx;
    return st_gpu_host_register(host, bytes, read_only);
}
static void cu_host_unregister(void *ctx, void *host) {
    (void)ctx;
    st_gpu_host_unregister(host);
}
static int cu_event_new(void *ctx, void **out) {
    (void)ctx;
    return st_gpu_event_new((st_gpu_event **)out);
}
static void cu_event_free(void *ctx, void *e) {
    (void)ctx;
    st_gpu_event_free(e);
}
static int cu_event_record(void *ctx, void *e, void *s) {
    (void)ctx;
    return st_gpu_event_record(e, s);
}
static int cu_event_done(void *ctx, void *e) {
    (void)ctx;
    return st_gpu_event_done(e);
}
static int cu_event_sync(void *ctx, void *e) {
    (void)ctx;
    return st_gpu_event_sync(e);
}
static int cu_expert_ffn(void *ctx, const st_gpu_ffn *f, void *s) {
    (void)ctx;
    return st_gpu_expert_ffn(f, s);
}
static size_t cu_scratch_bytes(void *ctx, int64_t inter, int64_t n) {
    (void)ctx;
    return st_gpu_ffn_scratch_bytes(inter, n);
}
static void cu_destroy(void *ctx) { (void)ctx; }

static const st_gpu_dev_ops cuda_ops = {
    .name = "cuda",
    .alloc = cu_alloc, .free = cu_free,
    .stream_new = cu_stream_new, .stream_free = cu_stream_free, .stream_sync = cu_stream_sync,
    .copy_to_device = cu_copy_to_device, .copy_to_host = cu_copy_to_host,
    .host_register = cu_host_register, .host_unregister = cu_host_unregister,
    .event_new = cu_event_new, .event_free = cu_event_free, .event_record = cu_event_record,
    .event_done = cu_event_done, .event_sync = cu_event_sync,
    .expert_ffn = cu_expert_ffn, .ffn_scratch_bytes = cu_scratch_bytes, .destroy = cu_destroy,
};

int st_gpu_dev_cuda_new(int device, st_gpu_dev **out) {
    *out = NULL;
    const char *why;
    int n = st_gpu_device_count(&why);
    if (device < 0 || device >= n)
        return st_error(ST_ERR_UNSUPPORTED, "CUDA device %d: %s", device, n ? "no such device" : why);
    int rc = st_gpu_set_device(device);
    if (rc) return rc;
    st_gpu_dev *dev = calloc(1, sizeof *dev);
    if (!dev) return st_error(ST_ERR_NOMEM, "GPU device: out of memory");
    *dev = (st_gpu_dev){.ops = &cuda_ops, .ctx = NULL};
    *out = dev;
    return 0;
}

int st_gpu_dev_open(st_gpu_host_ffn host_ffn, st_gpu_dev **out, const char **why) {
    *out = NULL;
    *why = "";
    const char *env = getenv("STRATA_GPU");
    if (env && *env) {
        if (!strcmp(env, "emulate")) return st_gpu_dev_emulated_new(host_ffn, out);
        if (!strcmp(env, "off")) { *why = "STRATA_GPU=off"; return 0; }
        if (strcmp(env, "cuda"))
            return st_error(ST_ERR_INVALID, "STRATA_GPU must be emulate, cuda or off, not '%s'", env);
    }
    if (st_gpu_device_count(why) <= 0) return 0;
    return st_gpu_dev_cuda_new(0, out);
}

void st_gpu_dev_free(st_gpu_dev *dev) {
    if (!dev) return;
    dev->ops->destroy(dev->ctx);
    free(dev);
}
