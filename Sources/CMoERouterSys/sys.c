#define _GNU_SOURCE
#include "moe_router_sys.h"

#include <bsd/libutil.h>
#include <bsd/unistd.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

int mrs_sd_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof addr.sun_path) return -EINVAL;
    memcpy(addr.sun_path, path, len);
    if (path[0] == '@') addr.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
    int err = n < 0 ? -errno : 1;
    close(fd);
    return err;
}

void *mrs_pidfile_open(const char *path, pid_t *other_pid) {
    return pidfile_open(path, 0644, other_pid);
}

int mrs_pidfile_write(void *handle) { return pidfile_write((struct pidfh *)handle); }
int mrs_pidfile_remove(void *handle) { return pidfile_remove((struct pidfh *)handle); }

void mrs_proctitle_init(int argc, char **argv) { setproctitle_init(argc, argv, environ); }
void mrs_proctitle_set(const char *title) { setproctitle("%s", title); }

void mrs_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    pthread_setname_np(pthread_self(), buf);
}
