"""moe_router.integrations with real torch: vLLM's / SGLang's custom_routing_function signature
over a daemon serving a checkpoint, checked against the contract's reference and against the
engines' own grouped top-k written in torch."""
import os
import types

import numpy as np
import pytest

if os.environ.get("MOE_ROUTER_REQUIRE_TORCH") == "1":
    import torch  # scripts/test.sh installs it: a missing torch fails there instead of skipping
else:
    torch = pytest.importorskip("torch")

import routing_reference as ref
from checkpoints import FAMILIES, expected_layers, write_checkpoint
from moe_router import Client, ClientArgumentError, UnknownLayerError
from moe_router.integrations import attach, layer_index, routing_function
from python_client_support import logits

CONFIG = dict(FAMILIES["DeepSeek-V3"], num_hidden_layers=6)   # MoE layers 3, 4, 5


@pytest.fixture
def served(start_daemon, tmp_path):
    d, biases = write_checkpoint(tmp_path, "DeepSeek-V3", CONFIG, bias_dtype="F32")
    server = start_daemon("--model", str(d))        # auto: torch_dtype bfloat16
    with Client(server.endpoint) as c:
        yield c, biases


def reference(layer_index_, biases, x, dtype):
    _, params, _ = expected_layers(CONFIG)
    spec = dict(params, name="x", nonfinite="clamp")
    bias = ref.round_trip(ref.round_trip(biases[layer_index_], "bf16"), dtype)  # stored as bf16, request dtype
    w, ids, _ = ref.route(spec, bias, ref.round_trip(x, dtype))
    return w.astype(np.float32), ids.astype(np.int32)


