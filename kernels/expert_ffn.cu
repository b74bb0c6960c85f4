/* Routed expert FFN on the GPU, bit-identical to the CPU (kernels/gpu.h st_gpu_ffn).
 * Placeholder until the kernels land: reports ST_ERR_UNSUPPORTED. */
#include "kernels/common.cuh"

size_t st_gpu_ffn_scratch_bytes(int64_t inter, int64_t n) { return 0; }
int st_gpu_expert_ffn(const st_gpu_ffn *f, st_gpu_stream *s) {
    return st_error(ST_ERR_UNSUPPORTED, "GPU expert FFN: not built yet");
}
int st_gpu_emulate_expert_ffn(const st_gpu_ffn *f) {
    return st_error(ST_ERR_UNSUPPORTED, "GPU expert FFN emulation: not built yet");
}
