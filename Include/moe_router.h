/*
 * moe_router.h — everything a C or C++ host needs: the wire protocol (moe_router_wire.h) and the
 * client library's API (moe_router_client.h). Existing users keep including this one header.
 */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include "moe_router_wire.h"
#include "moe_router_client.h"

#endif /* MOE_ROUTER_H */
