/* Benchmarks: each prints ratios to a limit measured in the same run. */
#ifndef ST_BENCH_H
#define ST_BENCH_H

int bench_kernels(int argc, char **argv);
int bench_tokenizer(int argc, char **argv);
int bench_io(int argc, char **argv);
int bench_policies(int argc, char **argv);
int bench_e2e(int argc, char **argv);
int bench_e2e_offload(int argc, char **argv); /* bench_offload.c: streaming vs its baselines */
int bench_fidelity(int argc, char **argv);
int bench_batch(int argc, char **argv);
int bench_longctx(int argc, char **argv);

/* Read bandwidth of DRAM with all threads of the pool over `bytes` (>> LLC), GB/s. */
struct st_pool;
double bench_dram_read_gbs(struct st_pool *pool, size_t bytes);
/* One core's peak rates (2 ops per multiply-add) of zmm F32 FMA, int8 vpdpbusd
 * and BF16 vdpbf16ps; only on CPUs with the AVX-512 kernels (VNNI + BF16). */
void bench_peak_avx512(double *fma_gflops, double *vnni_gops, double *bf16_gflops);
/* 1-minute load average from /proc/loadavg, -1 if unreadable (loadavg.c). */
double bench_load_average(void);

#endif
