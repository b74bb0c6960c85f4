/* Routed expert FFN on the GPU, bit-identical to the CPU (kernels/gpu.h st_gpu_ffn):
 * argument checks, the kernels and their launches, and the host emulation.
 *
 * The arithmetic is kernels/ffn_lanes.cuh (shared with the emulation). Shapes:
 *  - products, SIMD ISAs: one warp per output row, FFN_WARPS rows per block;
 *    lane i computes partial sums i, i + 32, ... (AVX2: 32 of them, AVX-512:
 *    64) for FFN_NT tokens at a time, writes them to shared memory, and lane t
 *    combines token t's with the ISA's add tree (the emulation runs the lanes
 *    one after the other and the same combine);
 *  - products, generic: one thread per output row (a serial sum);
 *  - SwiGLU (+ coef, + bf16 when official): one thread per hidden unit;
 *  - act_quant (official): one thread per 128-value block of a token.
 * Scratch: g, u (n, inter) each; g then holds h.
 */
#include "kernels/ffn_lanes.cuh"

extern "C" {
#include "cpu/cpu.h"
}

static_assert(ST_WF_FP8 == ST_WF_FP8_ && ST_WF_FP4 == ST_WF_FP4_, "st_wfmt values");

namespace {

constexpr int FFN_WARPS = 8;         /* rows per block of the SIMD products */
constexpr int FFN_ROW_THREADS = 128; /* rows per block of the generic product */
constexpr int FFN_ELEM_THREADS = 256;

/* ---- products ---------------------------------------------------------------------- */

/* y (n, w.rows) = x (n, w.cols) . w^T with the reduction of an L-lane ISA. */
template <int L> __global__ void __launch_bounds__(FFN_WARPS *ST_WARP) ffn_simd_kernel(const st_gpu_mat w, const float *x, int64_t n, float *y) {
    __shared__ float part[FFN_WARPS][FFN_NT][4 * L];
    const int lane = threadIdx.x % ST_WARP, warp = threadIdx.x / ST_WARP;
    const int64_t r = (int64_t)blockIdx.x * FFN_WARPS + warp;
    if (r >= w.rows) return; /* the whole warp: only warp barriers below */
    for (int64_t t0 = 0; t0 < n; t0 += FFN_NT) {
        const int nt = (int)(n - t0 < FFN_NT ? n - t0 : FFN_NT);
        for (int j = lane; j < 4 * L; j += ST_WARP) {
            float acc[FFN_NT];
            ffn_simd_partial<L>(w, r, j, x + t0 * w.cols, w.cols, nt, acc);
            for (int t = 0; t < nt; t++) part[warp][t][j] = acc[t];
        }
        __syncwarp();
        if (lane < nt) y[(t0 + lane) * w.rows + r] = ffn_simd_combine<L>(part[warp][lane]);
        __syncwarp();
    }
}

template <int L> void ffn_simd_emulate(const st_gpu_mat &w, const float *x, int64_t n, float *y) {
    float part[FFN_NT][4 * L];
    for (int64_t r = 0; r < w.rows; r++)
        for (int64_t t0 = 0; t0 < n; t0 += FFN_NT) {
            const int nt = (int)(n - t0 < FFN_NT ? n - t0 : FFN_NT);
            for (int j = 0; j < 4 * L; j++) {
                float acc[FFN_NT];
                ffn_simd_partial<L>(w, r, j, x + t0 * w.cols, w.cols, nt, acc);
                for (int t = 0; t < nt; t++) part[t][j] = acc[t];
            }
            for (int t = 0; t < nt; t++) y[(t0 + t) * w.rows + r] = ffn_simd_combine<L>(part[t]);
        }
}

__global__ void __launch_bounds__(FFN_ROW_THREADS) ffn_generic_kernel(const st_gpu_mat w, const float *x, int64_t n, float *y) {
    const int64_t r = (int64_t)blockIdx.x * FFN_ROW_THREADS + threadIdx.x;
    if (r >= w.rows) return;
    for (int64_t t0 = 0; t0 < n; t0 += FFN_NT) {
        const int nt = (int)(n - t0 < FFN_NT ? n - t0 : FFN_NT);
        float acc[FFN_NT];
        ffn_generic_dot(w, r, x + t0 * w.cols, w.cols, nt, acc);
        for (int t = 0; t < nt; t++) y[(t0 + t) * w.rows + r] = acc[t];
    }
}

void ffn_generic_emulate(const st_gpu_mat &w, const float *x, int64_t n, float *y) {
    for (int64_t r = 0; r < w.rows; r++)
        for (int64_t t0 = 0; t0 < n; t0 += FFN_NT) {
            const int nt = (int)(n - t0 < FFN_NT ? n - t0 : FFN_NT);
            float acc[FFN_NT];
            ffn_generic_dot(w, r, x + t0 * w.cols, w.cols, nt, acc);
            for (int t = 0; t < nt; t++) y[(t0 + t) * w.rows + r] = acc[t];
        }
}

unsigned blocks_for(int64_t items, int per_block) { return (unsigned)((items + per_block - 1) / per_block); }

cudaError_t matmul_launch(int isa, const st_gpu_mat &w, const float *x, int64_t n, float *y, cudaStream_t s) {
    switch (isa) {
    case ST_ISA_AVX512: ffn_simd_kernel<16><<<blocks_for(w.rows, FFN_WARPS), FFN_WARPS * ST_WARP, 0, s>>>(w, x, n, y); break;
    case ST_ISA_AVX2: ffn_simd_kernel<8><<<blocks_for(w.rows, FFN_WARPS), FFN_WARPS * ST_WARP, 0, s>>>(w, x, n, y); break;
    default: ffn_generic_kernel<<<blocks_for(w.rows, FFN_ROW_THREADS), FFN_ROW_THREADS, 0, s>>>(w, x, n, y); break;
    }
    return cudaGetLastError();
}

void matmul_emulate(int isa, const st_gpu_mat &w, const float *x, int64_t n, float *y) {
    switch (isa) {
    case ST_ISA_AVX512: ffn_simd_emulate<16>(w, x, n, y); break;
    case ST_ISA_AVX2: ffn_simd_emulate<8>(w, x, n, y); break;
    default: ffn_generic_emulate(w, x, n, y); break;
    }
}

/* ---- elementwise ---------------------------------------------------------------------- */

/* g (n, inter) = h of g, u in place. */
__global__ void ffn_swiglu_kernel(float *g, const float *u, int64_t n, int64_t inter, const float *coef, float limit,
                                  bool official) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n * inter) g[i] = ffn_swiglu(g[i], u[i], limit, coef, i / inter, official);
}

