/// Built-in layer specs for published models (shared/ROUTING.md "Model presets").
///
/// Checkpoint biases are not shipped: a biased preset gets `Presets.syntheticBias`, a
/// deterministic stand-in of realistic magnitude, so `moe-routerd --preset NAME` serves without
/// any file. Real deployments pass the model's bias in a config file.
public enum Presets {
    /// Preset names, in the order of shared/ROUTING.md.
    public static let names: [String] = [
        "deepseek-v3", "kimi-k2", "glm-4.5", "glm-4.5-air", "minimax-m2", "deepseek-v2",
        "deepseek-v2-lite", "qwen3-moe", "mixtral-8x7b", "gpt-oss-120b", "llama-4-maverick",
        "deepseek-v4", "deepseek-v4-flash", "deepseek-v4-hash",
    ]

    /// DeepSeek-V4's vocabulary (config.json `vocab_size`): the synthetic hash table's rows.
    public static let deepSeekV4Vocab = 129_280

    /// The preset called `name`, with gate dtype `gateDType` (default: `naturalGateDType(name)`,
    /// bf16 — what these models' gates emit when served in bf16 — and fp32 for DeepSeek-V4).
    public static func spec(named name: String, gateDType: DType? = nil) -> LayerSpec? {
        let gateDType = gateDType ?? naturalGateDType(name)
        func biased(_ m: RoutingMethod, _ e: Int, _ k: Int, _ g: Int, _ gk: Int, _ rsf: Float) -> LayerSpec {
            LayerSpec(name: name, method: m, numExperts: e, topK: k, numExpertGroup: g, topKGroup: gk,
                      scoring: .sigmoid, renormalize: true, routedScalingFactor: rsf,
                      gateDType: gateDType, bias: syntheticBias(count: e))
        }
        func plain(_ m: RoutingMethod, _ e: Int, _ k: Int, renormalize: Bool,
                   scoring: ScoringFunction = .softmax, g: Int = 1, gk: Int = 1, rsf: Float = 1) -> LayerSpec {
            LayerSpec(name: name, method: m, numExperts: e, topK: k, numExpertGroup: g, topKGroup: gk,
                      scoring: scoring, renormalize: renormalize, routedScalingFactor: rsf,
                      gateDType: gateDType)
        }
        switch name {
        case "deepseek-v3": return biased(.biasedGroupedTopK, 256, 8, 8, 4, 2.5)
        case "kimi-k2": return biased(.biasedGroupedTopK, 384, 8, 1, 1, 2.827)
        case "glm-4.5": return biased(.biasedGroupedTopK, 160, 8, 1, 1, 2.5)
        case "glm-4.5-air": return biased(.biasedGroupedTopK, 128, 8, 1, 1, 1.0)
        case "minimax-m2": return biased(.biasedTopK, 256, 8, 1, 1, 1.0)
        case "deepseek-v2": return plain(.groupedTopK, 160, 6, renormalize: false, g: 8, gk: 3, rsf: 16.0)
        case "deepseek-v2-lite": return plain(.softmaxTopK, 64, 6, renormalize: false)
        case "qwen3-moe": return plain(.softmaxTopK, 128, 8, renormalize: true)
        case "mixtral-8x7b": return plain(.softmaxTopK, 8, 2, renormalize: true)
        case "gpt-oss-120b": return plain(.topKSoftmax, 128, 4, renormalize: false)
        case "llama-4-maverick": return plain(.llama4Top1, 128, 1, renormalize: false, scoring: .sigmoid)
        case "deepseek-v4", "deepseek-v4-flash":
            // V4-Pro (384 experts) and V4-Flash (256): biased top-6 on sqrt(softplus), rsf 2.5.
            var s = biased(.biasedTopK, name == "deepseek-v4" ? 384 : 256, 6, 1, 1, 2.5)
            s.scoring = .sqrtSoftplus
            return s
        case "deepseek-v4-hash":
            // One of V4-Pro's first num_hash_layers layers: experts from a tid2eid table (here the
            // synthetic one), weights from sqrt(softplus) of the logits there.
            var s = plain(.biasedTopK, 384, 6, renormalize: true, scoring: .sqrtSoftplus, rsf: 2.5)
            s.hashTable = syntheticTable
            return s
        default: return nil
        }
    }

    /// The dtype a preset's gate emits when the operator does not say: fp32 for DeepSeek-V4
    /// (its gate computes in fp32), bf16 for the others.
    public static func naturalGateDType(_ name: String) -> DType {
        name.hasPrefix("deepseek-v4") ? .fp32 : .bf16
    }

    /// The deepseek-v4-hash preset's table, built once per process and shared.
    static let syntheticTable = TokenTable.synthetic(vocab: deepSeekV4Vocab, topK: 6, numExperts: 384)

    /// splitmix64's output for input i (the generator state after i + 1 steps from 0).
    public static func splitmix64(_ i: UInt64) -> UInt64 {
        var z = (i &+ 1) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Deterministic stand-in for `e_score_correction_bias`: value i is
    /// `(splitmix64(i) >> 40) / 2^24 - 0.5) * 0.2`, computed in Double, rounded to fp32,
    /// uniform in [-0.1, 0.1). Reproducible from any language.
    public static func syntheticBias(count: Int) -> [Float] {
        (0..<count).map { i in
            Float((Double(splitmix64(UInt64(i)) >> 40) / 16_777_216.0 - 0.5) * 0.2)
        }
    }
}
