/* CPU memory layer (see mem.h): budgets, anonymous mappings placed with mbind,
 * transparent huge pages. Owns every byte of model DRAM the CPU side allocates;
 * must never exceed a budget, and never fail an allocation only because NUMA
 * or huge pages were refused (a warning, once, then plain memory). */
#include "cpu/mem.h"

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/base.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL */
#endif

#define PAGE_4K 4096ull
#define PAGE_2M (2ull << 20)

/* ---- budgets --------------------------------------------------------------- */

struct st_budget {
    char name[64];
    uint64_t limit;
    _Atomic uint64_t used, peak;
};

int st_budget_new(const char *name, uint64_t limit, st_budget **out) {
    *out = NULL;
    st_budget *b = calloc(1, sizeof *b);
    if (!b) return st_error(ST_ERR_NOMEM, "budget %s: out of memory", name ? name : "?");
    snprintf(b->name, sizeof b->name, "%s", name && *name ? name : "unnamed");
    b->limit = limit;
    *out = b;
    return 0;
}

void st_budget_free(st_budget *b) {
    if (!b) return;
    uint64_t u = atomic_load(&b->used);
    if (u) ST_DEBUG("budget %s freed with %llu bytes still charged", b->name, (unsigned long long)u);
    free(b);
}

int st_budget_reserve(st_budget *b, uint64_t bytes) {
    if (!b) return 0;
    uint64_t u = atomic_load(&b->used);
    do {
        if (bytes > b->limit || u > b->limit - bytes) {
            char req[32], used[32], lim[32], peak[32];
            return st_error(ST_ERR_BUDGET, "budget %s: cannot take %s: %s of %s in use (peak %s)", b->name,
                            st_fmt_size(bytes, req, sizeof req), st_fmt_size(u, used, sizeof used),
                            st_fmt_size(b->limit, lim, sizeof lim),
                            st_fmt_size(atomic_load(&b->peak), peak, sizeof peak));
        }
    } while (!atomic_compare_exchange_weak(&b->used, &u, u + bytes));
    uint64_t now = u + bytes, p = atomic_load(&b->peak);
    while (p < now && !atomic_compare_exchange_weak(&b->peak, &p, now)) {}
    return 0;
}

void st_budget_release(st_budget *b, uint64_t bytes) {
    if (!b) return;
    uint64_t before = atomic_fetch_sub(&b->used, bytes);
    ST_ASSERT(before >= bytes); /* returning more than was charged is a bug */
}

const char *st_budget_name(const st_budget *b) { return b->name; }
uint64_t st_budget_limit(const st_budget *b) { return b->limit; }
uint64_t st_budget_used(const st_budget *b) { return atomic_load(&((st_budget *)b)->used); }
uint64_t st_budget_peak(const st_budget *b) { return atomic_load(&((st_budget *)b)->peak); }
uint64_t st_budget_available(const st_budget *b) { return b->limit - st_budget_used(b); }

/* ---- what the system allows, probed once ------------------------------------- */

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int numa_nodes_probed;     /* 0: no NUMA */
static struct bitmask *mems_allowed;
static bool thp_ok;
static _Atomic int numa_enabled = -1; /* -1: from STRATA_NUMA */
static atomic_flag warned_numa = ATOMIC_FLAG_INIT, warned_mbind = ATOMIC_FLAG_INIT,
                   warned_thp = ATOMIC_FLAG_INIT;

static void probe(void) {
    if (numa_available() >= 0) {
        numa_nodes_probed = numa_max_node() + 1;
        mems_allowed = numa_get_mems_allowed();
    }
    /* "always [madvise] never": the bracketed word is the mode (sysfs: no st_read_file, its size lies) */
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char line[128] = "";
    if (f) {
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
    }
    thp_ok = strstr(line, "[always]") || strstr(line, "[madvise]");
}

static bool numa_on(void) {
    pthread_once(&probe_once, probe);
    int e = atomic_load(&numa_enabled);
    if (e < 0) {
        const char *env = getenv("STRATA_NUMA");
        e = !(env && (!strcmp(env, "0") || !strcmp(env, "off")));
        atomic_store(&numa_enabled, e);
    }
    return e && numa_nodes_probed > 0;
}

int st_mem_numa_nodes(void) { return numa_on() ? numa_nodes_probed : 0; }
bool st_mem_hugepages(void) { pthread_once(&probe_once, probe); return thp_ok; }
void st_mem_set_numa_enabled(bool on) { atomic_store(&numa_enabled, on ? 1 : 0); }

