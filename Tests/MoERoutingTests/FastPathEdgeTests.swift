import Testing
@testable import MoERouting

/// Edge cases of the AVX-512 fast paths (candidate pruning + sorting network): near-ties that
/// only rounding separates or merges, ties at the pruning threshold, many equal values, more
/// candidates than one vector holds, underflowing scores. Every kernel against the reference.
@Suite struct FastPathEdgeTests {
    static func rows(_ E: Int, tokens: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        var v: [Float] = []
        for t in 0..<tokens {
            var row = (0..<E).map { _ in rng.gaussian() * 1.7 }
            switch t % 8 {
            case 0: break
            case 1: // neighbours one ulp apart: distinct logits, scores that may round equal
                let base = rng.gaussian()
                for i in stride(from: 0, to: E, by: 3) { row[i] = base.nextUp.nextUp; row[(i + 1) % E] = base.nextUp; row[(i + 2) % E] = base }
            case 2: // a plateau of equal top values wider than one candidate vector
                let top = row.max()! + 1
                for i in stride(from: 1, to: E, by: 2) { row[i] = top }
            case 3: // a few exact ties at the top, rest far below (scores underflow to 0)
                for i in 0..<E { row[i] = i % 7 == 3 ? 5 : -1.0e4 }
            case 4: // all equal
                for i in 0..<E { row[i] = 0.25 }
            case 5: // k-th and (k+1)-th separated by one ulp
                let sorted = row.enumerated().sorted { $0.element > $1.element }
                for (j, e) in sorted.prefix(12).enumerated() { row[e.offset] = Float(2 - j / 3) + Float(j % 3) * Float(2.0).ulp }
            case 6: // huge and tiny magnitudes
                for i in 0..<E { row[i] = i % 5 == 0 ? rng.gaussian() * 1.0e3 : rng.gaussian() * 1.0e-30 }
            case 7 where t % 16 == 15: // signed zeros among the top logits (equal keys)
                for i in 0..<E { row[i] = -1 - Float(i % 5) }
                row[1] = -0.0
                row[2] = 0.0
            default: // duplicated values in pairs
                for i in stride(from: 0, to: E - 1, by: 2) { row[i + 1] = row[i] }
            }
            v += row
        }
        return v
    }

    static let specs: [LayerSpec] = {
        var out: [LayerSpec] = []
        for (E, k, renorm) in [(8, 2, true), (64, 6, false), (128, 8, true), (40, 5, true), (128, 16, true), (24, 16, false), (1024, 8, true), (200, 1, false)] {
            out.append(LayerSpec(name: "softmax_topk E\(E) k\(k)", method: .softmaxTopK, numExperts: E, topK: k,
                                 renormalize: renorm, gateDType: .fp32))
        }
        for (E, k) in [(128, 4), (40, 5), (64, 16), (8, 2)] {
            out.append(LayerSpec(name: "topk_softmax E\(E) k\(k)", method: .topKSoftmax, numExperts: E, topK: k,
                                 routedScalingFactor: 1.5, gateDType: .fp32))
        }
        for (E, k, g, gk, renorm) in [(160, 6, 8, 3, false), (64, 4, 4, 2, true), (96, 5, 3, 2, true), (48, 6, 16, 5, false), (40, 2, 2, 1, true)] {
            out.append(LayerSpec(name: "grouped_topk E\(E) k\(k) G\(g)", method: .groupedTopK, numExperts: E, topK: k,
                                 numExpertGroup: g, topKGroup: gk, renormalize: renorm, routedScalingFactor: 16,
                                 gateDType: .fp32))
        }
        for (E, k) in [(128, 1), (24, 3)] {
            out.append(LayerSpec(name: "llama4 E\(E) k\(k)", method: .llama4Top1, numExperts: E, topK: k,
                                 scoring: .sigmoid, gateDType: .fp32))
        }
        for (E, k, g, gk) in [(256, 8, 8, 4), (256, 8, 1, 1), (128, 8, 1, 1), (64, 4, 4, 2), (96, 12, 1, 1)] {
            out.append(LayerSpec(name: "biased E\(E) k\(k) G\(g)", method: g > 1 ? .biasedGroupedTopK : .biasedTopK,
                                 numExperts: E, topK: k, numExpertGroup: g, topKGroup: gk, scoring: .sigmoid,
                                 renormalize: true, routedScalingFactor: 2.5, gateDType: .fp32,
                                 bias: (0..<E).map { $0 % 4 == 0 ? 0 : Float($0 % 9) * 0.01 - 0.04 }))
        }
        return out
    }()

