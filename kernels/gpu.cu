/* GPU backend with CUDA: implements kernels/gpu.h.
 *
 * Owns device detection (cached, never an error), device memory, streams,
 * copies, and the argument checks of every op before its launcher runs. Every
 * CUDA call goes through CUDA_CHECK. Must never abort or print when there is no
 * driver or no device: that is the normal state of a CPU-only machine.
 */
#include <stdio.h>

#include "kernels/common.cuh"
#include "kernels/gemv_fp4.cuh"
#include "kernels/gemv_fp8.cuh"

int st_cuda_fail(cudaError_t err, const char *stmt, const char *file, int line) {
    int status;
    switch (err) {
    case cudaErrorMemoryAllocation: status = ST_ERR_NOMEM; break;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidResourceHandle: status = ST_ERR_INVALID; break;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion: status = ST_ERR_UNSUPPORTED; break;
    default: status = ST_ERR_INTERNAL; break;
    }
    (void)cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    return st_error(status, "%s:%d: %s: %s (%s)", file, line, stmt, cudaGetErrorName(err), cudaGetErrorString(err));
}

namespace {

struct gpu_probe {
    int count;
    char reason[160];
};

gpu_probe probe_devices() {
    gpu_probe p = {0, ""};
    cudaError_t err = cudaGetDeviceCount(&p.count);
    if (err == cudaSuccess && p.count > 0) return p;
    p.count = 0;
    if (err == cudaSuccess || err == cudaErrorNoDevice) snprintf(p.reason, sizeof p.reason, "no CUDA device");
    else if (err == cudaErrorInsufficientDriver)
        snprintf(p.reason, sizeof p.reason, "no CUDA driver (or one older than the runtime)");
    else snprintf(p.reason, sizeof p.reason, "CUDA unavailable: %s (%s)", cudaGetErrorName(err), cudaGetErrorString(err));
    (void)cudaGetLastError();
    return p;
}

const gpu_probe &probe() {
    static const gpu_probe p = probe_devices(); /* C++11: initialised once, thread-safe */
    return p;
}

int need_gpu(const char *what) {
    if (probe().count > 0) return 0;
    return st_error(ST_ERR_UNSUPPORTED, "%s: no GPU (%s)", what, probe().reason);
}

cudaStream_t as_cuda(st_gpu_stream *s) { return reinterpret_cast<cudaStream_t>(s); }

/* Checks a GEMV request and fills in packed strides. fp4: FP4 rules, else FP8. */
int resolve_gemv(const st_gpu_gemv *g, bool fp4, st_gpu_gemv *out) {
    const char *op = fp4 ? "FP4 GEMV" : "FP8 GEMV";
    if (!g) return st_error(ST_ERR_INVALID, "%s: no arguments (NULL)", op);
    if (g->rows < 0 || g->cols < 0)
        return st_error(ST_ERR_INVALID, "%s: shape (%lld, %lld): expected non-negative rows and cols", op,
                        (long long)g->rows, (long long)g->cols);
    if (fp4 && g->cols % 32 != 0)
        return st_error(ST_ERR_INVALID, "%s: cols = %lld, expected a multiple of 32 (one scale per 32 columns)", op,
                        (long long)g->cols);
    if (fp4 && g->scale_f32) return st_error(ST_ERR_INVALID, "%s: F32 scales given, FP4 scales are ue8m0", op);
    *out = *g;
    if (g->rows == 0) return 0;
    if (!g->y) return st_error(ST_ERR_INVALID, "%s: y is NULL", op);
    if (g->cols == 0) return 0;
    if (!g->w || !g->scale || !g->x) return st_error(ST_ERR_INVALID, "%s: w, scale or x is NULL", op);
    const int64_t row_bytes = fp4 ? g->cols / 2 : g->cols;
    const int64_t scale_cols = fp4 ? g->cols / 32 : (g->cols + 127) / 128;
    if (g->w_stride != 0 && g->w_stride < row_bytes)
        return st_error(ST_ERR_INVALID, "%s: w_stride %lld bytes is shorter than a row (%lld bytes)", op,
                        (long long)g->w_stride, (long long)row_bytes);
    if (g->scale_stride != 0 && g->scale_stride < scale_cols)
        return st_error(ST_ERR_INVALID, "%s: scale_stride %lld is shorter than a scale row (%lld)", op,
                        (long long)g->scale_stride, (long long)scale_cols);
    if (g->rows > (int64_t)1 << 32)
        return st_error(ST_ERR_INVALID, "%s: %lld rows is more than one launch covers", op, (long long)g->rows);
    if (g->scale_f32 && ((uintptr_t)g->scale % 4) != 0)
        return st_error(ST_ERR_INVALID, "%s: F32 scales are not 4-byte aligned", op);
    if (((uintptr_t)g->x % 4) != 0 || ((uintptr_t)g->y % 4) != 0)
        return st_error(ST_ERR_INVALID, "%s: x or y is not 4-byte aligned", op);
    out->w_stride = g->w_stride ? g->w_stride : row_bytes;
    out->scale_stride = g->scale_stride ? g->scale_stride : scale_cols;
    return 0;
}

} // namespace