def vllm_grouped_topk(gating_output, bias, topk, n_group, topk_group, renormalize, rsf):
    """The engines' in-process DeepSeek-V3 routing (vLLM grouped_topk with a correction bias),
    in torch, fp32."""
    scores = gating_output.float().sigmoid()
    biased = scores + bias.float()
    t, e = scores.shape
    group_scores = biased.view(t, n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    groups = group_scores.topk(topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores).scatter_(1, groups, 1)
    mask = mask.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
    ids = biased.masked_fill(mask == 0, float("-inf")).topk(topk, dim=-1, sorted=False)[1]
    w = scores.gather(1, ids)
    if renormalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return (w * rsf).float(), ids.int()


def test_the_vllm_signature_routes_through_the_daemon(served):
    client, biases = served
    fn = routing_function(client, "DeepSeek-V3/4")
    x = logits(128, 256, seed=4)
    for dtype, tensor in [("bf16", torch.from_numpy(x).bfloat16()), ("fp32", torch.from_numpy(x)),
                          ("fp16", torch.from_numpy(x).half())]:
        hidden = torch.zeros(128, 16, dtype=tensor.dtype)
        w, ids = fn(hidden_states=hidden, gating_output=tensor, topk=8, renormalize=True)  # vLLM calls by keyword
        assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.device == tensor.device
        assert tuple(w.shape) == tuple(ids.shape) == (128, 8)
        want_w, want_ids = reference(4, biases, x, dtype)
        assert np.array_equal(ids.numpy(), want_ids), dtype
        assert np.array_equal(w.numpy().view(np.uint32), want_w.view(np.uint32)), dtype
    # Positional, as SGLang's select_experts may call it; renormalize is the layer's own.
    w, ids = fn(None, torch.from_numpy(x).bfloat16(), 8, False)
    assert np.array_equal(ids.numpy(), reference(4, biases, x, "bf16")[1])


def test_it_agrees_with_the_engines_own_grouped_topk(served):
    client, biases = served
    fn = routing_function(client, "DeepSeek-V3/5")
    rng = np.random.default_rng(11)
    x = torch.from_numpy((rng.standard_normal((512, 256)) * 2).astype(np.float32))
    bias = torch.from_numpy(ref.round_trip(biases[5], "bf16"))
    w, ids = fn(None, x, 8, True)
    want_w, want_ids = vllm_grouped_topk(x, bias, 8, 8, 4, True, 2.5)
    got = torch.sort(ids, dim=-1)
    want = torch.sort(want_ids, dim=-1)
    assert torch.equal(got.values, want.values), "the same experts as the engine's own routing"
    torch.testing.assert_close(torch.gather(w, 1, got.indices), torch.gather(want_w, 1, want.indices),
                               rtol=2e-6, atol=1e-7)


def test_errors_are_typed_and_edge_shapes_work(served):
    client, _ = served
    fn = routing_function(client, "DeepSeek-V3/3")
    with pytest.raises(ClientArgumentError, match="top-6; the layer routes top-8"):
        fn(None, torch.zeros(2, 256), 6, True)
    with pytest.raises(ClientArgumentError, match="gating_output is required"):
        fn(hidden_states=None)
    w, ids = fn(None, torch.zeros(0, 256), 8, True)
    assert tuple(w.shape) == (0, 8) and ids.dtype == torch.int32
    with pytest.raises(Exception) as e:
        fn(None, torch.zeros(2, 255), 8, True)
    assert "255" in str(e.value) and "256" in str(e.value)
    with pytest.raises(Exception, match="DeepSeek-V3/9"):
        routing_function(client, "DeepSeek-V3/9")


class FakeFusedMoE(torch.nn.Module):
    """What attach() relies on in vLLM's FusedMoE: the two routing attributes."""

    def __init__(self):
        super().__init__()
        self.custom_routing_function, self.use_grouped_topk = None, True


class FakeTopK(torch.nn.Module):
    """SGLang's TopK: the function lives in topk_config."""

    def __init__(self):
        super().__init__()
        self.topk_config = types.SimpleNamespace(custom_routing_function=None, use_grouped_topk=True)


def fake_model(kind, layers):
    class Block(torch.nn.Module):
        def __init__(self, moe):
            super().__init__()
            self.mlp = torch.nn.Module()
            if moe:
                setattr(self.mlp, "experts" if kind == "vllm" else "topk", FakeFusedMoE() if kind == "vllm" else FakeTopK())
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.layers = torch.nn.ModuleList([Block(i >= 3) for i in range(layers)])
    return root


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_attach_points_every_moe_module_at_its_layer(served, kind):
    client, biases = served
    model = fake_model(kind, 6)
    part = "experts" if kind == "vllm" else "topk"
    assert attach(model, client, "DeepSeek-V3") == {f"model.layers.{i}.mlp.{part}": f"DeepSeek-V3/{i}" for i in (3, 4, 5)}
    x = logits(16, 256, seed=2)
    for i in (3, 4, 5):
        m = getattr(model.model.layers[i].mlp, part)
        holder = m if kind == "vllm" else m.topk_config
        assert holder.use_grouped_topk is False
        w, ids = holder.custom_routing_function(None, torch.from_numpy(x).bfloat16(), 8, True)
        assert np.array_equal(ids.numpy(), reference(i, biases, x, "bf16")[1]), i
    # A module whose layer the daemon lacks: an error, and nothing changed.
    bigger = fake_model(kind, 7)
    with pytest.raises(UnknownLayerError, match="model.layers.6.*DeepSeek-V3/6"):
        attach(bigger, client, "DeepSeek-V3")
    first = getattr(bigger.model.layers[3].mlp, part)
    assert (first if kind == "vllm" else first.topk_config).custom_routing_function is None
    with pytest.raises(UnknownLayerError, match="no layers of model"):
        attach(model, client, "Qwen3")


def test_layer_index():
    assert layer_index("model.layers.12.mlp.experts") == 12
    assert layer_index("language_model.model.layers.0.feed_forward") == 0
    assert layer_index("model.norm") is None and layer_index("model.mylayers.3.x") is None
