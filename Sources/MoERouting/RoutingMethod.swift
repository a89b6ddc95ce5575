/// The routing methods of shared/ROUTING.md, in vLLM's `RoutingMethodType` vocabulary.
/// Raw values are the wire protocol's.
public enum RoutingMethod: UInt8, Sendable, CaseIterable, Codable, CustomStringConvertible {
    /// softmax, top-k, optional renormalize (Mixtral, Qwen3, DeepSeek-V2-Lite).
    case softmaxTopK = 0
    /// top-k of the logits, softmax over the chosen k (gpt-oss).
    case topKSoftmax = 1
    /// DeepSeek-V2: group score = max, keep topk_group groups, top-k inside them.
    case groupedTopK = 2
    /// DeepSeek-V3 / Kimi-K2 "noaux_tc": sigmoid + bias for selection, group score = sum of top 2.
    case biasedGroupedTopK = 3
    /// Bias without groups (MiniMax-M2).
    case biasedTopK = 4
    /// Llama-4: top-1 of the logits, then sigmoid.
    case llama4Top1 = 5

    public var description: String { name }

    /// The name used in configs, the CLI and the wire protocol's listings.
    public var name: String {
        switch self {
        case .softmaxTopK: "softmax_topk"
        case .topKSoftmax: "topk_softmax"
        case .groupedTopK: "grouped_topk"
        case .biasedGroupedTopK: "biased_grouped_topk"
        case .biasedTopK: "biased_topk"
        case .llama4Top1: "llama4_top1"
        }
    }

    public init?(name: String) {
        guard let m = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = m
    }

    /// Whether the method adds `e_score_correction_bias` for selection.
    public var usesBias: Bool { self == .biasedGroupedTopK || self == .biasedTopK }

    /// Whether the method selects within expert groups.
    public var usesGroups: Bool { self == .groupedTopK || self == .biasedGroupedTopK }

    /// Whether `scoring` applies (the other methods select on the logits themselves).
    public var usesScoring: Bool { self != .topKSoftmax && self != .llama4Top1 }
}

/// The function that turns logits into scores (shared/ROUTING.md, "Added schemes").
public enum ScoringFunction: UInt8, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case softmax = 0
    case sigmoid = 1
    /// DeepSeek-V4: sqrt(softplus(x)).
    case sqrtSoftplus = 2
    /// The logit itself (vLLM's "TopK": the weights are the chosen experts' raw logits).
    case none = 3

    public var description: String { name }

    /// The name used in configs, the CLI and listings (and config.json's `scoring_func`).
    public var name: String {
        switch self {
        case .softmax: "softmax"
        case .sigmoid: "sigmoid"
        case .sqrtSoftplus: "sqrtsoftplus"
        case .none: "none"
        }
    }

    public init?(name: String) {
        guard let s = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = s
    }

    /// Whether each expert's score depends on its own logit only (not softmax's whole row).
    public var isElementwise: Bool { self != .softmax }
}

/// What a layer does with NaN and ±Inf inputs (shared/ROUTING.md, "Non-finite input").
public enum NonFinitePolicy: UInt8, Sendable, CaseIterable, Codable, CustomStringConvertible {
    /// A non-finite score becomes 0 before bias and selection; the count is reported.
    case clamp = 0
    /// The request fails, naming the first offending token; nothing is written.
    case reject = 1

    public var description: String { self == .clamp ? "clamp" : "reject" }

    public init?(name: String) {
        switch name {
        case "clamp": self = .clamp
        case "reject": self = .reject
        default: return nil
        }
    }
}
