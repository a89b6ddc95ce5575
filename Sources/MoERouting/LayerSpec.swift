/// What a routing layer is: method, shape, options and (for biased methods) the
/// `e_score_correction_bias` as it comes from the checkpoint, in fp32.
///
/// A spec is plain data; `BuiltLayer(spec)` validates it and makes it servable.
public struct LayerSpec: Sendable, Equatable {
    /// A human name ("deepseek-v3", "model-a/layer-3"); unique among a daemon's layers.
    public var name: String
    public var method: RoutingMethod
    public var numExperts: Int
    public var topK: Int
    public var numExpertGroup: Int
    public var topKGroup: Int
    public var scoring: ScoringFunction
    public var renormalize: Bool
    public var routedScalingFactor: Float
    /// The dtype the gate emits; the bias is stored in it.
    public var gateDType: DType
    public var nonFinite: NonFinitePolicy
    /// `e_score_correction_bias`, length `numExperts`; required exactly for biased methods.
    public var bias: [Float]?

    public init(
        name: String, method: RoutingMethod, numExperts: Int, topK: Int,
        numExpertGroup: Int = 1, topKGroup: Int = 1, scoring: ScoringFunction = .softmax,
        renormalize: Bool = false, routedScalingFactor: Float = 1.0, gateDType: DType = .bf16,
        nonFinite: NonFinitePolicy = .clamp, bias: [Float]? = nil
    ) {
        self.name = name
        self.method = method
        self.numExperts = numExperts
        self.topK = topK
        self.numExpertGroup = numExpertGroup
        self.topKGroup = topKGroup
        self.scoring = scoring
        self.renormalize = renormalize
        self.routedScalingFactor = routedScalingFactor
        self.gateDType = gateDType
        self.nonFinite = nonFinite
        self.bias = bias
    }

    /// Experts per group.
    public var expertsPerGroup: Int { numExpertGroup > 0 ? numExperts / numExpertGroup : 0 }
}

/// A spec that cannot be built; names the field and the offending value.
public struct LayerSpecError: Error, Equatable, CustomStringConvertible {
    public var layer: String
    public var field: String
    public var value: String
    public var reason: String

    public var description: String {
        "layer '\(layer)': \(field) = \(value): \(reason)"
    }
}

/// Upper limits of this implementation (shared/ROUTING.md leaves them to us).
public enum RoutingLimits {
    public static let maxExperts = 1024
    public static let maxTopK = 32
}

extension LayerSpec {
    /// Checks every rule of shared/ROUTING.md "Layer validation"; returns the first violation.
    public func validate() throws(LayerSpecError) {
        func fail(_ field: String, _ value: some CustomStringConvertible, _ reason: String) -> LayerSpecError {
            LayerSpecError(layer: name, field: field, value: "\(value)", reason: reason)
        }
        let E = numExperts, k = topK, G = numExpertGroup, Gk = topKGroup
        if name.isEmpty { throw fail("name", "\"\"", "must not be empty") }
        if E < 1 { throw fail("num_experts", E, "must be >= 1") }
        if E > RoutingLimits.maxExperts {
            throw fail("num_experts", E, "exceeds this implementation's limit of \(RoutingLimits.maxExperts)")
        }
        if k < 1 || k > E { throw fail("top_k", k, "must be in 1...num_experts (\(E))") }
        if k > RoutingLimits.maxTopK {
            throw fail("top_k", k, "exceeds this implementation's limit of \(RoutingLimits.maxTopK)")
        }
        if G < 1 { throw fail("num_expert_group", G, "must be >= 1") }
        if E % G != 0 { throw fail("num_expert_group", G, "must divide num_experts (\(E))") }
        if Gk < 1 || Gk > G { throw fail("topk_group", Gk, "must be in 1...num_expert_group (\(G))") }
        if !method.usesGroups && (G != 1 || Gk != 1) {
            throw fail("num_expert_group", G, "\(method.name) has no groups; num_expert_group and topk_group must be 1")
        }
        let P = E / G
        if k > Gk * P { throw fail("top_k", k, "exceeds topk_group * experts per group (\(Gk) * \(P))") }
        if method == .biasedGroupedTopK && P < 2 {
            throw fail("num_expert_group", G, "biased_grouped_topk needs at least 2 experts per group (has \(P))")
        }
        if !routedScalingFactor.isFinite || routedScalingFactor <= 0 {
            throw fail("routed_scaling_factor", routedScalingFactor, "must be finite and > 0")
        }
        if method.usesBias {
            guard let bias else { throw fail("bias", "none", "\(method.name) needs e_score_correction_bias") }
            if bias.count != E { throw fail("bias", "\(bias.count) values", "length must equal num_experts (\(E))") }
            if let i = bias.firstIndex(where: { !$0.isFinite }) {
                throw fail("bias[\(i)]", bias[i], "must be finite")
            }
            // A request may arrive in any dtype and the fallback converts the bias to it, so every
            // value must stay finite in the narrowest one (fp16 rounds |b| >= 65520 to infinity).
            if let i = bias.firstIndex(where: { !DType.fp16.roundTrip($0).isFinite }) {
                throw fail("bias[\(i)]", bias[i], "overflows fp16 (|bias| must be < 65520)")
            }
        } else if let bias {
            throw fail("bias", "\(bias.count) values", "\(method.name) takes no bias")
        }
    }
}
