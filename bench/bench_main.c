/* `strata bench SUITE`: dispatch to the benchmark suites. */
#include <stdio.h>
#include <string.h>

#include "base/base.h"
#include "bench/bench.h"
#include "engine/cli.h"

static const st_command suites[] = {
    {"kernels", "CPU kernels: GEMV/GEMM per weight format and the expert FFN vs DRAM bandwidth and OpenBLAS", bench_kernels},
    {"tokenizer", "tokenizer encode/decode MB/s on a file vs Hugging Face tokenizers (python3) on the same file", bench_tokenizer},
    {"io", "NVMe reads: random expert-sized O_DIRECT reads through the io_uring engine at depths 1..64 vs fio on the same file", bench_io},
    {"policies", "cache policies: replay an expert trace (or --synthetic) against LRU/LFU/LFRU/hot set at several budgets vs Belady", bench_policies},
    {"e2e", "expert streaming vs all-DRAM / prefetch off / mmap in a memory cgroup, against the cost model; --roofline: decode vs DRAM bandwidth, prefill", bench_e2e},
    {"fidelity", "official vs reference numerics: mean KL and top-1 agreement on seeded token sequences", bench_fidelity},
    {"batch", "batched decode: total tokens/s at batch 1, 8, 32 with streamed experts vs the disk bound (unique experts per step)", bench_batch},
    {"longctx", "decode tokens/s after 4K..1M-token contexts vs the KV+weight bytes bound at measured DRAM bandwidth", bench_longctx},
};

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: strata bench SUITE [options]   (strata bench SUITE --help)\n\nsuites:\n");
        for (size_t i = 0; i < ST_ARRAY_LEN(suites); i++) fprintf(f, "  %-10s %s\n", suites[i].name, suites[i].summary);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < ST_ARRAY_LEN(suites); i++)
        if (!strcmp(argv[1], suites[i].name)) return suites[i].run(argc - 1, argv + 1);
    fprintf(stderr, "strata bench: unknown suite '%s' (strata bench --help)\n", argv[1]);
    return 2;
}
