import Testing
@testable import MoERouting

/// Each rule of shared/ROUTING.md "Layer validation" is its own error naming field and value.
@Suite struct ValidationTests {
    static let good = LayerSpec(name: "v3", method: .biasedGroupedTopK, numExperts: 256, topK: 8,
                                numExpertGroup: 8, topKGroup: 4, scoring: .sigmoid, renormalize: true,
                                routedScalingFactor: 2.5, bias: [Float](repeating: 0.01, count: 256))

    nonisolated(unsafe) static let cases: [(String, (inout LayerSpec) -> Void, String, String)] = [
        ("empty name", { $0.name = "" }, "name", "\"\""),
        ("E = 0", { $0.numExperts = 0 }, "num_experts", "0"),
        ("E too large", { $0.numExperts = 2048; $0.bias = [Float](repeating: 0, count: 2048) }, "num_experts", "2048"),
        ("k = 0", { $0.topK = 0 }, "top_k", "0"),
        ("k > E", { $0.numExperts = 8; $0.numExpertGroup = 1; $0.topKGroup = 1; $0.topK = 9; $0.bias = [Float](repeating: 0, count: 8) }, "top_k", "9"),
        ("k too large", { $0.topK = 33 }, "top_k", "33"),
        ("G = 0", { $0.numExpertGroup = 0 }, "num_expert_group", "0"),
        ("E % G", { $0.numExpertGroup = 7 }, "num_expert_group", "7"),
        ("Gk = 0", { $0.topKGroup = 0 }, "topk_group", "0"),
        ("Gk > G", { $0.topKGroup = 9 }, "topk_group", "9"),
        ("k > Gk*P", { $0.numExpertGroup = 16; $0.topKGroup = 1; $0.topK = 17 }, "top_k", "17"),
        ("P < 2", { $0.numExpertGroup = 256; $0.topKGroup = 8 }, "num_expert_group", "256"),
        ("groups on ungrouped method", { $0.method = .biasedTopK }, "num_expert_group", "8"),
        ("rsf = 0", { $0.routedScalingFactor = 0 }, "routed_scaling_factor", "0.0"),
        ("rsf NaN", { $0.routedScalingFactor = .nan }, "routed_scaling_factor", "nan"),
        ("rsf inf", { $0.routedScalingFactor = .infinity }, "routed_scaling_factor", "inf"),
        ("missing bias", { $0.bias = nil }, "bias", "none"),
        ("short bias", { $0.bias = [0, 1] }, "bias", "2 values"),
        ("NaN bias", { $0.bias![5] = .nan }, "bias[5]", "nan"),
        ("inf bias", { $0.bias![7] = -.infinity }, "bias[7]", "-inf"),
        ("bias beyond fp16", { $0.bias![3] = 70000 }, "bias[3]", "70000.0"),
        ("bias on unbiased method", { $0.method = .groupedTopK }, "bias", "256 values"),
    ]

    @Test(arguments: cases.indices)
    func violationNamesFieldAndValue(index: Int) {
        let (label, mutate, field, value) = Self.cases[index]
        var spec = Self.good
        mutate(&spec)
        #expect(throws: LayerSpecError.self, "\(label)") { try BuiltLayer(spec) }
        do {
            _ = try BuiltLayer(spec)
        } catch {
            #expect(error.field == field, "\(label): \(error)")
            #expect(error.value == value, "\(label): \(error)")
            #expect(error.description.contains(field))
        }
    }

    @Test func everyPresetBuilds() throws {
        for name in Presets.names {
            for d in DType.allCases { _ = try BuiltLayer(Presets.spec(named: name, gateDType: d)!) }
        }
        #expect(Presets.spec(named: "nope") == nil)
    }
}
