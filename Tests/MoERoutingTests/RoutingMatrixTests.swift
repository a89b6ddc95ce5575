import Testing
@testable import MoERouting

/// Every spec × input family × dtype × kernel against the scalar reference: ids equal, weights
/// equal bit for bit.
@Suite struct RoutingMatrixTests {
    @Test(arguments: allSpecs.map(\.name), InputKind.allCases)
    func kernelsMatchReference(specName: String, kind: InputKind) throws {
        let base = allSpecs.first { $0.name == specName }!
        let tokens = 9
        for gate in DType.allCases {
            var spec = base
            spec.gateDType = gate
            let layer = try BuiltLayer(spec)
            let values = kind.rows(tokens: tokens, experts: spec.numExperts, groups: spec.numExpertGroup,
                                   seed: UInt64(spec.numExperts * 131 + InputKind.allCases.firstIndex(of: kind)!))
            for dtype in DType.allCases {
                let expected = reference(layer, values, tokens: tokens, dtype: dtype)
                for kernel in kernels {
                    let (got, outcome) = try route(layer, CPUBackend(kernel: kernel, threads: 1), values,
                                                   tokens: tokens, dtype: dtype)
                    #expect(got == expected, "\(spec.name) gate=\(gate) input=\(dtype) kernel=\(kernel)")
                    #expect(outcome.usedFallbackCast == (spec.bias != nil && dtype != gate))
                }
            }
        }
    }

    @Test func idsAreDistinctAndInRange() throws {
        for spec in allSpecs {
            let layer = try BuiltLayer(spec)
            let values = InputKind.gaussian.rows(tokens: 16, experts: spec.numExperts, groups: spec.numExpertGroup, seed: 7)
            let (got, _) = try route(layer, CPUBackend(), values, tokens: 16, dtype: .bf16)
            for t in 0..<16 {
                let row = got.ids[t * spec.topK..<(t + 1) * spec.topK]
                #expect(Set(row).count == spec.topK)
                #expect(row.allSatisfy { $0 >= 0 && Int($0) < spec.numExperts })
            }
        }
    }

    @Test func exactTiesPickLowerIndexInDescendingOrder() throws {
        let spec = LayerSpec(name: "ties", method: .softmaxTopK, numExperts: 8, topK: 3, gateDType: .fp32)
        let layer = try BuiltLayer(spec)
        let row: [Float] = [0, 2, 1, 2, 0, 2, 1, 0]
        for kernel in kernels {
            let (got, _) = try route(layer, CPUBackend(kernel: kernel), row, tokens: 1, dtype: .fp32)
            #expect(got.ids == [1, 3, 5])
        }
    }

    @Test func groupTiesPickLowerGroup() throws {
        // Two identical groups; topk_group = 1 must keep group 0.
        let spec = LayerSpec(name: "gties", method: .biasedGroupedTopK, numExperts: 8, topK: 2,
                             numExpertGroup: 2, topKGroup: 1, scoring: .sigmoid, renormalize: true,
                             gateDType: .fp32, bias: [Float](repeating: 0, count: 8))
        let layer = try BuiltLayer(spec)
        let row: [Float] = [0.5, 3, 1, 2, 0.5, 3, 1, 2]
        for kernel in kernels {
            let (got, _) = try route(layer, CPUBackend(kernel: kernel), row, tokens: 1, dtype: .fp32)
            #expect(got.ids == [1, 3])
        }
    }

    @Test func deepseekV3WeightsAreUnbiasedRenormalizedAndScaled() throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: .fp32)!)
        let values = InputKind.gaussian.rows(tokens: 4, experts: 256, groups: 8, seed: 3)
        let (got, _) = try route(layer, CPUBackend(), values, tokens: 4, dtype: .fp32)
        for t in 0..<4 {
            let w = got.weights[t * 8..<(t + 1) * 8]
            #expect(abs(w.reduce(0, +) - 2.5) < 1e-5)
            // selected experts live in at most topk_group = 4 groups of 32
            #expect(Set(got.ids[t * 8..<(t + 1) * 8].map { $0 / 32 }).count <= 4)
        }
    }
}