    @Test(arguments: specs.indices)
    func fastPathsMatchReference(index: Int) throws {
        let spec = Self.specs[index]
        let layer = try BuiltLayer(spec)
        let tokens = 40
        let values = Self.rows(spec.numExperts, tokens: tokens, seed: UInt64(900 + index))
        for dtype in DType.allCases {
            var l = spec
            l.gateDType = dtype
            let layer = try BuiltLayer(l)
            let expected = reference(layer, values, tokens: tokens, dtype: dtype)
            for kernel in kernels {
                let (got, _) = try route(layer, CPUBackend(kernel: kernel, threads: 1), values, tokens: tokens, dtype: dtype)
                #expect(got == expected, "\(spec.name) dtype=\(dtype) kernel=\(kernel)")
            }
        }
        _ = layer
    }

    /// The sorting network accepts runs of exactly equal keys (already in index order), but not
    /// a run whose keys only share their top 28 bits. Here experts 20 and 21 tie exactly at the
    /// k-th place and expert 22 scores a few ulps higher inside the same run, just past the k-th
    /// sorted position: the contract picks 22, a check limited to the first k positions would
    /// pick 20. Several base values, so that some tokens put the three in one run.
    @Test func runOfEqualTruncationsWithDifferentKeysIsRankedExactly() throws {
        let E = 64, tokens = 32
        let spec = LayerSpec(name: "runs", method: .softmaxTopK, numExperts: E, topK: 6, renormalize: false,
                             gateDType: .fp32)
        var values: [Float] = []
        for t in 0..<tokens {
            var row = [Float](repeating: -5, count: E)
            for i in [10, 26, 42, 58, 11] { row[i] = 3 }  // five exact ties on top, in two lanes
            let base = 1 + Float(t) * 0.03125
            row[20] = base
            row[21] = base
            row[22] = base.nextUp.nextUp.nextUp.nextUp
            row[23] = 0.5  // one more lane maximum, so that 20, 21 and 22 are all candidates
            values += row
        }
        let layer = try BuiltLayer(spec)
        let expected = reference(layer, values, tokens: tokens, dtype: .fp32)
        for t in 0..<tokens { #expect(Array(expected.ids[(6 * t)..<(6 * t + 6)]) == [10, 11, 26, 42, 58, 22]) }
        for kernel in kernels {
            let (got, _) = try route(layer, CPUBackend(kernel: kernel, threads: 1), values, tokens: tokens, dtype: .fp32)
            #expect(got == expected, "kernel=\(kernel)")
        }
    }

    /// bf16 batches route through an even/odd key layout (each 32 experts: the even ones, then
    /// the odd ones), so candidates reach the ranking out of index order. A tie at the k-th
    /// place between expert 17 (odd) and 26 (even, earlier in that layout) must still go to the
    /// lower index, on every kernel, on the fast path's ranking (few candidates, a clear choice
    /// of groups).
    @Test func tieAcrossEvenOddLayoutGoesToLowerIndex() throws {
        let E = 256, tokens = 8
        let spec = LayerSpec(name: "eo ties", method: .biasedGroupedTopK, numExperts: E, topK: 8,
                             numExpertGroup: 8, topKGroup: 4, scoring: .sigmoid, renormalize: true,
                             routedScalingFactor: 2.5, gateDType: .bf16, bias: [Float](repeating: 0, count: E))
        // groups 0-3 kept with high second-best scores, so only 9 experts are candidates
        var row = (0..<E).map { -3 - 0.5 * Float($0 / 32) }
        row[0] = 3
        for i in [40, 41, 70, 80, 100, 120] { row[i] = 2.5 }
        row[17] = 2
        row[26] = 2
        let values = Array([[Float]](repeating: row, count: tokens).joined())
        let layer = try BuiltLayer(spec)
        let expected = reference(layer, values, tokens: tokens, dtype: .bf16)
        #expect(Array(expected.ids.prefix(8)) == [0, 40, 41, 70, 80, 100, 120, 17])
        for kernel in kernels {
            let (got, _) = try route(layer, CPUBackend(kernel: kernel, threads: 1), values, tokens: tokens, dtype: .bf16)
            #expect(got == expected, "kernel=\(kernel)")
        }
    }
}
