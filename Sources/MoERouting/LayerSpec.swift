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
    /// `e_score_correction_bias`, length `numExperts`; required exactly for biased methods
    /// (hash-routed layers may carry one; it is not used for their routing).
    public var bias: [Float]?
    /// 0: the contract's renormalisation (skipped when the sum is <= 0). > 0: weights are divided
    /// by sum + epsilon, never skipped (MiniMax2's 1e-20).
    public var renormEpsilon: Float = 0
    /// DeepSeek-V4's hash routing: `tid2eid` [vocab, top_k]; a request then carries token ids.
    public var hashTable: TokenTable?
    /// The expert placement the layer starts with (EPLB); replaced at run time by SET_PLACEMENT.
    public var placement: ExpertPlacement?

    public init(
        name: String, method: RoutingMethod, numExperts: Int, topK: Int,
        numExpertGroup: Int = 1, topKGroup: Int = 1, scoring: ScoringFunction = .softmax,
        renormalize: Bool = false, routedScalingFactor: Float = 1.0, gateDType: DType = .bf16,
        nonFinite: NonFinitePolicy = .clamp, bias: [Float]? = nil, renormEpsilon: Float = 0,
        hashTable: TokenTable? = nil, placement: ExpertPlacement? = nil
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
        self.renormEpsilon = renormEpsilon
        self.hashTable = hashTable
        self.placement = placement
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
        if !renormEpsilon.isFinite || renormEpsilon < 0 || renormEpsilon > 1e-3 {
            throw fail("renorm_epsilon", renormEpsilon, "must be finite, >= 0 and <= 1e-3 (MiniMax2 uses 1e-20)")
        }
        if renormEpsilon > 0 && !renormalize {
            throw fail("renorm_epsilon", renormEpsilon, "only applies with renormalize: true")
        }
        if let table = hashTable {
            if !method.usesScoring {
                throw fail("tid2eid", "a table", "\(method.name) selects on logits; hash routing takes its weights from a scoring function")
            }
            if table.topK != k {
                throw fail("tid2eid", "[\(table.vocab), \(table.topK)]", "needs top_k (\(k)) columns")
            }
            if let bad = table.firstOutOfRange(numExperts: E) {
                throw fail("tid2eid[\(bad.token)][\(bad.column)]", bad.value, "is not an expert id in 0..<\(E)")
            }
        }
        if let placement {
            do { try placement.validate(numExperts: E) } catch {
                throw fail("placement", placement.summary, error.description)
            }
        }
        if method.usesBias && hashTable == nil {
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
            if !method.usesBias { throw fail("bias", "\(bias.count) values", "\(method.name) takes no bias") }
            if bias.count != E { throw fail("bias", "\(bias.count) values", "length must equal num_experts (\(E))") }
            if let i = bias.firstIndex(where: { !DType.fp16.roundTrip($0).isFinite }) {
                throw fail("bias[\(i)]", bias[i], "must be finite and < 65520 in magnitude")
            }
        }
    }
}

/// DeepSeek-V4's `tid2eid`: for each token id in 0..<vocab, the top_k expert ids it routes to,
/// in table order. Shared by reference (a real table is ~3 MB); never copied per request.
public final class TokenTable: Sendable, Equatable, CustomStringConvertible {
    public let vocab: Int
    public let topK: Int
    /// Row-major [vocab, topK].
    public let ids: [Int32]

    /// - Precondition: `ids.count == vocab * topK`, vocab >= 1.
    public init(vocab: Int, topK: Int, ids: [Int32]) {
        precondition(vocab >= 1 && topK >= 1 && ids.count == vocab * topK, "tid2eid shape")
        self.vocab = vocab
        self.topK = topK
        self.ids = ids
    }

    public static func == (a: TokenTable, b: TokenTable) -> Bool {
        a === b || (a.vocab == b.vocab && a.topK == b.topK && a.ids == b.ids)
    }

    public var description: String { "tid2eid[\(vocab), \(topK)]" }

    /// The first entry that is not an expert id in 0..<numExperts.
    public func firstOutOfRange(numExperts: Int) -> (token: Int, column: Int, value: Int32)? {
        guard let i = ids.firstIndex(where: { $0 < 0 || Int($0) >= numExperts }) else { return nil }
        return (i / topK, i % topK, ids[i])
    }

    /// A deterministic table for presets and tests, reproducible from any language: row t holds
    /// (base + j * step) mod numExperts for j in 0..<topK, with base = splitmix64(t) mod E and
    /// step = 1 + splitmix64(t + 2^32) mod (E / topK), so a row's experts are distinct.
    public static func synthetic(vocab: Int, topK: Int, numExperts: Int) -> TokenTable {
        precondition(topK <= numExperts)
        let E = UInt64(numExperts), span = UInt64(numExperts / topK)
        var ids = [Int32](repeating: 0, count: vocab * topK)
        for t in 0..<vocab {
            let base = Presets.splitmix64(UInt64(t)) % E
            let step = 1 + Presets.splitmix64(UInt64(t) + (1 << 32)) % span
            for j in 0..<topK { ids[t * topK + j] = Int32((base + UInt64(j) * step) % E) }
        }
        return TokenTable(vocab: vocab, topK: topK, ids: ids)
    }
}

