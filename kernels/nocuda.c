/* GPU backend without CUDA (no nvcc, or NO_CUDA=1): implements kernels/gpu.h.
 * Reports no GPU with the reason "CUDA not compiled in"; every other call
 * returns ST_ERR_UNSUPPORTED with a message, every free accepts anything. */
#include "base/base.h"
#include "kernels/gpu.h"

#define NO_CUDA(what) st_error(ST_ERR_UNSUPPORTED, "%s: CUDA not compiled in (built without nvcc or with NO_CUDA=1)", what)

bool st_gpu_compiled(void) { return false; }

int st_gpu_device_count(const char **reason) {
    if (reason) *reason = "CUDA not compiled in";
    return 0;
}

int st_gpu_device_info(int device, st_gpu_info *out) { return NO_CUDA("GPU info"); }
int st_gpu_versions(int *runtime, int *driver) {
    if (runtime) *runtime = 0;
    if (driver) *driver = 0;
    return NO_CUDA("CUDA versions");
}
int st_gpu_set_device(int device) { return NO_CUDA("select GPU"); }

int st_gpu_stream_new(st_gpu_stream **out) {
    if (out) *out = NULL;
    return NO_CUDA("GPU stream");
}
void st_gpu_stream_free(st_gpu_stream *s) {}
int st_gpu_stream_sync(st_gpu_stream *s) { return NO_CUDA("GPU stream sync"); }

int st_gpu_event_new(st_gpu_event **out) {
    if (out) *out = NULL;
    return NO_CUDA("GPU event");
}
void st_gpu_event_free(st_gpu_event *e) {}
int st_gpu_event_record(st_gpu_event *e, st_gpu_stream *s) { return NO_CUDA("GPU event record"); }
int st_gpu_stream_wait(st_gpu_stream *s, st_gpu_event *e) { return NO_CUDA("GPU stream wait"); }
int st_gpu_event_done(st_gpu_event *e) { return NO_CUDA("GPU event query"); }
int st_gpu_event_sync(st_gpu_event *e) { return NO_CUDA("GPU event sync"); }

int st_gpu_malloc(size_t bytes, void **out) {
    if (out) *out = NULL;
    return NO_CUDA("GPU malloc");
}
void st_gpu_free(void *p) {}
int st_gpu_host_alloc(size_t bytes, void **out) {
    if (out) *out = NULL;
    return NO_CUDA("pinned host alloc");
}
void st_gpu_host_free(void *p) {}
int st_gpu_host_register(void *p, size_t bytes, bool read_only) { return NO_CUDA("pin host memory"); }
void st_gpu_host_unregister(void *p) {}

int st_gpu_copy_to_device(void *dst, const void *src, size_t bytes, st_gpu_stream *s) { return NO_CUDA("copy to GPU"); }
int st_gpu_copy_to_host(void *dst, const void *src, size_t bytes, st_gpu_stream *s) { return NO_CUDA("copy from GPU"); }
int st_gpu_copy_device(void *dst, const void *src, size_t bytes, st_gpu_stream *s) { return NO_CUDA("copy on GPU"); }
int st_gpu_memset(void *dst, int byte, size_t bytes, st_gpu_stream *s) { return NO_CUDA("GPU memset"); }

int st_gpu_gemv_fp8(const st_gpu_gemv *g, st_gpu_stream *s) { return NO_CUDA("FP8 GEMV"); }
int st_gpu_gemv_fp4(const st_gpu_gemv *g, st_gpu_stream *s) { return NO_CUDA("FP4 GEMV"); }
int st_gpu_emulate_gemv_fp8(const st_gpu_gemv *g) { return NO_CUDA("FP8 GEMV emulation"); }
int st_gpu_emulate_gemv_fp4(const st_gpu_gemv *g) { return NO_CUDA("FP4 GEMV emulation"); }

size_t st_gpu_ffn_scratch_bytes(int64_t inter, int64_t n) { return 0; }
int st_gpu_expert_ffn(const st_gpu_ffn *f, st_gpu_stream *s) { return NO_CUDA("GPU expert FFN"); }
int st_gpu_emulate_expert_ffn(const st_gpu_ffn *f) { return NO_CUDA("GPU expert FFN emulation"); }
