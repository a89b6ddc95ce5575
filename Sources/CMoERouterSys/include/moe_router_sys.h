/*
 * moe_router_sys.h — the few OS calls the daemon needs that Swift cannot make directly:
 * the sd_notify datagram, libbsd's pidfile and setproctitle, and thread names.
 */
#ifndef MOE_ROUTER_SYS_H
#define MOE_ROUTER_SYS_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sends `state` ("READY=1", "STATUS=...", "WATCHDOG=1", ...) to $NOTIFY_SOCKET.
 * Returns 1 when sent, 0 when NOTIFY_SOCKET is unset, -errno on failure. */
int mrs_sd_notify(const char *state);

/* libbsd pidfile: opens and locks `path` (0644). Returns an opaque handle or NULL with errno
 * set; when another process holds it, *other_pid receives its pid (errno EEXIST). */
void *mrs_pidfile_open(const char *path, pid_t *other_pid);
int mrs_pidfile_write(void *handle);
int mrs_pidfile_remove(void *handle);

/* libbsd setproctitle: call init once with main's argv, then set freely. */
void mrs_proctitle_init(int argc, char **argv);
void mrs_proctitle_set(const char *title);

/* Names the calling thread (15 characters at most). */
void mrs_thread_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif
