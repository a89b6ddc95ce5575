/* The client library's SwiftPM face: the API is declared in Include/moe_router.h. */
#include "moe_router.h"