static _Atomic int virtual_nodes;
void st_mem_set_virtual_nodes(int n) { atomic_store(&virtual_nodes, n > 0 ? n : 0); }

/* ---- placement records: ST_MEM_NODE allocations (few: slot caches), by address ------ */

typedef struct placed { uintptr_t lo, hi; st_mem_placement where; } placed;
static pthread_mutex_t placed_mu = PTHREAD_MUTEX_INITIALIZER;
static placed *placed_list;
static int n_placed, placed_cap;

static void record_placement(void *p, uint64_t len, int node, bool bound) {
    pthread_mutex_lock(&placed_mu);
    if (n_placed == placed_cap) {
        int cap = placed_cap ? placed_cap * 2 : 16;
        placed *l = realloc(placed_list, (size_t)cap * sizeof *l);
        if (l) { placed_list = l; placed_cap = cap; }
    }
    if (n_placed < placed_cap) /* out of memory: the record is lost, the allocation is not */
        placed_list[n_placed++] = (placed){(uintptr_t)p, (uintptr_t)p + len, {node, bound}};
    pthread_mutex_unlock(&placed_mu);
}

/* Every record inside [p, p + len): the allocation's own and its ranges' (st_mem_place_range). */
static void forget_placement(void *p, uint64_t len) {
    pthread_mutex_lock(&placed_mu);
    for (int i = 0; i < n_placed;)
        if (placed_list[i].lo >= (uintptr_t)p && placed_list[i].lo < (uintptr_t)p + len) placed_list[i] = placed_list[--n_placed];
        else i++;
    pthread_mutex_unlock(&placed_mu);
}

int st_mem_placement_of(const void *ptr, st_mem_placement *out) {
    int rc = ST_ERR_NOT_FOUND;
    uintptr_t narrowest = UINTPTR_MAX;
    pthread_mutex_lock(&placed_mu);
    for (int i = 0; i < n_placed; i++) /* a range placed inside an allocation is more specific than it */
        if ((uintptr_t)ptr >= placed_list[i].lo && (uintptr_t)ptr < placed_list[i].hi &&
            placed_list[i].hi - placed_list[i].lo < narrowest) {
            *out = placed_list[i].where;
            narrowest = placed_list[i].hi - placed_list[i].lo;
            rc = 0;
        }
    pthread_mutex_unlock(&placed_mu);
    return rc;
}

/* ---- allocations --------------------------------------------------------------- */

uint64_t st_mem_charge(uint64_t bytes) { return ST_ALIGN_UP(bytes, PAGE_4K); }

/* Anonymous mapping of len bytes aligned to `align` (trims the over-mapping). */
static void *map_aligned(uint64_t len, uint64_t align) {
    uint64_t span = len + (align > PAGE_4K ? align : 0);
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (span == len) return p;
    char *a = (char *)ST_ALIGN_UP((uintptr_t)p, align);
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + len < p + span) munmap(a + len, (size_t)(p + span - (a + len)));
    return a;
}

static bool node_usable(int node) {
    return numa_on() && node >= 0 && node < numa_nodes_probed && numa_bitmask_isbitset(mems_allowed, (unsigned)node);
}

/* Returns whether the policy was applied. */
static bool place(void *p, uint64_t len, st_mem_policy policy, int node) {
    if (policy == ST_MEM_DEFAULT) return false;
    if (!numa_on()) {
        if (!atomic_flag_test_and_set(&warned_numa))
            ST_WARN("NUMA placement unavailable (%s): memory goes where the kernel first puts it",
                    numa_nodes_probed ? "disabled by STRATA_NUMA" : "numa_available() < 0");
        return false;
    }
    if (policy == ST_MEM_NODE && !node_usable(node)) return false; /* a synthetic topology's node: recorded only */
    unsigned long mask[16] = {0}; /* up to 1024 nodes */
    unsigned long maxnode = sizeof mask * 8;
    int mode;
    if (policy == ST_MEM_NODE) {
        mode = MPOL_PREFERRED; /* not BIND: a full node spills over instead of faulting */
        mask[node / 64] |= 1ul << (node % 64);
    } else if (policy == ST_MEM_INTERLEAVE) {
        mode = MPOL_INTERLEAVE;
        for (int n = 0; n < numa_nodes_probed && n < (int)maxnode; n++)
            if (numa_bitmask_isbitset(mems_allowed, (unsigned)n)) mask[n / 64] |= 1ul << (n % 64);
    } else {
        mode = MPOL_LOCAL;
        maxnode = 0;
    }
    if (mbind(p, len, mode, maxnode ? mask : NULL, maxnode, 0) == 0) return true;
    if (!atomic_flag_test_and_set(&warned_mbind)) ST_WARN("mbind refused (%s): NUMA placement is not applied", strerror(errno));
    return false;
}

