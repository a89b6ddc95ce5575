"""Handing an inference engine's MoE routing to moe-routerd.

vLLM's ``FusedMoE`` and SGLang's ``TopK`` accept a ``custom_routing_function`` with the signature
``(hidden_states, gating_output, topk, renormalize) -> (topk_weights, topk_ids)``. This module
makes one for a daemon layer:

    from moe_router import Client
    from moe_router.integrations import routing_function, attach

    client = Client()                                    # the daemon serving --model DIR
    fn = routing_function(client, "DeepSeek-V3/3")       # one layer
    attach(model, client, "DeepSeek-V3")                 # or every MoE layer of an engine's model

The daemon's layer decides the routing (method, groups, bias, scaling: what the checkpoint's
config.json says, the same file the engine read). ``renormalize`` is accepted and not used: the
layer already carries it, and engines pass flags whose meaning differs by method (vLLM passes
True for gpt-oss, whose top-k-then-softmax needs no flag). ``topk`` must equal the layer's top-k.

torch is imported only by the functions that need it (this module loads without it).
"""
import re

from .errors import ClientArgumentError, UnknownLayerError

__all__ = ["routing_function", "attach", "layer_index"]

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def routing_function(client, layer):
    """A ``custom_routing_function`` for ``layer`` (name, id or Layer) of ``client``'s daemon:
    torch logits [T, E] (float32, bfloat16 or float16, on any device) in; ``topk_weights``
    float32 and ``topk_ids`` int32 [T, top_k] out, on the logits' device. ``token_ids=`` (a
    tensor of the T token ids) is passed on for hash-routed layers (protocol version 2). Errors
    are the client's typed errors (moe_router.MoERouterError subclasses)."""
    import torch

    info = client.layer(layer)

    def route(hidden_states=None, gating_output=None, topk=None, renormalize=None, token_ids=None, **_engine_extras):
        if gating_output is None:
            raise ClientArgumentError(f"{info.name}: gating_output is required")
        if topk is not None and int(topk) != info.top_k:
            raise ClientArgumentError(f"{info.name}: the engine asks for top-{topk}; the layer routes top-{info.top_k}")
        logits = gating_output if gating_output.dim() == 2 else gating_output.reshape(-1, gating_output.shape[-1])
        device = gating_output.device
        if logits.shape[0] == 0:
            return (torch.empty((0, info.top_k), dtype=torch.float32, device=device),
                    torch.empty((0, info.top_k), dtype=torch.int32, device=device))
        # token_ids: the batch's token ids, which a hash-routed layer (DeepSeek-V4) needs;
        # engines do not pass them to custom routing functions today.
        weights, ids = client.route(info, logits, token_ids=token_ids)
        weights, ids = torch.from_numpy(weights), torch.from_numpy(ids)
        if device.type != "cpu":
            weights, ids = weights.to(device, non_blocking=True), ids.to(device, non_blocking=True)
        return weights, ids

    route.__name__ = f"moe_router_{info.name}"
    route.layer = info
    return route


def layer_index(module_name):
    """The decoder layer index in a module path such as ``model.layers.12.mlp.experts``, or None."""
    m = _LAYER_INDEX.search(module_name + ".")
    return int(m.group(1)) if m else None


def attach(model, client, model_name):
    """Points every MoE routing module of an engine's ``model`` (a torch.nn.Module) at the
    daemon's layer ``<model_name>/<layer index>``; returns {module name: daemon layer name}.

    Modules are found by what they hold, as vLLM and SGLang define them today: a
    ``custom_routing_function`` attribute (vLLM ``FusedMoE``) or a ``topk_config`` holding one
    (SGLang ``TopK``). Grouped top-k is switched off on those modules (``use_grouped_topk``),
    since both engines consult it before the custom function. A module whose layer the daemon
    does not serve is an UnknownLayerError naming both, raised before any module is changed: a
    half-attached model would route two ways."""
    served = {l.name for l in client.model_layers(model_name)}  # UnknownLayerError when there are none
    found = []
    for name, module in model.named_modules():
        holder = module.topk_config if hasattr(module, "topk_config") else module
        if not hasattr(holder, "custom_routing_function"):
            continue
        index = layer_index(name)
        target = f"{model_name}/{index}"
        if index is None or target not in served:
            raise UnknownLayerError(f"module {name}: the daemon has no layer {target}")
        found.append((name, module, holder, target))
    if not found:
        raise ClientArgumentError("no module with a custom_routing_function (vLLM FusedMoE, SGLang TopK) found")
    functions = [routing_function(client, target) for *_, target in found]  # every lookup before any change
    for (name, module, holder, target), fn in zip(found, functions):
        for obj in {id(module): module, id(holder): holder}.values():
            if hasattr(obj, "use_grouped_topk"):
                obj.use_grouped_topk = False
        holder.custom_routing_function = fn
    return {name: target for name, _, _, target in found}
