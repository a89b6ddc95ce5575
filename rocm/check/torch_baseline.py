"""PyTorch eager routing on the same GPU: the baseline scripts/gpu-check.sh sets beside the
routing kernels.

Each method is written the way vLLM writes it in eager mode; the biased grouped method
(deepseek-v3, kimi-k2, ...) is vLLM's `grouped_topk` with `e_score_correction_bias`: sigmoid,
+ bias, group score = sum of the top 2, top groups, mask, top-k, gather the unbiased scores,
renormalise, x rsf. A hash-routed layer (deepseek-v4-hash: `vocab` > 0) is DeepSeek-V4's hash
gate: ids = tid2eid[token id], weights = the scores gathered at them, renormalised, x rsf (the
table is the same synthetic one the kernels use; its values do not change the work done). The
layer shapes come from `kernel_timing --list` (rocm/check/layers.h), so
they are the ones the kernels are timed on.

Prints, per layer and token count, "torch<TAB>layer<TAB>tokens<TAB>kernel_us<TAB>round_trip_us":
kernel_us is the mean over back-to-back calls on device-resident logits between two CUDA events;
round_trip_us the median wall clock of host logits -> device -> route -> weights and ids on the
host. With --device cpu (a dry run where there is no GPU) both are wall clock.
"""
import argparse
import statistics
import sys
import time

import torch


class Layer:
    def __init__(self, line):
        f = line.rstrip("\n").split("\t")
        self.name, self.method = f[0], f[1]
        self.E, self.k, self.G, self.Gk = (int(v) for v in f[2:6])
        self.scoring, self.renormalize, self.rsf, self.biased = f[6], f[7] == "1", float(f[8]), f[9] == "1"
        self.vocab = int(f[11]) if len(f) > 11 else 0


def score(x, layer):
    return {"softmax": lambda: torch.softmax(x, dim=-1), "sigmoid": x.sigmoid,
            "sqrtsoftplus": lambda: torch.nn.functional.softplus(x, threshold=20).sqrt(),
            "none": lambda: x}[layer.scoring]()


def grouped_topk(x, layer, bias):
    """vLLM's grouped_topk (eager), biased ("noaux_tc") or not."""
    scores = score(x, layer)
    tokens = x.shape[0]
    if bias is not None:
        original = scores
        scores = scores + bias
        group_scores = scores.view(tokens, layer.G, -1).topk(2, dim=-1)[0].sum(dim=-1)
    else:
        group_scores = scores.view(tokens, layer.G, -1).max(dim=-1).values
    group_idx = torch.topk(group_scores, k=layer.Gk, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(tokens, layer.G, layer.E // layer.G).reshape(tokens, -1)
    masked = scores.masked_fill(~score_mask.bool(), float("-inf"))
    if bias is not None:
        ids = torch.topk(masked, k=layer.k, dim=-1, sorted=False)[1]
        weights = original.gather(1, ids)
    else:
        weights, ids = torch.topk(masked, k=layer.k, dim=-1, sorted=False)
    if layer.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * layer.rsf, ids.to(torch.int32)


def hash_gate(x, layer, table, token_ids):
    """DeepSeek-V4's hash gate as its reference writes it: a table lookup, then the scores there."""
    ids = table[token_ids]
    weights = score(x, layer).gather(1, ids)
    if layer.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * layer.rsf, ids.to(torch.int32)


def softmax_topk(x, layer, bias):
    weights, ids = torch.topk(torch.softmax(x, dim=-1), k=layer.k, dim=-1)
    if layer.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * layer.rsf, ids.to(torch.int32)


def topk_softmax(x, layer, bias):
    values, ids = torch.topk(x, k=layer.k, dim=-1)
    return torch.softmax(values, dim=-1) * layer.rsf, ids.to(torch.int32)


def llama4_top1(x, layer, bias):
    values, ids = torch.topk(x, k=layer.k, dim=-1)
    return values.sigmoid(), ids.to(torch.int32)


METHODS = {
    "softmax_topk": softmax_topk,
    "topk_softmax": topk_softmax,
    "grouped_topk": grouped_topk,
    "biased_grouped_topk": grouped_topk,
    "biased_topk": grouped_topk,  # G = Gk = 1
    "llama4_top1": llama4_top1,
}


def reps_for(tokens):
    return 200 if tokens <= 4096 else 50 if tokens <= 16384 else 20


def time_layer(layer, tokens, device):
    gen = torch.Generator().manual_seed(42)
    host = torch.randn(tokens, layer.E, generator=gen, dtype=torch.float32)
    if layer.vocab > 0:
        # The table lives on the device (built with the model); token ids travel with each call.
        table = torch.randint(0, layer.E, (layer.vocab, layer.k), generator=gen, dtype=torch.int64).to(device)
        host_ids = torch.randint(0, layer.vocab, (tokens,), generator=gen, dtype=torch.int64)
        device_ids = host_ids.to(device)
        bias = None

        def route(x, layer, bias, ids=None):
            return hash_gate(x, layer, table, device_ids if ids is None else ids)

        def upload(h):
            return h.to(device), host_ids.to(device)
    else:
        method = METHODS[layer.method]

        def route(x, layer, bias, ids=None):
            return method(x, layer, bias)

        def upload(h):
            return h.to(device), None
        # bias values do not change the work done; the layer's own are the kernels' business
        bias = (torch.randn(layer.E, generator=gen) * 0.05).to(device) if layer.biased else None
    x = host.to(device)
    reps = reps_for(tokens)
    for _ in range(5):
        route(x, layer, bias)
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            route(x, layer, bias)
        stop.record()
        stop.synchronize()
        kernel_us = start.elapsed_time(stop) * 1000.0 / reps
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            route(x, layer, bias)
        kernel_us = (time.perf_counter() - t0) * 1e6 / reps
    trips = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x_up, ids_up = upload(host)
        weights, ids = route(x_up, layer, bias, ids_up)
        weights, ids = weights.cpu(), ids.cpu()  # .cpu() waits for the GPU
        trips.append((time.perf_counter() - t0) * 1e6)
    assert weights.shape == (tokens, layer.k) and ids.shape == (tokens, layer.k)
    return kernel_us, statistics.median(trips)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers-tsv", required=True, help="`kernel_timing --list` output")
    ap.add_argument("--layers", required=True, help="comma-separated layer names")
    ap.add_argument("--tokens", required=True, help="comma-separated token counts")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    with open(args.layers_tsv) as f:
        layers = {l.name: l for l in map(Layer, f) if l.name}
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_baseline: torch sees no CUDA device")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"torch_baseline: torch {torch.__version__} on {name}", file=sys.stderr)
    for layer_name in args.layers.split(","):
        for tokens in map(int, args.tokens.split(",")):
            kernel_us, trip_us = time_layer(layers[layer_name], tokens, args.device)
            print(f"torch\t{layer_name}\t{tokens}\t{kernel_us:.2f}\t{trip_us:.2f}", flush=True)


if __name__ == "__main__":
    main()
