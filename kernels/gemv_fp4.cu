/* FP4 e2m1 GEMV, memory-bound. A block of FP4_THREADS lanes owns FP4_ROWS
 * consecutive rows and splits their columns: lane t takes the 16-byte chunks
 * (32 columns = exactly one scale group) t, t + FP4_THREADS, ..., one 16-byte
 * load per row, so each scale byte is read once and applied once per 32
 * products; its 32 x values are loaded once and reused for every row. Warp
 * shuffles, then shared memory, reduce the lanes. A pointer or row stride that
 * is not 16-byte aligned takes a byte-per-lane path. */
#include "kernels/gemv_fp4.cuh"
#include "kernels/gemv_rows.cuh"

namespace {

constexpr int FP4_WARPS = 4;                   /* warps per block, all on the same rows */
constexpr int FP4_THREADS = FP4_WARPS * ST_WARP; /* a block's lanes split each row's columns */
constexpr int FP4_ROWS = 4;                    /* rows per block: each lane's x slice serves all */
constexpr int FP4_BYTES = 16;                  /* bytes (32 columns) per lane per load */

bool fp4_vector_ok(const st_gpu_gemv &g) {
    return ((uintptr_t)g.w % 16) == 0 && ((uintptr_t)g.x % 16) == 0 && g.w_stride % 16 == 0 && g.cols % 32 == 0;
}

__host__ __device__ inline float fp4_scale(const st_gpu_gemv &g, int64_t row, int64_t group) {
    return st_dev_e8m0(st_ld(static_cast<const uint8_t *>(g.scale) + row * g.scale_stride + group));
}

/* acc[r] = lane `lane` of `nlanes`'s share of row row0 + r (r < nrows), vector path. */
__host__ __device__ inline void fp4_lane_vector(const st_gpu_gemv &g, int64_t row0, int nrows, int lane,
                                                int nlanes, float acc[FP4_ROWS]) {
    for (int r = 0; r < FP4_ROWS; r++) acc[r] = 0.0f;
    const int64_t row_bytes = g.cols / 2;
    for (int64_t b = (int64_t)lane * FP4_BYTES; b < row_bytes; b += (int64_t)nlanes * FP4_BYTES) {
        uint4 wv[FP4_ROWS];
#pragma unroll
        for (int r = 0; r < FP4_ROWS; r++) /* all loads first: FP4_ROWS requests in flight */
            wv[r] = r < nrows ? st_ld_u4(g.w + (row0 + r) * g.w_stride + b) : make_uint4(0, 0, 0, 0);
        float xv[2 * FP4_BYTES];
#pragma unroll
        for (int q = 0; q < 8; q++) {
            float4 t = st_ld_f4(g.x + 2 * b + 4 * q);
            xv[4 * q] = t.x; xv[4 * q + 1] = t.y; xv[4 * q + 2] = t.z; xv[4 * q + 3] = t.w;
        }
#pragma unroll
        for (int r = 0; r < FP4_ROWS; r++) {
            if (r >= nrows) break;
            const uint32_t words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float part = 0.0f;
#pragma unroll
            for (int q = 0; q < 4; q++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    uint32_t byte = words[q] >> (8 * j);
                    part = fmaf(st_dev_e2m1(byte & 15u), xv[8 * q + 2 * j], part);
                    part = fmaf(st_dev_e2m1((byte >> 4) & 15u), xv[8 * q + 2 * j + 1], part);
                }
            }
            acc[r] = fmaf(part, fp4_scale(g, row0 + r, b / FP4_BYTES), acc[r]);
        }
    }
}

/* Same, one byte (two columns) per lane: any alignment. */
__host__ __device__ inline void fp4_lane_bytes(const st_gpu_gemv &g, int64_t row0, int nrows, int lane,
                                               int nlanes, float acc[FP4_ROWS]) {
    for (int r = 0; r < FP4_ROWS; r++) acc[r] = 0.0f;
    const int64_t row_bytes = g.cols / 2;
    for (int64_t b = lane; b < row_bytes; b += nlanes) {
        float x0 = st_ld(g.x + 2 * b), x1 = st_ld(g.x + 2 * b + 1);
#pragma unroll
        for (int r = 0; r < FP4_ROWS; r++) {
            if (r >= nrows) break;
            uint32_t byte = st_ld(g.w + (row0 + r) * g.w_stride + b);
            float part = fmaf(st_dev_e2m1(byte & 15u), x0, st_dev_e2m1(byte >> 4) * x1);
            acc[r] = fmaf(part, fp4_scale(g, row0 + r, b / 16), acc[r]);
        }
    }
}

struct Fp4Rows {
    static constexpr int WARPS = FP4_WARPS, THREADS = FP4_THREADS, ROWS = FP4_ROWS;
    static bool vector_ok(const st_gpu_gemv &g) { return fp4_vector_ok(g); }
    __host__ __device__ static void lane(bool vector, const st_gpu_gemv &g, int64_t row0, int nrows, int lane,
                                         int nlanes, float acc[FP4_ROWS]) {
        if (vector) fp4_lane_vector(g, row0, nrows, lane, nlanes, acc);
        else fp4_lane_bytes(g, row0, nrows, lane, nlanes, acc);
    }
};

} // namespace

cudaError_t st_gemv_fp4_launch(const st_gpu_gemv &g, cudaStream_t stream) { return st_gemv_rows_launch<Fp4Rows>(g, stream); }

void st_gemv_fp4_emulate(const st_gpu_gemv &g) { st_gemv_rows_emulate<Fp4Rows>(g); }
