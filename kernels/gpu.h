/* GPU backend, C interface: detection, device memory, streams and the CUDA ops.
 *
 * Implemented by kernels/gpu.cu (with nvcc) or kernels/nocuda.c (without). The
 * CUDA runtime is linked statically, so a CUDA build starts on any machine: with
 * no driver or no device, st_gpu_device_count() returns 0 and a reason, and every
 * other call returns ST_ERR_UNSUPPORTED. No GPU is never an error by itself.
 * Knows nothing of the model: shapes and pointers come in as arguments.
 */
#ifndef ST_KERNELS_GPU_H
#define ST_KERNELS_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* True when this build contains the CUDA kernels. */
bool st_gpu_compiled(void);

/* Number of usable CUDA devices (>= 0; never an error). When 0, *reason (if not
 * NULL) gets a static string such as "CUDA not compiled in", "no CUDA driver"
 * or "no CUDA device"; when > 0, *reason is "". Cached after the first call. */
int st_gpu_device_count(const char **reason);

typedef struct st_gpu_info {
    char name[256];
    int cc_major, cc_minor;        /* compute capability */
    int multiprocessors;
    uint64_t total_bytes, free_bytes;
    uint64_t mem_bus_bits;         /* memory bus width in bits (0: unknown) */
    int mem_clock_khz;             /* memory clock (0: unknown) */
    int driver_version, runtime_version; /* 1000*major + 10*minor, as CUDA reports */
} st_gpu_info;

/* 0, or ST_ERR_UNSUPPORTED (no GPU) / ST_ERR_INVALID (bad index) with a message. */
int st_gpu_device_info(int device, st_gpu_info *out);

/* CUDA runtime version compiled in and the driver's (0 when there is no driver).
 * Returns 0, or ST_ERR_UNSUPPORTED without CUDA. */
int st_gpu_versions(int *runtime, int *driver);

/* Make `device` current for this thread (buffers and streams are per device). */
int st_gpu_set_device(int device);

/* ---- streams ----------------------------------------------------------------- */

/* Opaque: a cudaStream_t. NULL means the legacy default stream everywhere below. */
typedef struct st_gpu_stream st_gpu_stream;

int st_gpu_stream_new(st_gpu_stream **out);  /* non-blocking stream on the current device */
void st_gpu_stream_free(st_gpu_stream *s);   /* NULL-safe */
int st_gpu_stream_sync(st_gpu_stream *s);    /* waits; reports errors of earlier async work */

/* Opaque: a cudaEvent_t (timing disabled): marks a point in a stream, e.g. "this
 * expert's copy has landed", so another stream can wait for it without the host. */
typedef struct st_gpu_event st_gpu_event;

int st_gpu_event_new(st_gpu_event **out);
void st_gpu_event_free(st_gpu_event *e);                  /* NULL-safe */
int st_gpu_event_record(st_gpu_event *e, st_gpu_stream *s); /* mark the current end of s */
int st_gpu_stream_wait(st_gpu_stream *s, st_gpu_event *e);  /* later work on s waits for e */
/* 1 when everything before the record has finished, 0 when not yet, < 0 on error. */
int st_gpu_event_done(st_gpu_event *e);
int st_gpu_event_sync(st_gpu_event *e);                   /* host waits */

/* ---- memory -------------------------------------------------------------------- */

/* Device memory on the current device. *out is NULL on failure. */
int st_gpu_malloc(size_t bytes, void **out);
void st_gpu_free(void *dev_ptr);               /* NULL-safe */
/* Page-locked host memory (fast async copies). Free with st_gpu_host_free. */
int st_gpu_host_alloc(size_t bytes, void **out);
void st_gpu_host_free(void *host_ptr);         /* NULL-safe */
/* Page-lock existing host memory [p, p + bytes) (cudaHostRegister) so async
 * copies from it overlap the host's work instead of being staged by the driver.
 * read_only: a read-only mapping (e.g. the checkpoint's PROT_READ mmap), locked
 * with cudaHostRegisterReadOnly. p and bytes should be page-aligned. 0, or an
 * error naming the call, file and line (the pinned-memory limit, a mapping the
 * driver refuses), or ST_ERR_UNSUPPORTED without a GPU. */
int st_gpu_host_register(void *p, size_t bytes, bool read_only);
/* Undo st_gpu_host_register(p, ...) before that memory is freed. NULL-safe;
 * a failure is a warning. */
void st_gpu_host_unregister(void *p);

/* Copies; asynchronous on `s` (ordered with the ops on it), synchronous when s
 * is NULL. Async copies of pageable host memory are staged by the driver. */
int st_gpu_copy_to_device(void *dst, const void *src, size_t bytes, st_gpu_stream *s);
int st_gpu_copy_to_host(void *dst, const void *src, size_t bytes, st_gpu_stream *s);
int st_gpu_copy_device(void *dst, const void *src, size_t bytes, st_gpu_stream *s);
int st_gpu_memset(void *dst, int byte, size_t bytes, st_gpu_stream *s);