int st_mem_alloc(st_budget *b, uint64_t bytes, st_mem_policy policy, int node, void **out) {
    *out = NULL;
    const char *bn = b ? b->name : "(none)";
    if (bytes == 0) return st_error(ST_ERR_INVALID, "budget %s: allocation of 0 bytes", bn);
    if ((int)policy < ST_MEM_DEFAULT || policy > ST_MEM_LOCAL)
        return st_error(ST_ERR_INVALID, "budget %s: unknown memory policy %d", bn, (int)policy);
    if (policy == ST_MEM_NODE) {
        bool ok = node >= 0;
        if (ok && numa_on()) ok = node_usable(node);
        if (!ok && node >= 0 && node < atomic_load(&virtual_nodes)) ok = true;
        if (!ok)
            return st_error(ST_ERR_INVALID, "budget %s: NUMA node %d is not one this process may use (nodes 0-%d)",
                            bn, node, (numa_on() ? numa_nodes_probed : 1) - 1);
    }
    uint64_t len = st_mem_charge(bytes);
    if (len < bytes || len > (uint64_t)SIZE_MAX / 2)
        return st_error(ST_ERR_NOMEM, "budget %s: %llu bytes cannot be mapped", bn, (unsigned long long)bytes);
    int rc = st_budget_reserve(b, len);
    if (rc) return rc;
    bool huge = len >= PAGE_2M;
    void *p = map_aligned(len, huge ? PAGE_2M : PAGE_4K);
    if (!p) {
        int e = errno;
        st_budget_release(b, len);
        char sz[32];
        return st_error(ST_ERR_NOMEM, "budget %s: mapping %s failed: %s", bn, st_fmt_size(len, sz, sizeof sz),
                        strerror(e));
    }
    if (huge && st_mem_hugepages() && madvise(p, len, MADV_HUGEPAGE) != 0 && !atomic_flag_test_and_set(&warned_thp))
        ST_WARN("madvise(MADV_HUGEPAGE) refused (%s): using 4 KiB pages", strerror(errno));
    bool bound = place(p, len, policy, node);
    if (policy == ST_MEM_NODE) record_placement(p, len, node, bound);
    *out = p;
    return 0;
}

int st_mem_place_range(void *p, uint64_t len, int node) {
    if (!p || !len || ((uintptr_t)p | len) & (PAGE_4K - 1))
        return st_error(ST_ERR_INVALID, "memory range %p + %llu: not whole 4 KiB pages", p, (unsigned long long)len);
    bool ok = node >= 0 && (numa_on() ? node_usable(node) : true);
    if (!ok && node >= 0 && node < atomic_load(&virtual_nodes)) ok = true;
    if (!ok)
        return st_error(ST_ERR_INVALID, "NUMA node %d is not one this process may use (nodes 0-%d)", node,
                        (numa_on() ? numa_nodes_probed : 1) - 1);
    record_placement(p, len, node, place(p, len, ST_MEM_NODE, node));
    return 0;
}

void st_mem_free(st_budget *b, void *ptr, uint64_t bytes) {
    if (!ptr) return;
    uint64_t len = st_mem_charge(bytes);
    forget_placement(ptr, len);
    munmap(ptr, len);
    st_budget_release(b, len);
}

/* ---- file mappings ------------------------------------------------------------- */

uint64_t st_mem_populate(const void *p, uint64_t len) {
    if (!p || !len) return 0;
    const uintptr_t lo = (uintptr_t)p & ~(uintptr_t)(PAGE_4K - 1), hi = ST_ALIGN_UP((uintptr_t)p + len, PAGE_4K);
    if (madvise((void *)lo, hi - lo, MADV_POPULATE_READ) != 0) {
        ST_DEBUG("madvise(MADV_POPULATE_READ) refused (%s): pages fault in on first use", strerror(errno));
        return 0;
    }
    return hi - lo;
}

