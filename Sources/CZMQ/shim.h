#ifndef MOE_ROUTER_CZMQ_SHIM_H
#define MOE_ROUTER_CZMQ_SHIM_H
#include <zmq.h>
#endif
