import Foundation
import MoERouting

/// A model family's routing, read from its `config.json`: which decoder layers are MoE, the
/// layer parameters they share, and where each layer's `e_score_correction_bias` is stored.
/// docs/MODELS.md lists the keys each family reads.
public struct ModelConfig: Sendable, Equatable {
    /// The model types this loader knows, with the family each belongs to.
    public static let supportedTypes = [
        "deepseek_v2", "deepseek_v3", "deepseek_v4", "kimi_k2", "glm4_moe", "minimax_m2", "qwen2_moe", "qwen3_moe",
        "mixtral", "gpt_oss", "llama4",
    ]

    /// The largest tid2eid table a hash layer may have (rows): real vocabularies are ~130k-260k.
    public static let maxVocab = 4 << 20

    /// The most decoder layers a config may declare.
    public static let maxLayers = 10_000

    public let modelType: String
    /// The decoder layers that route to experts, in order.
    public let moeLayers: [Int]
    /// The parameters every MoE layer shares (name, bias and gate dtype are filled per layer).
    public let layer: LayerSpec
    /// The tensor holding layer `i`'s bias, for methods that use one.
    public let biasTensor: (@Sendable (Int) -> String)?
    /// Other names the same tensors go by in some checkpoints (tried when `biasTensor`'s is
    /// absent): DeepSeek-V4 ships the reference naming (`layers.N.ffn.gate.bias`), conversions
    /// the Hugging Face one.
    public let biasTensorAlternative: (@Sendable (Int) -> String)?
    /// Hash-routed layers (DeepSeek-V4's first `num_hash_layers`), a subset of `moeLayers`, and
    /// the names of their tid2eid tensor (first found wins).
    public let hashLayers: Set<Int>
    public let hashTensors: (@Sendable (Int) -> [String])?
    /// The rows a tid2eid table has (`vocab_size`).
    public let vocabSize: Int?
    /// The gate dtype `auto` means when it is not `torchDType` (DeepSeek-V4 computes its gate in
    /// fp32 whatever the checkpoint's dtype).
    public let gateDTypeOverride: DType?
    /// The checkpoint's own dtype (`torch_dtype`), the dtype its gate emits by default.
    public let torchDType: DType?

    public static func == (a: ModelConfig, b: ModelConfig) -> Bool {
        a.modelType == b.modelType && a.moeLayers == b.moeLayers && a.layer == b.layer && a.torchDType == b.torchDType
            && a.moeLayers.map { a.biasTensor?($0) } == b.moeLayers.map { b.biasTensor?($0) }
    }

