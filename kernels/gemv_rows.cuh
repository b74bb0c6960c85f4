/* The block-per-rows GEMV both weight formats share: a block of Fmt::THREADS
 * lanes owns Fmt::ROWS consecutive rows and splits their columns; each lane's
 * partial sums come from Fmt::lane (the format's loads and decoding, vector or
 * byte path), then warp shuffles and shared memory reduce the lanes. The host
 * emulation runs the same lane code and sums the lanes in order.
 *
 * Fmt: static constexpr int WARPS, THREADS (= WARPS * ST_WARP), ROWS;
 *      static bool vector_ok(const st_gpu_gemv &);
 *      __host__ __device__ static void lane(bool vector, const st_gpu_gemv &, int64_t row0,
 *                                           int nrows, int lane, int nlanes, float acc[ROWS]);
 */
#ifndef ST_KERNELS_GEMV_ROWS_CUH
#define ST_KERNELS_GEMV_ROWS_CUH

#include "kernels/common.cuh"

template <class Fmt, bool VECTOR>
__global__ void __launch_bounds__(Fmt::THREADS) st_gemv_rows_kernel(const st_gpu_gemv g) {
    __shared__ float warp_sums[Fmt::WARPS][Fmt::ROWS];
    const int lane = threadIdx.x % ST_WARP, warp = threadIdx.x / ST_WARP;
    const int64_t row0 = (int64_t)blockIdx.x * Fmt::ROWS; /* < rows: the grid is sized so */
    const int nrows = (int)(g.rows - row0 < Fmt::ROWS ? g.rows - row0 : Fmt::ROWS);
    float acc[Fmt::ROWS];
    Fmt::lane(VECTOR, g, row0, nrows, threadIdx.x, Fmt::THREADS, acc);
#pragma unroll
    for (int r = 0; r < Fmt::ROWS; r++) {
        float v = st_warp_sum(acc[r]);
        if (lane == 0) warp_sums[warp][r] = v;
    }
    __syncthreads();
    if ((int)threadIdx.x < nrows) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < Fmt::WARPS; w++) s += warp_sums[w][threadIdx.x];
        g.y[row0 + threadIdx.x] = s;
    }
}

template <class Fmt> cudaError_t st_gemv_rows_launch(const st_gpu_gemv &g, cudaStream_t stream) {
    if (g.rows == 0) return cudaSuccess;
    const unsigned blocks = (unsigned)((g.rows + Fmt::ROWS - 1) / Fmt::ROWS);
    if (Fmt::vector_ok(g)) st_gemv_rows_kernel<Fmt, true><<<blocks, Fmt::THREADS, 0, stream>>>(g);
    else st_gemv_rows_kernel<Fmt, false><<<blocks, Fmt::THREADS, 0, stream>>>(g);
    return cudaGetLastError();
}

template <class Fmt> void st_gemv_rows_emulate(const st_gpu_gemv &g) {
    const bool vector = Fmt::vector_ok(g);
    for (int64_t row0 = 0; row0 < g.rows; row0 += Fmt::ROWS) {
        const int nrows = (int)(g.rows - row0 < Fmt::ROWS ? g.rows - row0 : Fmt::ROWS);
        float sum[Fmt::ROWS] = {0}, acc[Fmt::ROWS];
        for (int lane = 0; lane < Fmt::THREADS; lane++) {
            Fmt::lane(vector, g, row0, nrows, lane, Fmt::THREADS, acc);
            for (int r = 0; r < nrows; r++) sum[r] += acc[r];
        }
        for (int r = 0; r < nrows; r++) g.y[row0 + r] = sum[r];
    }
}

#endif
