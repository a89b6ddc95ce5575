/*
 * host_emulation.cpp — the "device" of the MRH_HOST_EMULATION build (see hip_compat.h).
 *
 * A kernel's threads run as fibers on the calling OS thread, one warp at a time: each thread of
 * the warp runs until it reaches a warp collective (mrh_shfl_xor, mrh_shfl) or finishes, then
 * hands over to the next lane; when every thread of the warp has stopped, the collective is
 * resolved — each thread receives the value its source lane deposited *at that collective* —
 * and the threads run on to the next. So a kernel whose lanes read each other's values in the
 * wrong step, name the wrong lane, or call collectives from divergent code gets the answer (or
 * the abort) it would get on a GPU, not a quietly sequential one.
 *
 * Fibers start once per OS thread (ucontext) and then switch with __builtin_setjmp/longjmp,
 * which save and restore only the stack and frame pointers and a resume address (the compiler
 * saves the other registers around the setjmp): a switch costs nanoseconds, not a system call
 * or glibc's longjmp unwinding. Hot thread-locals use the initial-exec TLS model.
 */
#include "hip_compat.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <cstring>
#include <memory>

MRH_EMULATION_TLS thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace mrh_emulation {
namespace {

/* Enough for the thread-per-token kernel's 12 KB of scratch and moe_token.h's call chain. */
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 64 * 1024; /* at least a page on every Linux target */

/* A switch point: __builtin_setjmp's buffer (frame pointer, resume address, stack pointer). */
typedef void *Context[5];

struct Lane {
    Context context;
    void *stack = nullptr;
    bool finished = true;
    /* The collective this lane waits at (what == nullptr: none) and what it deposited there. */
    const char *what = nullptr;
    unsigned width = 0, src = 0;
    unsigned long long value = 0, result = 0;
};

/* The fibers of one OS thread: one per lane of a warp, reused by every warp and launch. */
struct Warp {
    Context scheduler;
    Lane lanes[MRH_WARP_SIZE];
    unsigned started = 0; /* lanes whose fiber exists */
    unsigned first = 0, count = 0; /* the threads the lanes run now: first .. first + count - 1 */
    Lane *current = nullptr;
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;

    ~Warp() {
        for (unsigned l = 0; l < started; l++) munmap(lanes[l].stack, kGuardBytes + kStackBytes);
    }
};

thread_local std::unique_ptr<Warp> this_thread_warp; /* owns; the raw pointer is for hot paths */
MRH_EMULATION_TLS thread_local Warp *warp_now = nullptr;

[[noreturn]] void fail(const char *what) {
    std::fprintf(stderr, "mrh host emulation: %s (block %u, threads %u..)\n", what, blockIdx.x,
                 threadIdx.x - threadIdx.x % MRH_WARP_SIZE);
    std::abort();
}

/* Saves the current fiber's place in `from`, jumps to `to`; returns when something jumps back to
 * `from`. The jump is a separate, never-inlined function: GCC does not allow __builtin_longjmp
 * in the function that calls __builtin_setjmp. */
__attribute__((noinline)) void jump(Context to) { __builtin_longjmp(to, 1); }
__attribute__((noinline)) void save_and_jump(Context from, Context to) {
    if (__builtin_setjmp(from) == 0) jump(to);
}
/* Called through a pointer the compiler cannot see through: other fibers run before the call
 * returns and clobber every register the ABI lets a call clobber, so callers must assume exactly
 * that — not the few registers that interprocedural register allocation (GCC's -fipa-ra) would
 * find save_and_jump itself using. */
void (*volatile switch_context)(Context, Context) = save_and_jump;

/* A lane has stopped (at a collective, or finished): the next lane of the warp runs, or, after
 * the last one, the scheduler. */
void stop(Warp *w, Lane *self) {
    const unsigned next = (unsigned)(self - w->lanes) + 1;
    if (next == w->count) {
        switch_context(self->context, w->scheduler);
    } else {
        threadIdx = dim3(w->first + next);
        w->current = &w->lanes[next];
        switch_context(self->context, w->lanes[next].context);
    }
}

/* A fiber's whole life: park at once (start_lane returns), then run one kernel thread per
 * resume-to-completion, forever. */
void lane_main() {
    Warp *w = warp_now;
    Lane *self = w->current;
    switch_context(self->context, w->scheduler);
    for (;;) {
        w->body(w->ctx);
        self->finished = true;
        stop(w, self);
    }
}

void start_lane(Warp *w, Lane *lane) {
    /* the lowest kGuardBytes stay inaccessible: an overflowing fiber faults instead of writing
     * into its neighbour's stack */
    lane->stack = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (lane->stack == MAP_FAILED || mprotect(lane->stack, kGuardBytes, PROT_NONE) != 0)
        fail("cannot map a fiber stack");
    ucontext_t start;
    getcontext(&start);
    start.uc_stack.ss_sp = static_cast<char *>(lane->stack) + kGuardBytes;
    start.uc_stack.ss_size = kStackBytes;
    start.uc_link = nullptr;
    makecontext(&start, lane_main, 0);
    w->current = lane;
    if (__builtin_setjmp(w->scheduler) == 0) setcontext(&start);
}

Warp *warp_of_this_thread() {
    if (!this_thread_warp) this_thread_warp.reset(new Warp());
    warp_now = this_thread_warp.get();
    return warp_now;
}

/* Every lane stopped at a collective: check they all stopped at the same one, then hand each
 * lane its source's deposit. */
void resolve(Lane *lanes, unsigned count) {
    for (unsigned l = 0; l < count; l++) {
        const char *what = lanes[l].what;
        if ((what != lanes[0].what && std::strcmp(what, lanes[0].what) != 0) || lanes[l].width != lanes[0].width)
            fail("the threads of a warp met at different collectives");
        if (lanes[l].src >= count) fail("a lane read from a lane outside the block");
    }
    for (unsigned l = 0; l < count; l++) lanes[l].result = lanes[lanes[l].src].value;
    for (unsigned l = 0; l < count; l++) lanes[l].what = nullptr;
}

/* Threads first .. first + count - 1 of the current block, one warp. */
void run_warp(Warp *w, unsigned first, unsigned count) {
    Lane *lanes = w->lanes;
    for (; w->started < count; w->started++) start_lane(w, &lanes[w->started]);
    w->first = first;
    w->count = count;
    for (unsigned l = 0; l < count; l++) lanes[l].finished = false;
    for (;;) {
        threadIdx = dim3(first);
        w->current = &lanes[0];
        switch_context(w->scheduler, lanes[0].context); /* lanes 0 .. count - 1 run in turn */
        unsigned finished = 0;
        for (unsigned l = 0; l < count; l++) finished += lanes[l].finished;
        if (finished == count) return;
        if (finished != 0) fail("some threads of a warp exited while others wait at a collective");
        resolve(lanes, count);
    }
}

} // namespace

unsigned long long exchange(unsigned long long value, unsigned src_lane, unsigned width, const char *what) {
    Warp *w = warp_now;
    if (!w || !w->current) fail("a warp collective outside a kernel launch");
    Lane *self = w->current;
    self->value = value;
    self->src = src_lane;
    self->width = width;
    self->what = what;
    stop(w, self);
    return self->result;
}

void launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx) {
    Warp *w = warp_of_this_thread();
    w->body = body;
    w->ctx = ctx;
    gridDim = grid;
    blockDim = block;
    for (unsigned b = 0; b < grid.x; b++) {
        blockIdx = dim3(b);
        for (unsigned first = 0; first < block.x; first += MRH_WARP_SIZE)
            run_warp(w, first, block.x - first < MRH_WARP_SIZE ? block.x - first : MRH_WARP_SIZE);
    }
    w->current = nullptr;
}

} // namespace mrh_emulation