/* Block b of token t: b = i % nb, t = i / nb. */
__global__ void ffn_act_quant_kernel(float *h, int64_t n, int64_t inter) {
    const int64_t nb = (inter + 127) / 128, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * nb) return;
    const int64_t t = i / nb, c0 = (i % nb) * 128;
    ffn_act_quant_block(h + t * inter + c0, (int)(inter - c0 < 128 ? inter - c0 : 128));
}

/* ---- checks ---------------------------------------------------------------------------- */

int check_mat(const st_gpu_mat &m, const char *name, int64_t rows, int64_t cols, const char *op) {
    if (m.fmt != ST_WF_FP4 && m.fmt != ST_WF_FP8)
        return st_error(ST_ERR_INVALID, "%s: %s: format %d: expected FP4 (%d) or FP8 (%d)", op, name, m.fmt, ST_WF_FP4,
                        ST_WF_FP8);
    if (m.rows != rows || m.cols != cols)
        return st_error(ST_ERR_INVALID, "%s: %s: shape (%lld, %lld): expected (%lld, %lld) (w1, w3: (inter, dim); w2: (dim, inter))",
                        op, name, (long long)m.rows, (long long)m.cols, (long long)rows, (long long)cols);
    if (rows <= 0 || cols <= 0)
        return st_error(ST_ERR_INVALID, "%s: %s: shape (%lld, %lld): expected positive sizes", op, name, (long long)rows,
                        (long long)cols);
    if (m.fmt == ST_WF_FP4 && (cols % 32 || m.scale_f32))
        return st_error(ST_ERR_INVALID, "%s: %s: FP4 needs cols %% 32 == 0 (found %lld) and ue8m0 scales%s", op, name,
                        (long long)cols, m.scale_f32 ? " (found F32)" : "");
    if (!m.data || !m.scale) return st_error(ST_ERR_INVALID, "%s: %s: data or scale is NULL", op, name);
    return 0;
}

