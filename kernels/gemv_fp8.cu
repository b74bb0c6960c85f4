/* FP8 e4m3 GEMV, memory-bound. A block of FP8_THREADS lanes owns FP8_ROWS
 * consecutive rows and splits their columns: lane t takes the 16-column chunks
 * t, t + FP8_THREADS, ... and loads each with one 16-byte load per row (a chunk
 * never straddles a 128-column scale block, so the scale is applied once per 16
 * products); its 16 x values are loaded once and reused for every row. Warp
 * shuffles, then shared memory, reduce the lanes. Rows whose pointer or stride
 * is not 16-byte aligned (or cols % 16 != 0) take a byte-per-lane path. */
#include "kernels/gemv_fp8.cuh"
#include "kernels/gemv_rows.cuh"

namespace {

constexpr int FP8_WARPS = 4;                   /* warps per block, all on the same rows */
constexpr int FP8_THREADS = FP8_WARPS * ST_WARP; /* a block's lanes split each row's columns */
constexpr int FP8_ROWS = 4;                    /* rows per block: each lane's x slice serves all */
constexpr int FP8_VEC = 16;                    /* bytes (= columns) per lane per load */

__host__ __device__ inline float fp8_scale(const st_gpu_gemv &g, int64_t row, int64_t col) {
    int64_t i = (row >> 7) * g.scale_stride + (col >> 7);
    return g.scale_f32 ? st_ld(static_cast<const float *>(g.scale) + i)
                       : st_dev_e8m0(st_ld(static_cast<const uint8_t *>(g.scale) + i));
}

bool fp8_vector_ok(const st_gpu_gemv &g) {
    return ((uintptr_t)g.w % 16) == 0 && ((uintptr_t)g.x % 16) == 0 && g.w_stride % 16 == 0 && g.cols % 16 == 0;
}

/* acc[r] = lane `lane` of `nlanes`'s share of row row0 + r (r < nrows), vector path. */
__host__ __device__ inline void fp8_lane_vector(const st_gpu_gemv &g, int64_t row0, int nrows, int lane,
                                                int nlanes, float acc[FP8_ROWS]) {
    for (int r = 0; r < FP8_ROWS; r++) acc[r] = 0.0f;
    for (int64_t c = (int64_t)lane * FP8_VEC; c < g.cols; c += (int64_t)nlanes * FP8_VEC) {
        uint4 wv[FP8_ROWS];
#pragma unroll
        for (int r = 0; r < FP8_ROWS; r++) /* all loads first: FP8_ROWS requests in flight */
            wv[r] = r < nrows ? st_ld_u4(g.w + (row0 + r) * g.w_stride + c) : make_uint4(0, 0, 0, 0);
        float xv[FP8_VEC];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float4 t = st_ld_f4(g.x + c + 4 * q);
            xv[4 * q] = t.x; xv[4 * q + 1] = t.y; xv[4 * q + 2] = t.z; xv[4 * q + 3] = t.w;
        }
#pragma unroll
        for (int r = 0; r < FP8_ROWS; r++) {
            if (r >= nrows) break;
            const uint32_t words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float part = 0.0f;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                float wf[4];
                st_dev_e4m3x4(words[q], wf);
#pragma unroll
                for (int j = 0; j < 4; j++) part = fmaf(wf[j], xv[4 * q + j], part);
            }
            acc[r] = fmaf(part, fp8_scale(g, row0 + r, c), acc[r]);
        }
    }
}

/* Same, one byte per lane: any alignment, any cols. */
__host__ __device__ inline void fp8_lane_bytes(const st_gpu_gemv &g, int64_t row0, int nrows, int lane,
                                               int nlanes, float acc[FP8_ROWS]) {
    for (int r = 0; r < FP8_ROWS; r++) acc[r] = 0.0f;
    for (int64_t c = lane; c < g.cols; c += nlanes) {
        float xc = st_ld(g.x + c);
#pragma unroll
        for (int r = 0; r < FP8_ROWS; r++) {
            if (r >= nrows) break;
            float wf[4];
            st_dev_e4m3x4(st_ld(g.w + (row0 + r) * g.w_stride + c), wf);
            acc[r] = fmaf(wf[0] * xc, fp8_scale(g, row0 + r, c), acc[r]);
        }
    }
}

struct Fp8Rows {
    static constexpr int WARPS = FP8_WARPS, THREADS = FP8_THREADS, ROWS = FP8_ROWS;
    static bool vector_ok(const st_gpu_gemv &g) { return fp8_vector_ok(g); }
    __host__ __device__ static void lane(bool vector, const st_gpu_gemv &g, int64_t row0, int nrows, int lane,
                                         int nlanes, float acc[FP8_ROWS]) {
        if (vector) fp8_lane_vector(g, row0, nrows, lane, nlanes, acc);
        else fp8_lane_bytes(g, row0, nrows, lane, nlanes, acc);
    }
};

} // namespace

cudaError_t st_gemv_fp8_launch(const st_gpu_gemv &g, cudaStream_t stream) { return st_gemv_rows_launch<Fp8Rows>(g, stream); }

void st_gemv_fp8_emulate(const st_gpu_gemv &g) { st_gemv_rows_emulate<Fp8Rows>(g); }
