/* CPU memory: byte budgets and NUMA-placed, huge-page-backed allocations.
 *
 * Every allocation is charged to a named st_budget; exceeding its limit fails
 * with ST_ERR_BUDGET and a message naming the budget, the request and what is
 * in use. Allocations are anonymous mappings (4 KiB granularity; 2 MiB aligned
 * and madvise(MADV_HUGEPAGE)d when at least 2 MiB and THP is not "never"),
 * placed with mbind. Where NUMA or huge pages are refused (numa_available() < 0,
 * mbind EPERM, STRATA_NUMA=0) the memory is still returned, with one warning per
 * kind of refusal per process.
 */
#ifndef ST_CPU_MEM_H
#define ST_CPU_MEM_H

#include <stdbool.h>
#include <stdint.h>

/* ---- budgets --------------------------------------------------------------- */

typedef struct st_budget st_budget;

/* limit == UINT64_MAX: unlimited (still counted). name is copied. */
int st_budget_new(const char *name, uint64_t limit, st_budget **out);
/* NULL is a no-op. Bytes still charged are reported at debug level (a leak). */
void st_budget_free(st_budget *b);
/* Charge / return bytes without allocating (e.g. GPU buffers, pack extents).
 * Thread-safe. reserve: 0 or ST_ERR_BUDGET (nothing charged then). */
int st_budget_reserve(st_budget *b, uint64_t bytes);
void st_budget_release(st_budget *b, uint64_t bytes); /* ST_ASSERTs more than charged */
const char *st_budget_name(const st_budget *b);
uint64_t st_budget_limit(const st_budget *b);
uint64_t st_budget_used(const st_budget *b);
uint64_t st_budget_peak(const st_budget *b);
uint64_t st_budget_available(const st_budget *b); /* limit - used */

/* ---- allocations ------------------------------------------------------------- */

typedef enum {
    ST_MEM_DEFAULT = 0,    /* the process policy (first touch) */
    ST_MEM_NODE = 1,       /* bound to `node` */
    ST_MEM_INTERLEAVE = 2, /* pages spread over every node this process may use */
    ST_MEM_LOCAL = 3,      /* the node of the thread that first touches each page */
} st_mem_policy;

/* Bytes charged for an allocation of `bytes` (rounded up to 4 KiB). */
uint64_t st_mem_charge(uint64_t bytes);

/* Allocates `bytes` (> 0) zeroed, charged to b (may be NULL: uncounted), placed by
 * policy. *out is 4 KiB aligned, 2 MiB aligned when bytes >= 2 MiB.
 * Returns 0, ST_ERR_BUDGET, ST_ERR_NOMEM, or ST_ERR_INVALID (node out of range,
 * bytes == 0, unknown policy). */
int st_mem_alloc(st_budget *b, uint64_t bytes, st_mem_policy policy, int node, void **out);
/* Places whole pages [p, p + len) of an st_mem_alloc allocation not touched
 * yet on `node` (as ST_MEM_NODE, recorded for st_mem_placement_of): one
 * matrix's rows split over the nodes whose threads compute them. 0, or
 * ST_ERR_INVALID (not whole pages, a node this process may not use). */
int st_mem_place_range(void *p, uint64_t len, int node);
/* Unmaps and returns the charge; bytes must be the size given to st_mem_alloc.
 * ptr NULL is a no-op. */
void st_mem_free(st_budget *b, void *ptr, uint64_t bytes);

/* What this process can do (probed once): NUMA nodes usable by mbind (0 when
 * NUMA is unavailable or disabled), and whether THP can be asked for. */
int st_mem_numa_nodes(void);
bool st_mem_hugepages(void);
/* Tests and STRATA_NUMA=0: allocate without any mbind (the fallback path). */
void st_mem_set_numa_enabled(bool on);
/* A synthetic topology (STRATA_TOPOLOGY) with n nodes is in use: ST_MEM_NODE
 * accepts nodes [0, n); those this process cannot use are not mbind'ed (the
 * allocation succeeds, its placement is only recorded). 0: back to normal. */
void st_mem_set_virtual_nodes(int n);

/* ---- file mappings ------------------------------------------------------------ */

/* Fills the page tables of the pages overlapping [p, p + len) of a mapping
 * (MADV_POPULATE_READ: reads what the page cache lacks), so first use costs no
 * page faults. Returns the bytes populated, 0 when refused (old kernel: the
 * pages then fault in on first use, as before). */
uint64_t st_mem_populate(const void *p, uint64_t len);
/* st_mem_populate for only the pages of [p, p + len) the page cache already
 * holds (mincore): never reads the disk. Returns the bytes populated. */
uint64_t st_mem_populate_cached(const void *p, uint64_t len);
/* Memory this process may fill: physical RAM, or less when the memory cgroup
 * holding it (v1 memory.limit_in_bytes or v2 memory.max, or an ancestor's) has
 * a lower limit. 0: unknown. */
uint64_t st_mem_limit(void);
/* Memory this process could fill now: the smaller of st_mem_limit() and the
 * kernel's MemAvailable (free + reclaimable page cache). 0: unknown. Both obey
 * STRATA_MEM_LIMIT=SIZE (pretend the machine has no more than SIZE: tests). */
uint64_t st_mem_available(void);
/* Drops this process's page-table entries for the whole pages inside
 * [p, p + len) of a file mapping (MADV_DONTNEED: the bytes stay readable, the
 * page cache keeps them, they no longer count in this process's RSS). Pages
 * shared with bytes outside the range are kept. */
void st_mem_drop_pages(const void *p, uint64_t len);

/* Where an ST_MEM_NODE allocation (or an st_mem_place_range range) was asked to live. */
typedef struct st_mem_placement {
    int node;   /* the node asked for */
    bool bound; /* mbind applied it (false: NUMA off, refused, or a node that does not exist here) */
} st_mem_placement;
/* The placement of the ST_MEM_NODE allocation or placed range holding ptr (the
 * narrowest): 0, or ST_ERR_NOT_FOUND (not such an allocation, or freed). */
int st_mem_placement_of(const void *ptr, st_mem_placement *out);

#endif