    /// Parses a `config.json`'s bytes; `path` names the file in errors.
    public init(json: Data, path: String) throws(CheckpointError) {
        let root = try jsonObject(json) { .badConfig(path: path, reason: $0) }
        guard let type = root["model_type"] as? String else { throw .badConfig(path: path, reason: "model_type is missing") }
        // Llama-4 keeps its text model's settings under text_config.
        let c = Keys(values: type == "llama4" ? (root["text_config"] as? [String: Any] ?? [:]) : root, path: path)
        modelType = type
        // transformers >= 4.56 writes `dtype` where older configs say `torch_dtype`.
        let dtypeName = ["torch_dtype", "dtype"].lazy.compactMap { c.values[$0] as? String ?? root[$0] as? String }.first
        torchDType = dtypeName.flatMap(Self.dtype)
        let layers = try c.int("num_hidden_layers")
        // Real models have at most a few hundred; a hostile count must not make the loader loop
        // for hours or allocate without bound (found by fuzzing: 10^12 layers hung the start).
        guard (1...Self.maxLayers).contains(layers) else {
            throw .badConfig(path: path, reason: "num_hidden_layers = \(layers) is outside 1...\(Self.maxLayers)")
        }
        var biasAlternative: (@Sendable (Int) -> String)? = nil
        var hash: Set<Int> = [], hashNames: (@Sendable (Int) -> [String])? = nil, vocab: Int? = nil
        var gateOverride: DType? = nil
        func spec(_ method: RoutingMethod, experts: Int, topK: Int, groups: Int = 1, topKGroups: Int = 1,
                  scoring: ScoringFunction = .softmax, renormalize: Bool, rsf: Float = 1) -> LayerSpec {
            LayerSpec(name: type, method: method, numExperts: experts, topK: topK, numExpertGroup: groups, topKGroup: topKGroups,
                      scoring: scoring, renormalize: renormalize, routedScalingFactor: rsf)
        }
        switch type {
        case "deepseek_v2", "deepseek_v3", "kimi_k2", "glm4_moe":
            let experts = try c.int("n_routed_experts"), topK = try c.int("num_experts_per_tok")
            let first = try c.int("first_k_dense_replace", default: 0), freq = try c.int("moe_layer_freq", default: 1)
            guard freq >= 1 else { throw .badConfig(path: path, reason: "moe_layer_freq = \(freq) must be at least 1") }
            moeLayers = (0..<layers).filter { $0 >= first && $0 % freq == 0 }
            let groups = try c.int("n_group", default: 1), topKGroups = try c.int("topk_group", default: 1)
            let rsf = try c.float("routed_scaling_factor", default: 1), norm = try c.bool("norm_topk_prob", default: false)
            let method = type == "glm4_moe" ? "noaux_tc" : try c.string("topk_method", default: "greedy")
            switch method {
            case "noaux_tc":
                let scoring = try c.string("scoring_func", default: "sigmoid")
                guard scoring == "sigmoid" else { throw .badConfig(path: path, reason: "scoring_func = \(scoring) with topk_method noaux_tc (expected sigmoid)") }
                layer = spec(.biasedGroupedTopK, experts: experts, topK: topK, groups: groups, topKGroups: topKGroups,
                             scoring: .sigmoid, renormalize: norm, rsf: rsf)
                biasTensor = { "model.layers.\($0).mlp.gate.e_score_correction_bias" }
            case "group_limited_greedy":
                layer = spec(.groupedTopK, experts: experts, topK: topK, groups: groups, topKGroups: topKGroups, renormalize: norm, rsf: rsf)
                biasTensor = nil
            case "greedy":
                layer = spec(.softmaxTopK, experts: experts, topK: topK, renormalize: norm, rsf: rsf)
                biasTensor = nil
            default:
                throw .badConfig(path: path, reason: "topk_method = \(method) is not one of noaux_tc, group_limited_greedy, greedy")
            }
        case "deepseek_v4":
            // DeepSeek-V4 (Pro: 384 experts, Flash: 256; top-6): sqrt(softplus) + bias selection, no
            // groups; the first num_hash_layers layers take their experts from tid2eid.
            let experts = try c.int("n_routed_experts"), topK = try c.int("num_experts_per_tok")
            let first = try c.int("first_k_dense_replace", default: 0)
            moeLayers = (0..<layers).filter { $0 >= first }
            let scoringName = try c.string("scoring_func", default: "sqrtsoftplus")
            guard let scoring = ScoringFunction(name: scoringName), scoring != .none else {
                throw .badConfig(path: path, reason: "scoring_func = \(scoringName) (expected sqrtsoftplus, sigmoid or softmax)")
            }
            let groups = try c.int("n_group", default: 1), topKGroups = try c.int("topk_group", default: 1)
            let grouped = groups > 1
            layer = spec(grouped ? .biasedGroupedTopK : .biasedTopK, experts: experts, topK: topK, groups: groups,
                         topKGroups: grouped ? topKGroups : 1, scoring: scoring,
                         renormalize: try c.bool("norm_topk_prob", default: true), rsf: try c.float("routed_scaling_factor", default: 1))
            biasTensor = { "layers.\($0).ffn.gate.bias" }
            biasAlternative = { "model.layers.\($0).mlp.gate.e_score_correction_bias" }
            let hashCount = try c.int("num_hash_layers", default: 0)
            guard (0...layers).contains(hashCount) else {
                throw .badConfig(path: path, reason: "num_hash_layers = \(hashCount) is outside 0...num_hidden_layers (\(layers))")
            }
            hash = Set(moeLayers.filter { $0 < hashCount })
            hashNames = { ["layers.\($0).ffn.gate.tid2eid", "model.layers.\($0).mlp.gate.tid2eid"] }
            if hashCount > 0 {
                let v = try c.int("vocab_size")
                guard (1...Self.maxVocab).contains(v) else {
                    throw .badConfig(path: path, reason: "vocab_size = \(v) is outside 1...\(Self.maxVocab)")
                }
                vocab = v
            }
            gateOverride = .fp32
        case "minimax_m2":
            let experts = try c.int("num_local_experts"), topK = try c.int("num_experts_per_tok")
            let scoring = try c.string("scoring_func", default: "sigmoid")
            guard scoring == "sigmoid", try c.bool("use_routing_bias", default: true) else {
                throw .badConfig(path: path, reason: "only sigmoid scoring with use_routing_bias is supported for minimax_m2")
            }
            moeLayers = Array(0..<layers)
            layer = spec(.biasedTopK, experts: experts, topK: topK, scoring: .sigmoid, renormalize: true,
                         rsf: try c.float("routed_scaling_factor", default: 1))
            biasTensor = { "model.layers.\($0).block_sparse_moe.e_score_correction_bias" }
        case "qwen2_moe", "qwen3_moe":
            let experts = try c.int("num_experts"), topK = try c.int("num_experts_per_tok")
            let step = try c.int("decoder_sparse_step", default: 1)
            guard step >= 1 else { throw .badConfig(path: path, reason: "decoder_sparse_step = \(step) must be at least 1") }
            let dense = Set(try c.ints("mlp_only_layers", default: []))
            moeLayers = experts > 0 ? (0..<layers).filter { !dense.contains($0) && ($0 + 1) % step == 0 } : []
            layer = spec(.softmaxTopK, experts: experts, topK: topK, renormalize: try c.bool("norm_topk_prob", default: false))
            biasTensor = nil
        case "mixtral":
            moeLayers = Array(0..<layers)
            layer = spec(.softmaxTopK, experts: try c.int("num_local_experts"), topK: try c.int("num_experts_per_tok"), renormalize: true)
            biasTensor = nil
        case "gpt_oss":
            let topK = c.values["num_experts_per_tok"] != nil ? try c.int("num_experts_per_tok") : try c.int("experts_per_token")
            moeLayers = Array(0..<layers)
            layer = spec(.topKSoftmax, experts: try c.int("num_local_experts"), topK: topK, renormalize: false)
            biasTensor = nil
        case "llama4":
            let step = try c.int("interleave_moe_layer_step", default: 1)
            guard step >= 1 else { throw .badConfig(path: path, reason: "interleave_moe_layer_step = \(step) must be at least 1") }
            moeLayers = Array(stride(from: step - 1, to: layers, by: step))
            layer = spec(.llama4Top1, experts: try c.int("num_local_experts"), topK: try c.int("num_experts_per_tok"),
                         scoring: .sigmoid, renormalize: false)
            biasTensor = nil
        default:
            throw .badConfig(path: path, reason: "model_type \(type) is not supported (supported: \(Self.supportedTypes.joined(separator: ", ")))")
        }
        biasTensorAlternative = biasAlternative
        hashLayers = hash
        hashTensors = hashNames
        vocabSize = vocab
        gateDTypeOverride = gateOverride
        guard !moeLayers.isEmpty else { throw .badConfig(path: path, reason: "no MoE layers in \(layers) decoder layers") }
        // The shared parameters alone (a biased method's bias is read per layer later).
        guard (1...RoutingLimits.maxExperts).contains(layer.numExperts) else {
            throw .badConfig(path: path, reason: "\(layer.numExperts) experts; the router takes 1...\(RoutingLimits.maxExperts)")
        }
        var probe = layer
        if biasTensor != nil { probe.bias = [Float](repeating: 0, count: layer.numExperts) }
        do { try probe.validate() } catch { throw .badConfig(path: path, reason: error.description) }
    }

