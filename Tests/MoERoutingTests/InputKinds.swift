import MoERouting
import Testing

/// The input families of the test matrix: random and adversarial rows.
enum InputKind: String, CaseIterable, CustomTestStringConvertible {
    case gaussian, wide, allEqual, exactTies, groupBoundaryTies, nearTies, huge, tiny
    case nonFinite

    var testDescription: String { rawValue }

    func rows(tokens: Int, experts E: Int, groups G: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        var v = [Float](repeating: 0, count: tokens * E)
        let P = E / max(G, 1)
        for t in 0..<tokens {
            for i in 0..<E {
                let x: Float
                switch self {
                case .gaussian: x = rng.gaussian()
                case .wide: x = rng.gaussian() * 8
                case .allEqual: x = t % 2 == 0 ? 0.25 : -3
                case .exactTies: x = [-1, 0, 0.5, 1, 1][Int.random(in: 0..<5, using: &rng)]
                case .groupBoundaryTies:
                    // every group an identical copy: group scores tie, experts tie across groups
                    let j = i % P
                    x = Float((j * 7 + t) % 5) * 0.5
                case .nearTies:
                    let base: Float = 0.75
                    x = [base, base.nextUp, base.nextDown, base.nextUp.nextUp][Int.random(in: 0..<4, using: &rng)]
                case .huge: x = (Bool.random(using: &rng) ? 1e4 : -1e4) * (1 + Float(i % 3) * 0.5)
                case .tiny: x = (Bool.random(using: &rng) ? 1e-30 : -1e-30) * Float(1 + i % 7)
                case .nonFinite:
                    let r = Int.random(in: 0..<10, using: &rng)
                    x = r == 0 ? .nan : r == 1 ? .infinity : r == 2 ? -.infinity : rng.gaussian()
                }
                v[t * E + i] = x
            }
        }
        return v
    }
}

/// Specs beyond the presets: shapes that are not powers of two, G = 1, k = E, k = 1, and the
/// method/scoring combinations the presets do not use. rocm/check/layers.h copies them.
let extraSpecs: [LayerSpec] = {
    func bias(_ e: Int) -> [Float] { Presets.syntheticBias(count: e).map { $0 * 3 } }
    return [
        LayerSpec(name: "softmax-e24-k5", method: .softmaxTopK, numExperts: 24, topK: 5, renormalize: true),
        LayerSpec(name: "softmax-k-eq-e", method: .softmaxTopK, numExperts: 12, topK: 12, renormalize: true, routedScalingFactor: 1.5),
        LayerSpec(name: "softmax-k1-e1", method: .softmaxTopK, numExperts: 1, topK: 1),
        LayerSpec(name: "grouped-e72-g6", method: .groupedTopK, numExperts: 72, topK: 5, numExpertGroup: 6, topKGroup: 2, renormalize: true, routedScalingFactor: 2),
        LayerSpec(name: "grouped-sigmoid", method: .groupedTopK, numExperts: 48, topK: 4, numExpertGroup: 4, topKGroup: 2, scoring: .sigmoid),
        LayerSpec(name: "biased-e40-g4", method: .biasedGroupedTopK, numExperts: 40, topK: 6, numExpertGroup: 4, topKGroup: 2, scoring: .sigmoid, renormalize: true, routedScalingFactor: 2.5, bias: bias(40)),
        LayerSpec(name: "biased-softmax-scoring", method: .biasedGroupedTopK, numExperts: 64, topK: 6, numExpertGroup: 8, topKGroup: 3, scoring: .softmax, renormalize: false, routedScalingFactor: 1.25, bias: bias(64)),
        LayerSpec(name: "biased-k-eq-gk-p", method: .biasedGroupedTopK, numExperts: 32, topK: 16, numExpertGroup: 4, topKGroup: 2, scoring: .sigmoid, renormalize: true, bias: bias(32)),
        LayerSpec(name: "biased-topk-e1000-k32", method: .biasedTopK, numExperts: 1000, topK: 32, scoring: .sigmoid, renormalize: true, bias: bias(1000)),
        LayerSpec(name: "biased-topk-no-renorm", method: .biasedTopK, numExperts: 17, topK: 3, scoring: .sigmoid, renormalize: false, routedScalingFactor: 3, bias: bias(17)),
        LayerSpec(name: "topk-softmax-e100-k7", method: .topKSoftmax, numExperts: 100, topK: 7, routedScalingFactor: 2),
        LayerSpec(name: "llama4-e33-k3", method: .llama4Top1, numExperts: 33, topK: 3, scoring: .sigmoid),
        LayerSpec(name: "max-e1024-k32", method: .biasedGroupedTopK, numExperts: 1024, topK: 32, numExpertGroup: 16, topKGroup: 8, scoring: .sigmoid, renormalize: true, bias: bias(1024)),
        // the added schemes (issue 17): scoring none, renorm_epsilon, hash-routed layers
        LayerSpec(name: "none-biased-e64-g8", method: .biasedGroupedTopK, numExperts: 64, topK: 6, numExpertGroup: 8, topKGroup: 3, scoring: .none, renormalize: true, bias: bias(64)),
        LayerSpec(name: "sigmoid-eps-e256-k8", method: .biasedTopK, numExperts: 256, topK: 8, scoring: .sigmoid, renormalize: true, bias: bias(256), renormEpsilon: 1e-20),
        LayerSpec(name: "ssp-grouped-eps", method: .biasedGroupedTopK, numExperts: 256, topK: 8, numExpertGroup: 8, topKGroup: 4, scoring: .sqrtSoftplus, renormalize: true, routedScalingFactor: 2.5, bias: bias(256), renormEpsilon: 1e-6),
        LayerSpec(name: "softmax-eps-e8-k2", method: .softmaxTopK, numExperts: 8, topK: 2, renormalize: true, renormEpsilon: 1e-3),
        LayerSpec(name: "hash-softmax-e60-k4", method: .softmaxTopK, numExperts: 60, topK: 4, renormalize: true, hashTable: .synthetic(vocab: 1000, topK: 4, numExperts: 60)),
        LayerSpec(name: "hash-none-e17-k3-eps", method: .biasedTopK, numExperts: 17, topK: 3, scoring: .none, renormalize: true, routedScalingFactor: 2, renormEpsilon: 1e-4, hashTable: .synthetic(vocab: 50, topK: 3, numExperts: 17)),
    ]
}()

/// Every preset plus the extra shapes.
let allSpecs: [LayerSpec] = Presets.names.map { Presets.spec(named: $0)! } + extraSpecs
