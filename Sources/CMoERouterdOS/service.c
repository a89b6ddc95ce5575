/* The service manager's side of the OS shim: sd_notify, libbsd's pidfile and setproctitle. */
#define _GNU_SOURCE
#include "moe_routerd_os.h"

#include <bsd/libutil.h>
#include <bsd/unistd.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
extern char **environ;

int mro_sd_notify(const char *state) {
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

void *mro_pidfile_open(const char *path, pid_t *other_pid) {
    return pidfile_open(path, 0644, other_pid);
}

int mro_pidfile_write(void *handle) { return pidfile_write((struct pidfh *)handle); }
int mro_pidfile_remove(void *handle) { return pidfile_remove((struct pidfh *)handle); }

void mro_proctitle_init(int argc, char **argv) { setproctitle_init(argc, argv, environ); }
void mro_proctitle_set(const char *title) { setproctitle("%s", title); }