/* ---- ops ------------------------------------------------------------------------ */

/* y (rows) = W (rows, cols) . x (cols), dequantising W on the fly, F32 sums.
 * Same numbers as the CPU's st_matmul with n == 1 (see cpu/cpu.h, cpu/formats.h).
 * Every pointer is device memory. */
typedef struct st_gpu_gemv {
    const uint8_t *w;     /* FP8: (rows, cols) e4m3 bytes; FP4: (rows, cols/2) e2m1 pairs, low nibble = even column */
    const void *scale;    /* FP8: (ceil(rows/128), ceil(cols/128)) ue8m0 or F32; FP4: (rows, cols/32) ue8m0 */
    const float *x;       /* (cols) */
    float *y;             /* (rows) */
    int64_t rows, cols;
    int64_t w_stride;     /* bytes between rows of w; 0: packed (FP8 cols, FP4 cols/2) */
    int64_t scale_stride; /* scale elements between scale rows; 0: packed */
    bool scale_f32;       /* FP8 only: scale elements are F32 instead of ue8m0 */
} st_gpu_gemv;

/* Queue the GEMV on s. Returns 0, ST_ERR_INVALID (shape/stride/pointer with a
 * message), or ST_ERR_UNSUPPORTED (no GPU / not compiled in). FP4 needs cols % 32 == 0. */
int st_gpu_gemv_fp8(const st_gpu_gemv *g, st_gpu_stream *s);
int st_gpu_gemv_fp4(const st_gpu_gemv *g, st_gpu_stream *s);

/* Host emulation of the two kernels' per-lane work split and decoding (the same
 * __host__ __device__ code the kernels run), summing lanes in order instead of
 * by warp shuffles. Host pointers. Lets the index arithmetic be tested on
 * machines without a GPU. ST_ERR_UNSUPPORTED without CUDA. */
int st_gpu_emulate_gemv_fp8(const st_gpu_gemv *g);
int st_gpu_emulate_gemv_fp4(const st_gpu_gemv *g);

/* ---- routed expert FFN, bit-identical to the CPU ------------------------------ */

/* One quantised weight in device memory (cpu/cpu.h st_weight without the split). */
typedef struct st_gpu_mat {
    int fmt;              /* ST_WF_FP4 or ST_WF_FP8 (cpu/cpu.h st_wfmt values) */
    const void *data;     /* as st_weight.data */
    const void *scale;    /* as st_weight.scale */
    int64_t rows, cols;
    bool scale_f32;       /* FP8 only: ST_SCALE_F32 scales */
} st_gpu_mat;

/* o (n, dim) = the expert's output for n tokens, without adding it anywhere:
 *   h = swiglu(w1 x, w3 x) with the clamp `limit` (<= 0: none), times coef[i];
 *   official: h rounded to bf16, then act_quant-ed (e4m3 per 128) before a
 *   quantised w2, as engine/moe.c expert_apply; x is then already act_quant-ed
 *   by the caller. reference: as st_expert_ffn(..., ST_ACT_F32).
 *   o = w2 h.
 * Every product reproduces the canonical reduction of the CPU ISA `isa`
 * (cpu/matmul_internal.h), and the elementwise steps the CPU's operations, so
 * o is bit-identical to what the CPU computes for that expert on that ISA; the
 * caller adds the experts' outputs in its fixed order. */
typedef struct st_gpu_ffn {
    st_gpu_mat w1, w3, w2; /* (inter, dim), (inter, dim), (dim, inter) */
    const float *x;        /* (n, dim) */
    int64_t n;
    const float *coef;     /* (n) or NULL (1.0) */
    float limit;
    bool official;         /* official numerics (see above) */
    int isa;               /* st_isa whose reductions to reproduce (st_cpu_isa() of the run) */
    float *o;              /* (n, dim) */
    void *scratch;         /* st_gpu_ffn_scratch_bytes(w1.rows, n) bytes */
} st_gpu_ffn;

size_t st_gpu_ffn_scratch_bytes(int64_t inter, int64_t n);
/* Queue the FFN on s; device pointers. 0, ST_ERR_INVALID (shapes, formats,
 * pointers, with a message) or ST_ERR_UNSUPPORTED (no GPU / not compiled in). */
int st_gpu_expert_ffn(const st_gpu_ffn *f, st_gpu_stream *s);
/* The same computation on the host, running the kernels' __host__ __device__
 * code (host pointers): lets the bit-identity be tested without a GPU.
 * ST_ERR_UNSUPPORTED without CUDA. */
int st_gpu_emulate_expert_ffn(const st_gpu_ffn *f);

#ifdef __cplusplus
}
#endif
#endif
