/*
 * alloc_count — an LD_PRELOAD shim that counts heap allocations, for
 * `moe-router-kernel-bench --count-allocations` (and the test that runs it).
 *
 * malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign and valloc are counted while
 * counting is on, then forwarded to the C library's own. The counter is read and switched
 * through moe_alloc_count() / moe_alloc_count_enable(), which the bench looks up with dlsym.
 *
 *   cc -O2 -shared -fPIC tests/c/alloc_count.c -o alloc_count.so -ldl
 *   LD_PRELOAD=./alloc_count.so moe-router-kernel-bench --count-allocations
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static atomic_llong count;
static atomic_int enabled;

long long moe_alloc_count(void) { return atomic_load(&count); }
void moe_alloc_count_enable(int on) { atomic_store(&enabled, on); }

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);

/* dlsym may itself call calloc before real_calloc is known: serve that from a static arena. */
static char bootstrap[4096];
static size_t bootstrap_used;

static _Thread_local int resolving;

static void resolve(void) {
    static atomic_int done;
    if (atomic_load(&done)) return;
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_valloc = dlsym(RTLD_NEXT, "valloc");
    resolving = 0;
    atomic_store(&done, 1);
}

static inline void note(void) {
    if (atomic_load_explicit(&enabled, memory_order_relaxed)) atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
}

void *malloc(size_t n) {
    if (!real_malloc) resolve();
    note();
    return real_malloc(n);
}

void *calloc(size_t a, size_t b) {
    if (!real_calloc && !resolving) resolve();
    if (!real_calloc) {
        /* during resolve(): dlsym's own allocation */
        size_t n = (a * b + 15) & ~(size_t)15;
        if (bootstrap_used + n > sizeof bootstrap) return NULL;
        void *p = bootstrap + bootstrap_used;
        bootstrap_used += n;
        memset(p, 0, n);
        return p;
    }
    note();
    return real_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    if (!real_realloc) resolve();
    note();
    return real_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (!real_posix_memalign) resolve();
    note();
    return real_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n) {
    if (!real_aligned_alloc) resolve();
    note();
    return real_aligned_alloc(align, n);
}

void *memalign(size_t align, size_t n) {
    if (!real_memalign) resolve();
    note();
    return real_memalign(align, n);
}

void *valloc(size_t n) {
    if (!real_valloc) resolve();
    note();
    return real_valloc(n);
}

void free(void *p) {
    static void (*real_free)(void *);
    if ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof bootstrap) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}
