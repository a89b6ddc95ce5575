// Routes one batch through moe-routerd from C++ and prints the chosen experts.
// Usage: route_cpp [ENDPOINT [LAYER_NAME [TOKENS]]] (ENDPOINT "-" = default).
#include <moe_router.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {
struct ClientDeleter {
    void operator()(moe_client *c) const { moe_close(c); }
};
using Client = std::unique_ptr<moe_client, ClientDeleter>;

void check(moe_client *c, int st, const char *what) {
    if (st != MOE_OK)
        throw std::runtime_error(std::string(what) + ": " + moe_status_name(st) + ": " + (c ? moe_last_error(c) : ""));
}
}  // namespace

int main(int argc, char **argv) try {
    const char *endpoint = argc > 1 && std::strcmp(argv[1], "-") != 0 ? argv[1] : nullptr;
    std::string name = argc > 2 ? argv[2] : "deepseek-v3";
    uint64_t tokens = argc > 3 ? std::stoull(argv[3]) : 2;
    moe_client *raw = nullptr;
    check(nullptr, moe_connect(endpoint, 5000, &raw), "connect");
    Client client(raw);
    moe_hello_resp hello{};
    check(raw, moe_hello(raw, &hello), "hello");
    moe_layer_info layer{};
    check(raw, moe_find_layer(raw, name.c_str(), &layer), "find layer");

    std::vector<float> logits(tokens * layer.num_experts);
    for (size_t i = 0; i < logits.size(); i++) logits[i] = static_cast<float>((i * 7919) % 613) / 100.0f - 3.0f;
    std::vector<float> weights(tokens * layer.top_k);
    std::vector<int32_t> ids(tokens * layer.top_k);
    moe_route_result result{};
    check(raw, moe_route(raw, layer.layer_id, MOE_DTYPE_FP32, tokens, logits.data(), logits.size() * sizeof(float),
                         weights.data(), ids.data(), ids.size(), &result), "route");
    std::printf("%s via %s (%s): token 0 ->", layer.name, hello.daemon_version, hello.backend);
    for (uint32_t j = 0; j < layer.top_k; j++) std::printf(" %d:%.4f", ids[j], weights[j]);
    std::printf("\n");
    return 0;
} catch (const std::exception &e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
