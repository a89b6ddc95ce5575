import Testing
@testable import MoERouting

/// Edge cases of the transposed softmax_topk kernel for E <= 16 (16 tokens per block, one
/// vector lane per token): ties inside and across lanes, non-finite rows mixed with finite rows
/// in the same block, token counts that are not multiples of 16, every E and several k, signed
/// zeros, underflowing and huge logits. Every kernel against the reference, bit for bit.
@Suite struct FastPathEdgeTests2 {
    static func rows(_ E: Int, tokens: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        var v: [Float] = []
        for t in 0..<tokens {
            var row = (0..<E).map { _ in rng.gaussian() * 1.7 }
            switch t % 12 {
            case 0: break
            case 1: // all equal: ties everywhere, lowest index wins
                for i in 0..<E { row[i] = 0.5 }
            case 2: // one NaN among finite values
                row[Int(rng.next() % UInt64(E))] = .nan
            case 3: // +inf / -inf
                row[Int(rng.next() % UInt64(E))] = t % 2 == 0 ? .infinity : -.infinity
            case 4: // ties at the top between non-adjacent experts
                let top = row.max()! + 0.25
                row[E - 1] = top
                row[E / 2] = top
            case 5: // neighbours one ulp apart
                let base = rng.gaussian()
                for i in 0..<E { row[i] = i % 2 == 0 ? base : base.nextUp }
            case 6: // huge spread: most scores underflow to 0 (ties at 0 below the top)
                for i in 0..<E { row[i] = i == E / 3 ? 80 : -1.0e4 - Float(i) }
            case 7: // signed zeros at the top
                for i in 0..<E { row[i] = -1 - Float(i % 3) }
                row[0] = -0.0
                if E > 1 { row[E - 1] = 0.0 }
            case 8: // huge magnitudes (x - max may overflow to -inf)
                for i in 0..<E { row[i] = i % 2 == 0 ? 3.0e38 : -3.0e38 }
            case 9: // tiny and subnormal values
                for i in 0..<E { row[i] = Float(bitPattern: UInt32(i * 3 + 1)) * (i % 2 == 0 ? 1 : -1) }
            case 10: // a ladder from 0 down to about -120: scores from 1 to below 2^-80 and into the
                // subnormals, all of them selected when k = E (tiny quotients of the score division)
                let step = Float(110 + Int(rng.next() % 20)) / Float(max(E - 1, 1))
                for i in 0..<E { row[E - 1 - i] = -step * Float(i) + rng.gaussian() * 0.01 }
            default: // pairs of duplicates
                for i in stride(from: 0, to: E - 1, by: 2) { row[i + 1] = row[i] }
            }
            v += row
        }
        return v
    }

    static let specs: [LayerSpec] = {
        var out: [LayerSpec] = []
        for (E, k, renorm) in [(8, 2, true), (8, 2, false), (8, 1, true), (8, 8, true), (16, 2, true), (16, 4, false),
                               (16, 16, true), (1, 1, true), (2, 1, false), (2, 2, true), (3, 2, true), (5, 3, false),
                               (9, 2, true), (12, 5, true), (15, 7, false), (7, 7, true)] {
            out.append(LayerSpec(name: "softmax_topk E\(E) k\(k) renorm \(renorm)", method: .softmaxTopK,
                                 numExperts: E, topK: k, renormalize: renorm,
                                 routedScalingFactor: renorm ? 1 : 2.5, gateDType: .fp32))
        }
        return out
    }()

    /// Sigmoid + bias fast path: bf16 candidates are read from the row itself (aligned pairs of
    /// experts) when E is even, from the widened row when E is odd; rows two tokens ahead are
    /// prefetched (past the end of the input for the last tokens).
    static let biasedSpecs: [LayerSpec] = {
        var out: [LayerSpec] = []
        for (E, k, g, gk) in [(256, 8, 8, 4), (256, 8, 1, 1), (34, 3, 1, 1), (33, 3, 1, 1), (47, 5, 1, 1), (96, 6, 3, 2)] {
            out.append(LayerSpec(name: "biased E\(E) k\(k) G\(g)", method: g > 1 ? .biasedGroupedTopK : .biasedTopK,
                                 numExperts: E, topK: k, numExpertGroup: g, topKGroup: gk, scoring: .sigmoid,
                                 renormalize: true, routedScalingFactor: 2.5, gateDType: .fp32,
                                 bias: (0..<E).map { $0 % 3 == 0 ? 0 : Float($0 % 7) * 0.01 - 0.03 }))
        }
        return out
    }()

    @Test(arguments: biasedSpecs.indices)
    func biasedMatchesReference(index: Int) throws {
        try Self.matchReference(Self.biasedSpecs[index], tokenCounts: [1, 3, 16, 37]) { UInt64(7000 + 31 * index + $0) }
    }

    @Test(arguments: specs.indices)
    func smallSoftmaxMatchesReference(index: Int) throws {
        try Self.matchReference(Self.specs[index], tokenCounts: [1, 15, 16, 17, 31, 48, 77]) { UInt64(4000 + 97 * index + $0) }
    }

    /// Every kernel against the reference for `spec` in each gate dtype, at each token count
    /// (rows from `seed(tokens)`). A shape the layer rules reject is skipped.
    static func matchReference(_ spec: LayerSpec, tokenCounts: [Int], seed: (Int) -> UInt64) throws {
        guard (try? BuiltLayer(spec)) != nil else { return }
        for tokens in tokenCounts {
            let values = rows(spec.numExperts, tokens: tokens, seed: seed(tokens))
            for dtype in DType.allCases {
                var l = spec
                l.gateDType = dtype
                let layer = try BuiltLayer(l)
                let expected = reference(layer, values, tokens: tokens, dtype: dtype)
                for kernel in kernels {
                    let (got, _) = try route(layer, CPUBackend(kernel: kernel, threads: 1), values, tokens: tokens, dtype: dtype)
                    #expect(got == expected, "\(spec.name) tokens=\(tokens) dtype=\(dtype) kernel=\(kernel)")
                }
            }
        }
    }
}
