/* The GPU expert tier: routed experts cached in device memory (the DRAM -> GPU
 * pair of the slot-cache mechanism, offload/slot_cache.h), computed there.
 *
 * One device allocation holds n slots of the largest routed expert (w1, w3, w2
 * data + scales, each piece at a 256-aligned offset: st_gpu_expert_layout);
 * beside it the device buffers of one FFN launch: x (rows, dim), coef (rows),
 * o (rows, dim) and the FFN's scratch. Every device byte is charged to one
 * st_budget of the --gpu-mem size, a hard limit: creation fails with
 * ST_ERR_BUDGET naming --gpu-mem and the least size when one slot and the
 * buffers do not fit.
 *
 * Per layer (one owner thread, the engine's; admit_sync from others):
 *   begin(layer, experts)   the chosen experts the device holds are pinned and
 *                           will be computed there (hits); the others are misses
 *   run(expert, x, ...)     queues a hit's FFN: rows copied in, FFN, o copied
 *                           back into the caller's rows (host memory valid until end)
 *   admit(layer, expert, w) a miss the CPU computes from its DRAM copy w: the
 *                           policy gives it a slot (evicting an unpinned expert)
 *                           and its bytes start copying to the device;
 *   admit_done()            waits for that copy (the DRAM copy may go after it),
 *                           the slot becomes resident;
 *   miss(layer, expert, w, x, n, ...)  a miss with many rows (n >= min_rows,
 *                           st_gpu_experts_wants_device): a slot by the policy,
 *                           its bytes copied in from w and its FFN queued, both on
 *                           the FFN stream (no host wait between); o into the
 *                           caller's rows like run(); 0 when no slot could be had
 *                           (the caller computes it on the CPU);
 *   miss_landed()           waits for the copies miss() queued: w may go after it
 *                           (a source whose DRAM copies stay, dram_stays, need not);
 *   end()                   waits for the queued FFNs and copies, unpins.
 *   prefetch(layer + 1, e, w) while a layer is open: a predicted expert of the next
 *                           layer copied in on the copy stream (the FFN stream goes
 *                           on undisturbed); w must stay valid until the next begin(),
 *                           so only sources whose DRAM copies stay (every expert
 *                           resident) may; begin() waits for them, counts their hits.
 * So outputs never depend on when the device finishes: the caller reads o only
 * after end(), and sums the experts in its own fixed order.
 *
 * Where a miss runs (the cost model st_gpu_min_rows_model; defaults: engine/model_gpu.c):
 * the CPU takes max(bytes / DRAM bandwidth, rows * 6 * dim * inter / CPU flop
 * rate), the device about bytes / PCIe bandwidth (its FFN is orders of magnitude
 * faster than the CPU's and overlaps the copy of the next); so a miss of `rows`
 * token rows is computed on the device when rows >= min_rows, the least rows for
 * which the CPU is the slower. Decode (one row per expert) stays on the CPU,
 * prefill chunks and large batches go to the device. Placement never changes
 * the logits (the FFN is bit-identical, sums in ascending id).
 *
 * Must never: exceed the budget, let a copy's source go before the copy lands,
 * evict an expert whose FFN is queued.
 */
#ifndef ST_OFFLOAD_GPU_EXPERTS_H
#define ST_OFFLOAD_GPU_EXPERTS_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "offload/gpu_device.h"
#include "offload/policy.h"

typedef struct st_gpu_experts st_gpu_experts;

typedef struct st_gpu_experts_opts {
    uint64_t budget;     /* device bytes at most (--gpu-mem); > 0 */
    int n_slots;         /* > 0: exactly this many slots (they must fit); 0: as many as fit */
    int n_layers, n_experts;
    uint64_t slot_bytes; /* st_gpu_expert_layout of the largest routed expert */
    int64_t dim, inter;  /* largest expert's model dim and hidden size */
    int64_t rows;        /* token rows per FFN launch (a larger expert runs in pieces); 0: the most,
                            up to max_rows, halving, whose buffers leave room for the slots */
    int64_t max_rows;    /* with rows 0: 0 means 256 */
    st_policy_kind policy;
    int isa;             /* st_isa whose reductions the FFN reproduces */
    int64_t min_rows;    /* a miss with at least this many token rows is computed on the device
                            (miss()); 0: never (INT64_MAX likewise) */
    bool dram_stays;     /* the misses' DRAM copies never go (every expert resident in DRAM):
                            miss_landed() need not wait */
} st_gpu_experts_opts;

typedef struct st_gpu_tier_stats {
    const char *device;      /* "cuda", "emulated" */
    int n_slots;
    uint64_t slot_bytes;     /* one slot's stride */
    uint64_t buffer_bytes;   /* x, coef, o and scratch */
    int64_t rows;            /* token rows per FFN launch */
    uint64_t budget, used, peak; /* device bytes: limit, held now, most ever held */
    uint64_t uses, hits, misses; /* expert uses per layer call; hits computed on the device */
    uint64_t admitted, refused;  /* misses copied in / left out (every slot pinned) */
    uint64_t device_misses;      /* of the admitted: computed on the device too (miss()) */
    uint64_t prefetched, prefetch_hits; /* experts copied in ahead by prefetch(); of them, used */
    int64_t min_rows;            /* the rule: a miss of at least this many rows runs there */
    uint64_t evictions;
    uint64_t bytes_copied;   /* expert bytes copied to the device */
    uint64_t act_bytes;      /* activation bytes moved (x and coef in, o out) */
    uint64_t ffn_launches;
    int pinned_ranges;       /* host ranges page-locked by pin_host */
    uint64_t pinned_bytes;
} st_gpu_tier_stats;