extern "C" {

bool st_gpu_compiled(void) { return true; }

int st_gpu_device_count(const char **reason) {
    const gpu_probe &p = probe();
    if (reason) *reason = p.reason;
    return p.count;
}

int st_gpu_versions(int *runtime, int *driver) {
    int r = 0, d = 0;
    CUDA_CHECK(cudaRuntimeGetVersion(&r));
    if (cudaDriverGetVersion(&d) != cudaSuccess) d = 0; /* no driver: 0, not an error */
    if (runtime) *runtime = r;
    if (driver) *driver = d;
    return 0;
}

int st_gpu_device_info(int device, st_gpu_info *out) {
    int rc = need_gpu("GPU info");
    if (rc) return rc;
    if (!out) return st_error(ST_ERR_INVALID, "GPU info: output is NULL");
    if (device < 0 || device >= probe().count)
        return st_error(ST_ERR_INVALID, "GPU info: device %d, expected 0..%d", device, probe().count - 1);
    memset(out, 0, sizeof *out);
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->multiprocessors = prop.multiProcessorCount;
    out->total_bytes = prop.totalGlobalMem;
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrGlobalMemoryBusWidth, device) == cudaSuccess) out->mem_bus_bits = (uint64_t)v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, device) == cudaSuccess) out->mem_clock_khz = v;
    (void)cudaGetLastError();
    int prev = 0;
    CUDA_CHECK(cudaGetDevice(&prev));
    CUDA_CHECK(cudaSetDevice(device));
    size_t free_b = 0, total_b = 0;
    cudaError_t err = cudaMemGetInfo(&free_b, &total_b);
    CUDA_CHECK(cudaSetDevice(prev));
    CUDA_CHECK(err);
    out->free_bytes = free_b;
    return st_gpu_versions(&out->runtime_version, &out->driver_version);
}

int st_gpu_set_device(int device) {
    int rc = need_gpu("select GPU");
    if (rc) return rc;
    if (device < 0 || device >= probe().count)
        return st_error(ST_ERR_INVALID, "select GPU: device %d, expected 0..%d", device, probe().count - 1);
    CUDA_CHECK(cudaSetDevice(device));
    return 0;
}

int st_gpu_stream_new(st_gpu_stream **out) {
    if (!out) return st_error(ST_ERR_INVALID, "GPU stream: output is NULL");
    *out = NULL;
    int rc = need_gpu("GPU stream");
    if (rc) return rc;
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *out = reinterpret_cast<st_gpu_stream *>(s);
    return 0;
}

void st_gpu_stream_free(st_gpu_stream *s) {
    if (!s) return;
    CUDA_WARN(cudaStreamDestroy(as_cuda(s)));
}

int st_gpu_stream_sync(st_gpu_stream *s) {
    int rc = need_gpu("GPU stream sync");
    if (rc) return rc;
    CUDA_CHECK(cudaStreamSynchronize(as_cuda(s)));
    return 0;
}

static cudaEvent_t as_event(st_gpu_event *e) { return reinterpret_cast<cudaEvent_t>(e); }

int st_gpu_event_new(st_gpu_event **out) {
    if (!out) return st_error(ST_ERR_INVALID, "GPU event: output is NULL");
    *out = NULL;
    int rc = need_gpu("GPU event");
    if (rc) return rc;
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    *out = reinterpret_cast<st_gpu_event *>(e);
    return 0;
}

void st_gpu_event_free(st_gpu_event *e) {
    if (e) CUDA_WARN(cudaEventDestroy(as_event(e)));
}

int st_gpu_event_record(st_gpu_event *e, st_gpu_stream *s) {
    int rc = need_gpu("GPU event record");
    if (rc) return rc;
    if (!e) return st_error(ST_ERR_INVALID, "GPU event record: event is NULL");
    CUDA_CHECK(cudaEventRecord(as_event(e), as_cuda(s)));
    return 0;
}

int st_gpu_stream_wait(st_gpu_stream *s, st_gpu_event *e) {
    int rc = need_gpu("GPU stream wait");
    if (rc) return rc;
    if (!e) return st_error(ST_ERR_INVALID, "GPU stream wait: event is NULL");
    CUDA_CHECK(cudaStreamWaitEvent(as_cuda(s), as_event(e), 0));
    return 0;
}

int st_gpu_event_done(st_gpu_event *e) {
    int rc = need_gpu("GPU event query");
    if (rc) return rc;
    if (!e) return st_error(ST_ERR_INVALID, "GPU event query: event is NULL");
    cudaError_t err = cudaEventQuery(as_event(e));
    if (err == cudaErrorNotReady) return 0;
    CUDA_CHECK(err);
    return 1;
}

