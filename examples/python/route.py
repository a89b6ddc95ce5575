#!/usr/bin/env python3
"""Routes random logits through a moe-routerd layer, inline and via shared memory, and checks
that both agree. Usage: route.py [ENDPOINT [LAYER_NAME [TOKENS]]] (ENDPOINT "-" = default)."""
import sys

import numpy as np

from moe_router import Client, MoERouterError


def main(argv):
    endpoint = argv[1] if len(argv) > 1 and argv[1] != "-" else None
    name = argv[2] if len(argv) > 2 else "deepseek-v3"
    tokens = int(argv[3]) if len(argv) > 3 else 4

    with Client(endpoint) as client:
        print(f"{client.server.daemon_version} at {client.endpoint}, backend {client.server.backend}")
        for layer in client.layers():
            print(f"  layer {layer.id:2d} {layer.name:20s} {layer.method.label:20s} E={layer.num_experts:<4d} "
                  f"k={layer.top_k:<2d} gate={layer.gate_dtype.label} nonfinite={layer.nonfinite.label}")
        layer = client.layer(name)
        logits = np.random.default_rng(0).standard_normal((tokens, layer.num_experts)).astype(np.float32)

        weights, ids = client.route(layer, logits)  # inline: logits travel in the request

        with client.session(layer, max_tokens=tokens) as session:  # shared memory: zero copies
            session.input[:] = logits
            shm = session.route(tokens)
            same = np.array_equal(shm.ids, ids) and np.array_equal(shm.weights.view(np.uint32), weights.view(np.uint32))

        print(f"layer {layer.name} (id {layer.id}): token 0 -> experts "
              + " ".join(f"{i}:{w:.4f}" for i, w in zip(ids[0], weights[0])))
        print(f"inline and shm results {'identical' if same else 'DIFFER'}; "
              f"fallback_cast={shm.fallback_cast} nonfinite={shm.nonfinite_count}")
        return 0 if same else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except MoERouterError as e:
        print(f"route.py: {e}", file=sys.stderr)
        sys.exit(1)