/* Offsets of w1.data, w1.scale, w3.data, w3.scale, w2.data, w2.scale inside a slot
 * (256-aligned; a piece of 0 bytes still gets an offset) and the bytes in all. */
uint64_t st_gpu_expert_layout(const st_expert_w *e, uint64_t off[6]);
/* The device bytes the tier needs besides its slots (x, coef, o, scratch). */
uint64_t st_gpu_experts_buffer_bytes(const st_gpu_dev *dev, const st_gpu_experts_opts *o);

/* dev stays the caller's (outlives the tier). 0, ST_ERR_BUDGET (message names
 * --gpu-mem, the least size and its parts), ST_ERR_INVALID, or the device's error. */
int st_gpu_experts_new(const st_gpu_dev *dev, const st_gpu_experts_opts *o, st_gpu_experts **out);
void st_gpu_experts_free(st_gpu_experts *g); /* NULL-safe; waits for queued work */

/* experts[0..n): the layer's chosen experts, distinct. on_gpu[i] (may be NULL):
 * experts[i] is computed on the device. A layer opened must be ended. */
int st_gpu_experts_begin(st_gpu_experts *g, int layer, const int *experts, int n, bool *on_gpu);
/* begin() of the open layer placed the expert on the device. */
bool st_gpu_experts_placed(const st_gpu_experts *g, int layer, int expert);
/* The device holds (layer, expert) now (resident): a DRAM load of it may wait. */
bool st_gpu_experts_holds(st_gpu_experts *g, int layer, int expert);
/* Queues a placed expert's FFN: o (n, dim) = the expert on x (n, dim), hidden
 * times coef (n); shape: the expert's descriptor (shapes and formats only).
 * x, coef and o are host memory, valid until end(). */
int st_gpu_experts_run(st_gpu_experts *g, int expert, const st_expert_w *shape, const float *x, int64_t n,
                       const float *coef, float limit, bool official, float *o);
/* A miss computed on the CPU from w (its DRAM copy, valid until admit_done()):
 * 1 when its copy started, 0 when no slot could be freed (refused). */
int st_gpu_experts_admit(st_gpu_experts *g, int layer, int expert, const st_expert_w *w);
/* Waits for the copy admit() started (nothing to do: 0); the slot is then resident. */
int st_gpu_experts_admit_done(st_gpu_experts *g);
/* admit + admit_done under the tier's lock, from any thread while the owner thread does
 * nothing else with the tier (e.g. NUMA node teams computing their experts): 1 admitted,
 * 0 refused, or an error. */
int st_gpu_experts_admit_sync(st_gpu_experts *g, int layer, int expert, const st_expert_w *w);
/* The cost model (see the top): the least rows r with max(bytes / dram_bw, r * 6 * dim * inter /
 * cpu_flops) > bytes / pcie_bw, at least 2 (one row: the CPU path copies the expert in anyway
 * after computing it, off the critical path; sending it first would only trade one row of CPU
 * work for a copy on the FFN's critical path). Rates in bytes and flops per second, > 0. */
int64_t st_gpu_min_rows_model(uint64_t expert_bytes, int64_t dim, int64_t inter, double cpu_flops, double dram_bw,
                              double pcie_bw);
/* The rule: a miss of n token rows should be computed on the device (n >= min_rows). */
bool st_gpu_experts_wants_device(const st_gpu_experts *g, int64_t n);
/* A miss computed on the device: a slot by the policy (evicting an unpinned expert), w's bytes
 * (its DRAM copy, valid until miss_landed() or end()) copied in and then o (n, dim) = the expert
 * on x (n, dim), hidden times coef, queued on the FFN stream; x, coef and o as for run(). 1 queued
 * (the expert is then placed and resident from end() on), 0 when no slot could be freed (refused:
 * the caller computes it). */
int st_gpu_experts_miss(st_gpu_experts *g, int layer, int expert, const st_expert_w *w, const float *x, int64_t n,
                        const float *coef, float limit, bool official, float *o);
/* Waits until every copy miss() queued has landed (returns at once with dram_stays). */
int st_gpu_experts_miss_landed(st_gpu_experts *g);
/* miss + miss_landed under the tier's lock, from any thread (as admit_sync). */
int st_gpu_experts_miss_sync(st_gpu_experts *g, int layer, int expert, const st_expert_w *w, const float *x, int64_t n,
                             const float *coef, float limit, bool official, float *o);
/* A predicted expert of a later layer (not the open one) copied in ahead of its use: w (a DRAM
 * copy that stays valid until the next begin()) copied into a slot by the policy on the copy
 * stream. 1 queued, 0 nothing to do (held or on its way already, no slot free of pins). */
int st_gpu_experts_prefetch(st_gpu_experts *g, int layer, int expert, const st_expert_w *w);
/* Waits for the layer's queued work; o of every run() is then written. Unpins. */
int st_gpu_experts_end(st_gpu_experts *g);

/* Page-locks host memory the tier's copies read from (an expert source's DRAM):
 * [p, p + bytes) page-aligned, read_only for a read-only mapping. The tier owns
 * the registration and undoes it in free(), after the device's work is done and
 * before the caller frees that memory. 0 or the device's error (the memory then
 * stays pageable: copies still work, without overlapping the host). */
int st_gpu_experts_pin_host(st_gpu_experts *g, void *p, uint64_t bytes, bool read_only);

void st_gpu_experts_get_stats(st_gpu_experts *g, st_gpu_tier_stats *out);
const st_gpu_dev *st_gpu_experts_device(const st_gpu_experts *g);

#endif