uint64_t st_mem_populate_cached(const void *p, uint64_t len) {
    if (!p || !len) return 0;
    const uintptr_t lo = (uintptr_t)p & ~(uintptr_t)(PAGE_4K - 1), hi = ST_ALIGN_UP((uintptr_t)p + len, PAGE_4K);
    uint64_t done = 0;
    unsigned char vec[512]; /* pages per mincore call: 2 MiB */
    for (uintptr_t a = lo; a < hi;) {
        const uintptr_t end = ST_MIN(hi, a + sizeof vec * PAGE_4K);
        const size_t n = (end - a) / PAGE_4K;
        if (mincore((void *)a, end - a, vec) != 0) return done + st_mem_populate((void *)a, hi - a); /* cannot tell */
        for (size_t i = 0; i < n;) { /* each run of resident pages */
            size_t j = i;
            while (j < n && (vec[j] & 1)) j++;
            if (j > i) done += st_mem_populate((void *)(a + i * PAGE_4K), (j - i) * PAGE_4K);
            i = j + 1;
        }
        a = end;
    }
    return done;
}

void st_mem_drop_pages(const void *p, uint64_t len) {
    if (!p || !len) return;
    const uintptr_t lo = ST_ALIGN_UP((uintptr_t)p, PAGE_4K), hi = ((uintptr_t)p + len) & ~(uintptr_t)(PAGE_4K - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED); /* best effort: only RSS is at stake */
}

/* A cgroup limit file's value; UINT64_MAX when absent, unreadable or "max". */
static uint64_t read_limit(const char *path) {
    FILE *f = fopen(path, "r");
    char buf[64] = "";
    if (!f) return UINT64_MAX;
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    return end == buf ? UINT64_MAX : (uint64_t)v;
}

/* The lowest limit named `file` on the cgroup path `dir` (under root) and its ancestors. */
static uint64_t cgroup_limit(const char *root, const char *dir, const char *file) {
    char path[512], sub[400];
    snprintf(sub, sizeof sub, "%s", dir);
    uint64_t lim = UINT64_MAX;
    for (;;) {
        snprintf(path, sizeof path, "%s%s/%s", root, strcmp(sub, "/") ? sub : "", file);
        lim = ST_MIN(lim, read_limit(path));
        char *slash = strrchr(sub, '/');
        if (!slash || slash == sub) break;
        *slash = 0;
    }
    snprintf(path, sizeof path, "%s/%s", root, file);
    return ST_MIN(lim, read_limit(path));
}

/* STRATA_MEM_LIMIT=SIZE: pretend the machine has no more memory than that
 * (tests of the defaults that follow from it); UINT64_MAX when unset. */
static uint64_t pretend_limit(void) {
    const char *v = getenv("STRATA_MEM_LIMIT");
    uint64_t b;
    if (!v || !*v) return UINT64_MAX;
    if (st_parse_size(v, 0, "STRATA_MEM_LIMIT", &b) || !b) {
        ST_WARN("STRATA_MEM_LIMIT='%s' is not a size: ignored", v);
        st_error_clear();
        return UINT64_MAX;
    }
    return b;
}

uint64_t st_mem_limit(void) {
    const long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    uint64_t lim = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
    const uint64_t pretend = pretend_limit();
    if (pretend != UINT64_MAX && (!lim || pretend < lim)) lim = pretend;
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        const char *ctrl = c1 + 1, *dir = c2 + 1;
        uint64_t cg = UINT64_MAX;
        if (!strcmp(line, "0") && !*ctrl) cg = cgroup_limit("/sys/fs/cgroup", dir, "memory.max");
        else if (strstr(ctrl, "memory")) cg = cgroup_limit("/sys/fs/cgroup/memory", dir, "memory.limit_in_bytes");
        if (cg < (1ull << 60) && (!lim || cg < lim)) lim = cg; /* v1 "unlimited" is near 2^63 */
    }
    if (f) fclose(f);
    return lim;
}

/* /proc/meminfo's MemAvailable (free memory plus what the kernel can reclaim
 * without swapping, e.g. clean page cache); 0 when unreadable. */
static uint64_t meminfo_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    if (f) fclose(f);
    return (uint64_t)kib * 1024;
}

uint64_t st_mem_available(void) {
    const uint64_t lim = st_mem_limit(), avail = meminfo_available();
    if (!avail) return lim;
    return lim && lim < avail ? lim : avail;
}