/// Expert placement (EPLB): for each logical expert, its physical replicas (ids in
/// 0..<numPhysical, each used by one logical expert at most). A token t routed to logical
/// expert e gets physical id replicas[e][t mod replicas[e].count] (shared/ROUTING.md).
public struct ExpertPlacement: Sendable, Equatable {
    public static let maxPhysical = 65_536

    public let numPhysical: Int
    /// offsets[e] ..< offsets[e + 1] index `flat` for logical expert e (numExperts + 1 values).
    public let offsets: [Int32]
    public let flat: [Int32]

    public var numLogical: Int { offsets.count - 1 }

    /// The replicas of logical expert e, in order.
    public func replicas(of e: Int) -> ArraySlice<Int32> { flat[Int(offsets[e])..<Int(offsets[e + 1])] }

    /// Builds from per-expert replica lists; shape and range are checked by `validate`.
    /// - Throws: `.tooLarge` when the numbers cannot be held at all.
    public init(numPhysical: Int, replicas: [[Int]]) throws(PlacementError) {
        guard numPhysical >= 0, numPhysical <= Self.maxPhysical else { throw .physicalCount(numPhysical) }
        let total = replicas.reduce(0) { $0 + $1.count }
        guard total <= Self.maxPhysical else { throw .tooManyReplicas(total) }
        var offsets: [Int32] = [0]
        var flat: [Int32] = []
        flat.reserveCapacity(total)
        for r in replicas {
            for p in r { flat.append(Int32(clamping: p)) }
            offsets.append(Int32(flat.count))
        }
        self.numPhysical = numPhysical
        self.offsets = offsets
        self.flat = flat
    }

    /// From the wire's form: `counts[e]` replicas per logical expert, then the ids in order.
    public init(numPhysical: Int, counts: [Int32], flat: [Int32]) throws(PlacementError) {
        guard numPhysical >= 0, numPhysical <= Self.maxPhysical else { throw .physicalCount(numPhysical) }
        var offsets: [Int32] = [0]
        offsets.reserveCapacity(counts.count + 1)
        var total = 0
        for (e, c) in counts.enumerated() {
            guard c >= 1 else { throw .noReplica(logical: e) }
            total += Int(c)
            guard total <= Self.maxPhysical else { throw .tooManyReplicas(total) }
            offsets.append(Int32(total))
        }
        guard total == flat.count else { throw .replicaCount(declared: total, given: flat.count) }
        self.numPhysical = numPhysical
        self.offsets = offsets
        self.flat = flat
    }

    /// Every logical expert placed (>= 1 replica), every physical id in 0..<numPhysical and
    /// used once.
    public func validate(numExperts: Int) throws(PlacementError) {
        guard numLogical == numExperts else { throw .logicalCount(expected: numExperts, given: numLogical) }
        guard numPhysical >= 1, numPhysical <= Self.maxPhysical else { throw .physicalCount(numPhysical) }
        var owner = [Int32](repeating: -1, count: numPhysical)
        for e in 0..<numExperts {
            let r = replicas(of: e)
            guard !r.isEmpty else { throw .noReplica(logical: e) }
            for p in r {
                guard p >= 0, Int(p) < numPhysical else { throw .physicalOutOfRange(logical: e, physical: Int(p), numPhysical: numPhysical) }
                guard owner[Int(p)] < 0 else { throw .physicalReused(physical: Int(p), first: Int(owner[Int(p)]), second: e) }
                owner[Int(p)] = Int32(e)
            }
        }
    }

    /// "384 logical -> 416 physical".
    public var summary: String { "\(numLogical) logical -> \(flat.count) replicas of \(numPhysical) physical" }
}

/// Why a placement cannot be used.
public enum PlacementError: Error, Equatable, CustomStringConvertible {
    case logicalCount(expected: Int, given: Int)
    case physicalCount(Int)
    case tooManyReplicas(Int)
    case replicaCount(declared: Int, given: Int)
    case noReplica(logical: Int)
    case physicalOutOfRange(logical: Int, physical: Int, numPhysical: Int)
    case physicalReused(physical: Int, first: Int, second: Int)

    public var description: String {
        switch self {
        case .logicalCount(let e, let g): "places \(g) logical experts; the layer has \(e)"
        case .physicalCount(let n): "num_physical_experts = \(n) is not in 1...\(ExpertPlacement.maxPhysical)"
        case .tooManyReplicas(let n): "\(n) replicas in all exceed \(ExpertPlacement.maxPhysical)"
        case .replicaCount(let d, let g): "replica counts add up to \(d) but \(g) physical ids were given"
        case .noReplica(let e): "logical expert \(e) has no replica"
        case .physicalOutOfRange(let e, let p, let n): "logical expert \(e): physical id \(p) is not in 0..<\(n)"
        case .physicalReused(let p, let a, let b): "physical id \(p) is given to logical experts \(a) and \(b)"
        }
    }
}