int check_ffn(const st_gpu_ffn *f, const char *op) {
    if (!f) return st_error(ST_ERR_INVALID, "%s: no arguments (NULL)", op);
    const int64_t inter = f->w1.rows, dim = f->w1.cols;
    int rc;
    if ((rc = check_mat(f->w1, "w1", inter, dim, op)) || (rc = check_mat(f->w3, "w3", inter, dim, op)) ||
        (rc = check_mat(f->w2, "w2", dim, inter, op)))
        return rc;
    if (f->n < 0) return st_error(ST_ERR_INVALID, "%s: n = %lld tokens: expected >= 0", op, (long long)f->n);
    if (f->isa != ST_ISA_GENERIC && f->isa != ST_ISA_AVX2 && f->isa != ST_ISA_AVX512)
        return st_error(ST_ERR_INVALID, "%s: isa %d: expected generic (%d), AVX2 (%d) or AVX-512 (%d)", op, f->isa,
                        ST_ISA_GENERIC, ST_ISA_AVX2, ST_ISA_AVX512);
    if (f->n > 0 && (!f->x || !f->o || !f->scratch))
        return st_error(ST_ERR_INVALID, "%s: x, o or scratch is NULL", op);
    return 0;
}

} // namespace

extern "C" {

size_t st_gpu_ffn_scratch_bytes(int64_t inter, int64_t n) {
    return inter > 0 && n > 0 ? 2 * (size_t)inter * (size_t)n * sizeof(float) : 0;
}

int st_gpu_expert_ffn(const st_gpu_ffn *f, st_gpu_stream *s) {
    int rc = check_ffn(f, "GPU expert FFN");
    if (rc) return rc;
    const char *reason = "";
    if (st_gpu_device_count(&reason) <= 0) return st_error(ST_ERR_UNSUPPORTED, "GPU expert FFN: no GPU (%s)", reason);
    if (f->n == 0) return 0;
    const cudaStream_t cs = reinterpret_cast<cudaStream_t>(s);
    const int64_t inter = f->w1.rows, n = f->n;
    float *g = static_cast<float *>(f->scratch), *u = g + n * inter;
    CUDA_CHECK(matmul_launch(f->isa, f->w1, f->x, n, g, cs));
    CUDA_CHECK(matmul_launch(f->isa, f->w3, f->x, n, u, cs));
    ffn_swiglu_kernel<<<blocks_for(n * inter, FFN_ELEM_THREADS), FFN_ELEM_THREADS, 0, cs>>>(g, u, n, inter, f->coef,
                                                                                             f->limit, f->official);
    CUDA_CHECK(cudaGetLastError());
    if (f->official) {
        ffn_act_quant_kernel<<<blocks_for(n * ((inter + 127) / 128), FFN_ELEM_THREADS), FFN_ELEM_THREADS, 0, cs>>>(g, n, inter);
        CUDA_CHECK(cudaGetLastError());
    }
    CUDA_CHECK(matmul_launch(f->isa, f->w2, g, n, f->o, cs));
    return 0;
}

int st_gpu_emulate_expert_ffn(const st_gpu_ffn *f) {
    int rc = check_ffn(f, "GPU expert FFN emulation");
    if (rc || f->n == 0) return rc;
    const int64_t inter = f->w1.rows, n = f->n;
    float *g = static_cast<float *>(f->scratch), *u = g + n * inter;
    matmul_emulate(f->isa, f->w1, f->x, n, g);
    matmul_emulate(f->isa, f->w3, f->x, n, u);
    for (int64_t i = 0; i < n * inter; i++) g[i] = ffn_swiglu(g[i], u[i], f->limit, f->coef, i / inter, f->official);
    if (f->official)
        for (int64_t t = 0; t < n; t++)
            for (int64_t c0 = 0; c0 < inter; c0 += 128)
                ffn_act_quant_block(g + t * inter + c0, (int)(inter - c0 < 128 ? inter - c0 : 128));
    matmul_emulate(f->isa, f->w2, g, n, f->o);
    return 0;
}

} // extern "C"
