/* Names and explanations of moe_status values (Include/moe_router_wire.h): the one table that the
 * daemon (metrics labels) and the C client take them from. Compiling the header here also makes
 * its static asserts guard the package build. */
#include "moe_router_wire.h"

typedef struct { int status; const char *name; const char *message; } entry;

static const entry table[] = {
    {MOE_OK, "MOE_OK", "success"},
    {MOE_ERR_MALFORMED, "MOE_ERR_MALFORMED", "frame count or frame size is wrong for the operation"},
    {MOE_ERR_BAD_MAGIC, "MOE_ERR_BAD_MAGIC", "the request does not start with the protocol magic"},
    {MOE_ERR_BAD_VERSION, "MOE_ERR_BAD_VERSION", "protocol version not spoken by the daemon"},
    {MOE_ERR_UNKNOWN_OP, "MOE_ERR_UNKNOWN_OP", "unknown operation"},
    {MOE_ERR_UNKNOWN_LAYER, "MOE_ERR_UNKNOWN_LAYER", "no such layer"},
    {MOE_ERR_BAD_DTYPE, "MOE_ERR_BAD_DTYPE", "unknown dtype"},
    {MOE_ERR_SIZE_MISMATCH, "MOE_ERR_SIZE_MISMATCH", "a buffer length does not match tokens and the layer's shape"},
    {MOE_ERR_OUT_OF_BOUNDS, "MOE_ERR_OUT_OF_BOUNDS", "a buffer lies past the end of its segment"},
    {MOE_ERR_OVERFLOW, "MOE_ERR_OVERFLOW", "offset + length overflows"},
    {MOE_ERR_MISALIGNED, "MOE_ERR_MISALIGNED", "a buffer offset is not a multiple of its element size"},
    {MOE_ERR_OVERLAP, "MOE_ERR_OVERLAP", "buffers overlap"},
    {MOE_ERR_UNKNOWN_HANDLE, "MOE_ERR_UNKNOWN_HANDLE", "shared-memory handle not registered by this client"},
    {MOE_ERR_SHM_REFUSED, "MOE_ERR_SHM_REFUSED", "shared memory is only available over ipc"},
    {MOE_ERR_SHM_OWNER, "MOE_ERR_SHM_OWNER", "segment is owned by another user"},
    {MOE_ERR_SHM_PERMISSIONS, "MOE_ERR_SHM_PERMISSIONS", "segment is world-writable or not a regular object"},
    {MOE_ERR_SHM_OPEN, "MOE_ERR_SHM_OPEN", "the daemon could not open or map the segment"},
    {MOE_ERR_SHM_SIZE, "MOE_ERR_SHM_SIZE", "segment size differs from the registered size"},
    {MOE_ERR_SHM_TRUNCATED, "MOE_ERR_SHM_TRUNCATED", "segment shrank after registration; it was dropped"},
    {MOE_ERR_SHM_NAME, "MOE_ERR_SHM_NAME", "invalid shared-memory name"},
    {MOE_ERR_NONFINITE, "MOE_ERR_NONFINITE", "the layer rejects NaN/Inf input"},
    {MOE_ERR_BUSY, "MOE_ERR_BUSY", "the daemon's queue is full; retry later"},
    {MOE_ERR_DEADLINE, "MOE_ERR_DEADLINE", "the request waited past its deadline"},
    {MOE_ERR_TOO_LARGE, "MOE_ERR_TOO_LARGE", "request exceeds the daemon's size limits"},
    {MOE_ERR_LIMIT, "MOE_ERR_LIMIT", "too many registrations"},
    {MOE_ERR_SHUTTING_DOWN, "MOE_ERR_SHUTTING_DOWN", "the daemon is shutting down"},
    {MOE_ERR_BAD_FIELD, "MOE_ERR_BAD_FIELD", "a reserved field is not zero or a field value is unknown"},
    {MOE_ERR_INTERNAL, "MOE_ERR_INTERNAL", "internal daemon error"},
    {MOE_ERR_CLIENT_IO, "MOE_ERR_CLIENT_IO", "socket error in the client"},
    {MOE_ERR_CLIENT_TIMEOUT, "MOE_ERR_CLIENT_TIMEOUT", "no answer from the daemon in time"},
    {MOE_ERR_CLIENT_PROTOCOL, "MOE_ERR_CLIENT_PROTOCOL", "malformed answer from the daemon"},
    {MOE_ERR_CLIENT_ARG, "MOE_ERR_CLIENT_ARG", "invalid argument"},
    {MOE_ERR_CLIENT_SYS, "MOE_ERR_CLIENT_SYS", "system call failed in the client"},
};

static const entry *find(int status) {
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].status == status) return &table[i];
    return 0;
}

const char *moe_status_name(int status) {
    const entry *e = find(status);
    return e ? e->name : "MOE_ERR_UNKNOWN_STATUS";
}

const char *moe_status_message(int status) {
    const entry *e = find(status);
    return e ? e->message : "unknown status code";
}
