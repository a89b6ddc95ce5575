/*
 * moe_routerd_os.h — the few OS operations moe-routerd needs that Swift cannot express well:
 * a SIGBUS guard for client-owned shared memory, shm opening with its metadata, thread names,
 * a liveness probe for an existing ipc socket file, and the service manager's interfaces
 * (sd_notify, libbsd's pidfile and setproctitle). The daemon's one C shim.
 */
#ifndef MOE_ROUTERD_OS_H
#define MOE_ROUTERD_OS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Installs the process-wide SIGBUS handler (idempotent). A fault inside a guarded range
 * replaces the whole range with anonymous zero pages (so the faulting access and every later
 * one succeed), and marks the range broken; any other SIGBUS gets the previous disposition.
 * Returns 0 or an errno. */
int mro_guard_install(void);
/* Guards [base, base+length); returns a slot >= 0, or -1 when all slots are taken. */
int mro_guard_add(void *base, size_t length);
/* Whether the range in `slot` faulted since it was added. */
int mro_guard_broken(int slot);
/* Forgets `slot` (call before munmap). */
void mro_guard_remove(int slot);
/* Maximum simultaneously guarded ranges. */
int mro_guard_capacity(void);

typedef struct mro_shm_info {
    int fd;
    uint32_t uid;
    uint32_t mode;
    uint64_t size;
    uint64_t dev;
    uint64_t ino;
    int is_regular;
} mro_shm_info;

/* shm_open(name, O_RDWR|O_NOFOLLOW|O_CLOEXEC) + fstat. Returns 0 or an errno. */
int mro_shm_open(const char *name, mro_shm_info *info);

/* Names the calling thread (15 characters kept). */
void mro_set_thread_name(const char *name);
/* Restricts the calling thread to CPU `cpu`, or (cpu < 0) lets it run on every online CPU.
 * Threads and processes it creates afterwards inherit the mask. 0, or an errno value. */
int mro_pin_thread(int cpu);

/* 1 when something accepts connections on the unix socket at `path`, 0 when not (stale file
 * or none). */
int mro_unix_socket_alive(const char *path);

/* Gives the C heap's free pages back to the system (glibc malloc_trim(0), every arena): after
 * a burst of large messages glibc otherwise keeps them mapped. 1 when memory was released. */
int mro_release_free_memory(void);

/* Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force. */
long mro_raise_fd_limit(void);
/* The soft RLIMIT_NOFILE now (it can be lowered from outside: prlimit). */
long mro_fd_limit(void);
/* Opens the descriptor kept in reserve for shedding connections when the process runs out
 * (os.c: accept4/accept). Call once at start-up. */
void mro_fd_reserve_init(void);
/* Connections closed unaccepted because the process was out of descriptors. */
unsigned long mro_shed_connections(void);
/* File descriptors open in this process (counts /proc/self/fd; -1 if unreadable). */
long mro_open_fds(void);

/* Monotonic clock in nanoseconds. (This and the word operations below are inline: each is
 * called a few times per channel request and per spin round, where a call costs a share.) */
static inline uint64_t mro_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Channels (issue 18): words in a segment shared with another process.
 * mro_futex_wait sleeps while *word == expected, at most timeout_ns; returns 0 when woken or the
 * word already differs, -1 on timeout or a signal. A shared (not FUTEX_PRIVATE) futex: the
 * client sleeps on the same physical page. mro_futex_wake wakes up to `count` waiters. */
int mro_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
int mro_futex_wake(uint32_t *word, int count);
/* Sleeps while every words[i] == expected[i] (count <= 128), at most timeout_ns: returns the index
 * of a word that was woken (0 also when one already differed), -1 on timeout or a signal. Shared
 * futexes, like mro_futex_wait. Without futex_waitv (Linux < 5.16) it sleeps at most 1 ms on
 * words[0] and returns 0: the caller looks at every word again. */
int mro_futex_waitv(uint32_t *const *words, const uint32_t *expected, int count, int64_t timeout_ns);
/* Sequentially consistent load and store of a shared 32-bit word (the doorbell's Dekker pair:
 * "store seq, then load the other side's sleeping flag" on both sides). */
static inline uint32_t mro_load_u32(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_SEQ_CST); }
static inline void mro_store_u32(uint32_t *word, uint32_t value) { __atomic_store_n(word, value, __ATOMIC_SEQ_CST); }
static inline void mro_add_u32(uint32_t *word, uint32_t value) { __atomic_fetch_add(word, value, __ATOMIC_SEQ_CST); }
/* A spin-wait hint (x86 pause). */
static inline void mro_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}
/* 64 random bits (getrandom), never 0. */
uint64_t mro_random_u64(void);

/* Sends `state` ("READY=1", "STATUS=...", "WATCHDOG=1", ...) to $NOTIFY_SOCKET.
 * Returns 1 when sent, 0 when NOTIFY_SOCKET is unset, -errno on failure. */
int mro_sd_notify(const char *state);

/* libbsd pidfile: opens and locks `path` (0644). Returns an opaque handle or NULL with errno
 * set; when another process holds it, *other_pid receives its pid (errno EEXIST). */
void *mro_pidfile_open(const char *path, pid_t *other_pid);
int mro_pidfile_write(void *handle);
int mro_pidfile_remove(void *handle);

/* libbsd setproctitle: call init once with main's argv, then set freely. */
void mro_proctitle_init(int argc, char **argv);
void mro_proctitle_set(const char *title);

#ifdef __cplusplus
}
#endif

#endif