    static func dtype(_ torch: String) -> DType? {
        switch torch {
        case "float32": .fp32
        case "bfloat16": .bf16
        case "float16": .fp16
        default: nil
        }
    }

    /// Typed reads of config keys, each error naming the key.
    struct Keys {
        let values: [String: Any]
        let path: String

        func int(_ key: String, default fallback: Int? = nil) throws(CheckpointError) -> Int {
            guard let v = values[key], !(v is NSNull) else {
                guard let fallback else { throw .badConfig(path: path, reason: "\(key) is missing") }
                return fallback
            }
            guard let n = v as? NSNumber, !Self.isBool(n), let i = Int(exactly: n.doubleValue) else {
                throw .badConfig(path: path, reason: "\(key) = \(v) is not an integer")
            }
            return i
        }

        func ints(_ key: String, default fallback: [Int]) throws(CheckpointError) -> [Int] {
            guard let v = values[key], !(v is NSNull) else { return fallback }
            guard let list = v as? [Any] else { throw .badConfig(path: path, reason: "\(key) is not a list") }
            return try list.map { item throws(CheckpointError) in
                guard let n = item as? NSNumber, !Self.isBool(n), let i = Int(exactly: n.doubleValue) else {
                    throw .badConfig(path: path, reason: "\(key) holds \(item), not an integer")
                }
                return i
            }
        }

        func float(_ key: String, default fallback: Float) throws(CheckpointError) -> Float {
            guard let v = values[key], !(v is NSNull) else { return fallback }
            guard let n = v as? NSNumber, !Self.isBool(n) else { throw .badConfig(path: path, reason: "\(key) = \(v) is not a number") }
            return n.floatValue
        }

        func bool(_ key: String, default fallback: Bool) throws(CheckpointError) -> Bool {
            guard let v = values[key], !(v is NSNull) else { return fallback }
            guard let n = v as? NSNumber, Self.isBool(n) else { throw .badConfig(path: path, reason: "\(key) = \(v) is not true or false") }
            return n.boolValue
        }

        /// JSON's true and false (Foundation's JSON numbers also cast to Bool, so ask the type).
        static func isBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

        func string(_ key: String, default fallback: String) throws(CheckpointError) -> String {
            guard let v = values[key], !(v is NSNull) else { return fallback }
            guard let s = v as? String else { throw .badConfig(path: path, reason: "\(key) = \(v) is not a string") }
            return s
        }
    }
}
