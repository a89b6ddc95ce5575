/* Compiles Include/moe_router.h once inside the package so its static asserts guard the build. */
#include "moe_router.h"