int st_gpu_event_sync(st_gpu_event *e) {
    int rc = need_gpu("GPU event sync");
    if (rc) return rc;
    if (!e) return st_error(ST_ERR_INVALID, "GPU event sync: event is NULL");
    CUDA_CHECK(cudaEventSynchronize(as_event(e)));
    return 0;
}

int st_gpu_malloc(size_t bytes, void **out) {
    if (!out) return st_error(ST_ERR_INVALID, "GPU malloc: output is NULL");
    *out = NULL;
    int rc = need_gpu("GPU malloc");
    if (rc) return rc;
    CUDA_CHECK(cudaMalloc(out, bytes ? bytes : 1));
    return 0;
}

void st_gpu_free(void *p) {
    if (!p) return;
    CUDA_WARN(cudaFree(p));
}

int st_gpu_host_alloc(size_t bytes, void **out) {
    if (!out) return st_error(ST_ERR_INVALID, "pinned host alloc: output is NULL");
    *out = NULL;
    int rc = need_gpu("pinned host alloc");
    if (rc) return rc;
    CUDA_CHECK(cudaMallocHost(out, bytes ? bytes : 1));
    return 0;
}

void st_gpu_host_free(void *p) {
    if (!p) return;
    CUDA_WARN(cudaFreeHost(p));
}

int st_gpu_host_register(void *p, size_t bytes, bool read_only) {
    int rc = need_gpu("pin host memory");
    if (rc) return rc;
    if (!p || !bytes) return st_error(ST_ERR_INVALID, "pin host memory: empty range (%p, %zu bytes)", p, bytes);
    CUDA_CHECK(cudaHostRegister(p, bytes, read_only ? cudaHostRegisterReadOnly : cudaHostRegisterDefault));
    return 0;
}

void st_gpu_host_unregister(void *p) {
    if (!p) return;
    CUDA_WARN(cudaHostUnregister(p));
}

static int copy(void *dst, const void *src, size_t bytes, st_gpu_stream *s, cudaMemcpyKind kind, const char *what) {
    int rc = need_gpu(what);
    if (rc) return rc;
    if (bytes == 0) return 0;
    if (!dst || !src) return st_error(ST_ERR_INVALID, "%s: NULL pointer", what);
    if (s) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, as_cuda(s)));
    else CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
    return 0;
}

int st_gpu_copy_to_device(void *dst, const void *src, size_t bytes, st_gpu_stream *s) {
    return copy(dst, src, bytes, s, cudaMemcpyHostToDevice, "copy to GPU");
}
int st_gpu_copy_to_host(void *dst, const void *src, size_t bytes, st_gpu_stream *s) {
    return copy(dst, src, bytes, s, cudaMemcpyDeviceToHost, "copy from GPU");
}
int st_gpu_copy_device(void *dst, const void *src, size_t bytes, st_gpu_stream *s) {
    return copy(dst, src, bytes, s, cudaMemcpyDeviceToDevice, "copy on GPU");
}

int st_gpu_memset(void *dst, int byte, size_t bytes, st_gpu_stream *s) {
    int rc = need_gpu("GPU memset");
    if (rc) return rc;
    if (bytes == 0) return 0;
    if (!dst) return st_error(ST_ERR_INVALID, "GPU memset: NULL pointer");
    if (s) CUDA_CHECK(cudaMemsetAsync(dst, byte, bytes, as_cuda(s)));
    else CUDA_CHECK(cudaMemset(dst, byte, bytes));
    return 0;
}

int st_gpu_gemv_fp8(const st_gpu_gemv *g, st_gpu_stream *s) {
    st_gpu_gemv r;
    int rc = resolve_gemv(g, false, &r);
    if (rc) return rc;
    if ((rc = need_gpu("FP8 GEMV"))) return rc;
    CUDA_CHECK(st_gemv_fp8_launch(r, as_cuda(s)));
    return 0;
}

int st_gpu_gemv_fp4(const st_gpu_gemv *g, st_gpu_stream *s) {
    st_gpu_gemv r;
    int rc = resolve_gemv(g, true, &r);
    if (rc) return rc;
    if ((rc = need_gpu("FP4 GEMV"))) return rc;
    CUDA_CHECK(st_gemv_fp4_launch(r, as_cuda(s)));
    return 0;
}

int st_gpu_emulate_gemv_fp8(const st_gpu_gemv *g) {
    st_gpu_gemv r;
    int rc = resolve_gemv(g, false, &r);
    if (rc) return rc;
    st_gemv_fp8_emulate(r);
    return 0;
}

int st_gpu_emulate_gemv_fp4(const st_gpu_gemv *g) {
    st_gpu_gemv r;
    int rc = resolve_gemv(g, true, &r);
    if (rc) return rc;
    st_gemv_fp4_emulate(r);
    return 0;
}

} // extern "C"
