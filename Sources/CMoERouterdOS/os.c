#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <sys/resource.h>
#include "moe_routerd_os.h"

#include <malloc.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GUARD_SLOTS 4096

/* Slots are claimed with a CAS on `base`; the handler only reads. A slot is removed only when
 * no request uses its range, so no fault can race with removal. */
typedef struct {
    _Atomic(uintptr_t) base;
    _Atomic(size_t) length;
    atomic_int broken;
} guard_slot;

static guard_slot slots[GUARD_SLOTS];
static struct sigaction previous;
static atomic_int installed;

static void on_sigbus(int sig, siginfo_t *info, void *ctx) {
    uintptr_t addr = (uintptr_t)info->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t base = atomic_load(&slots[i].base);
        size_t length = atomic_load(&slots[i].length);
        if (base != 0 && addr >= base && addr - base < length) {
            int saved = errno;
            /* The client shrank its object: back the range with private zero pages. */
            void *p = mmap((void *)base, length, PROT_READ | PROT_WRITE,
                           MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            errno = saved;
            if (p != MAP_FAILED) {
                atomic_store(&slots[i].broken, 1);
                return;
            }
            break;
        }
    }
    /* Not ours: behave as if we had never been installed. */
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, ctx);
    } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != SIG_DFL) {
        previous.sa_handler(sig);
    } else {
        signal(SIGBUS, SIG_DFL);
        raise(SIGBUS);
    }
}

int mro_guard_install(void) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&installed, &expected, 1)) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) != 0) {
        atomic_store(&installed, 0);
        return errno;
    }
    return 0;
}

int mro_guard_add(void *base, size_t length) {
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t expected = 0;
        if (atomic_compare_exchange_strong(&slots[i].base, &expected, (uintptr_t)base)) {
            atomic_store(&slots[i].broken, 0);
            atomic_store(&slots[i].length, length);
            return i;
        }
    }
    return -1;
}

int mro_guard_broken(int slot) {
    if (slot < 0 || slot >= GUARD_SLOTS) return 0;
    return atomic_load(&slots[slot].broken);
}

void mro_guard_remove(int slot) {
    if (slot < 0 || slot >= GUARD_SLOTS) return;
    atomic_store(&slots[slot].length, 0);
    atomic_store(&slots[slot].broken, 0);
    atomic_store(&slots[slot].base, 0);
}

int mro_guard_capacity(void) { return GUARD_SLOTS; }

int mro_shm_open(const char *name, mro_shm_info *info) {
    int fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    info->fd = fd;
    info->uid = st.st_uid;
    info->mode = st.st_mode & 07777;
    info->size = st.st_size < 0 ? 0 : (uint64_t)st.st_size;
    info->dev = st.st_dev;
    info->ino = st.st_ino;
    info->is_regular = S_ISREG(st.st_mode) ? 1 : 0;
    return 0;
}

int mro_pin_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu >= 0) {
        CPU_SET(cpu, &set);
    } else {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET((int)i, &set);
    }
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

void mro_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}

int mro_unix_socket_alive(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) return 0;
    strcpy(addr.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return 0;
    int alive = connect(s, (struct sockaddr *)&addr, sizeof addr) == 0;
    close(s);
    return alive;
}

int mro_release_free_memory(void) { return malloc_trim(0); }

long mro_raise_fd_limit(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return -1;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &r);
        (void)getrlimit(RLIMIT_NOFILE, &r);
    }
    return r.rlim_cur == RLIM_INFINITY ? -1 : (long)r.rlim_cur;
}

long mro_fd_limit(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return -1;
    return (long)r.rlim_cur;
}

long mro_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') n++;
    }
    closedir(d);
    return n - 1; /* the directory's own fd */
}

/* ---- Out of file descriptors: shed connections instead of aborting ----------------------
 * libzmq 4.3.5 asserts (aborts the process) when accept() on an ipc listener fails with EMFILE
 * (src/ipc_listener.cpp), so a local peer opening connections faster than the daemon's fd limit
 * could kill it. This executable defines accept4/accept: the dynamic linker binds libzmq's calls
 * to them (an executable's definition comes first). When the process is out of descriptors,
 * the pending connection is taken with a reserved descriptor and closed at once (the peer sees
 * its connection closed; the listener does not stay readable, so nothing spins), and the call
 * reports ECONNABORTED, which libzmq ignores. This is the reserve-descriptor technique of
 * libuv and nginx. */

static int reserve_fd = -1;
static pthread_mutex_t reserve_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_ulong shed_connections;
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);

void mro_fd_reserve_init(void) {
    pthread_mutex_lock(&reserve_lock);
    if (reserve_fd < 0) reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pthread_mutex_unlock(&reserve_lock);
}

unsigned long mro_shed_connections(void) { return atomic_load(&shed_connections); }

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    if (!real_accept4) real_accept4 = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    if (!real_accept4) {
        errno = ENOSYS;
        return -1;
    }
    int s = real_accept4(fd, addr, len, flags);
    if (s >= 0 || (errno != EMFILE && errno != ENFILE)) return s;
    pthread_mutex_lock(&reserve_lock);
    if (reserve_fd >= 0) {
        close(reserve_fd);
        reserve_fd = -1;
        int shed = real_accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (shed >= 0) close(shed);
        reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    pthread_mutex_unlock(&reserve_lock);
    atomic_fetch_add(&shed_connections, 1);
    errno = ECONNABORTED;
    return -1;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) { return accept4(fd, addr, len, 0); }

int mro_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_ns >= 0 ? &ts : NULL, NULL, 0);
    return r == 0 || errno == EAGAIN ? 0 : -1;
}

int mro_futex_wake(uint32_t *word, int count) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}

int mro_futex_waitv(uint32_t *const *words, const uint32_t *expected, int count, int64_t timeout_ns) {
    struct futex_waitv w[FUTEX_WAITV_MAX];
    if (count < 1 || count > FUTEX_WAITV_MAX) return -1;
    for (int i = 0; i < count; i++)
        w[i] = (struct futex_waitv){.val = expected[i], .uaddr = (uintptr_t)words[i], .flags = FUTEX_32};
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t end = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + timeout_ns;
    ts.tv_sec = end / 1000000000;
    ts.tv_nsec = end % 1000000000;
    long r = syscall(SYS_futex_waitv, w, (unsigned)count, 0u, &ts, CLOCK_MONOTONIC);
    if (r >= 0) return (int)r;
    if (errno == EAGAIN) return 0;
    if (errno == ENOSYS) {
        /* Before Linux 5.16: sleep on the first word, briefly, so the others are looked at often. */
        mro_futex_wait(words[0], expected[0], timeout_ns < 1000000 ? timeout_ns : 1000000);
        return 0;
    }
    return -1;
}

uint64_t mro_random_u64(void) {
    uint64_t v = 0;
    while (v == 0)
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = mro_now_ns() ^ (uint64_t)getpid() << 32;
    return v;
}
