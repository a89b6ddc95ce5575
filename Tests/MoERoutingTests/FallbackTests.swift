import Testing
@testable import MoERouting

/// The pre-cast: a matched request converts nothing; a mismatched one converts the stored bias
/// to its own dtype, is counted, and gets the same answer a layer built in that dtype would.
@Suite struct FallbackTests {
    @Test func matchedPathConvertsNothing() throws {
        for gate in DType.allCases {
            let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: gate)!)
            let values = InputKind.gaussian.rows(tokens: 600, experts: 256, groups: 8, seed: 5)
            for tokens in [1, 64, 600] {
                let (_, outcome) = try route(layer, CPUBackend(), Array(values[0..<tokens * 256]), tokens: tokens, dtype: gate)
                #expect(!outcome.usedFallbackCast)
            }
            #expect(layer.fallbackCasts == 0)
            #expect(layer.biasCopies == 0, "the matched path made a bias copy")
        }
    }

    /// Not just a counter: the pointer the matched path hands the kernel is the layer's own
    /// bias storage, built once; only the fallback hands over another buffer.
    @Test func matchedPathHandsTheKernelTheBiasBuiltAtStartup() throws {
        for gate in DType.allCases {
            let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: gate)!)
            let built = layer.kernelBias!.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) }
            for dtype in DType.allCases {
                let (seen, fallback) = layer.withRequestBias(dtype) { p, fallback in (UInt(bitPattern: p), fallback) }
                #expect(fallback == (dtype != gate))
                #expect((seen == built) == (dtype == gate), "gate \(gate), request \(dtype)")
            }
        }
    }

    @Test func storedBiasIsCastOnceAtBuild() throws {
        let spec = Presets.spec(named: "kimi-k2", gateDType: .bf16)!
        let layer = try BuiltLayer(spec)
        guard case .half(.bf16, let bits) = layer.storedBias else {
            Issue.record("bias not stored as bf16")
            return
        }
        #expect(bits == spec.bias!.map { DType.bf16.narrow($0) })
        #expect(layer.kernelBias! == bits.map { DType.bf16.widen($0) })
    }

    @Test func mismatchedRequestTakesCountedFallback() throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: .fp32)!)
        let values = InputKind.wide.rows(tokens: 32, experts: 256, groups: 8, seed: 9)
        for (i, dtype) in [DType.bf16, .fp16].enumerated() {
            let (got, outcome) = try route(layer, CPUBackend(), values, tokens: 32, dtype: dtype)
            #expect(outcome.usedFallbackCast)
            #expect(layer.fallbackCasts == i + 1)
            // Same as a layer whose gate dtype is the request's, built from the stored fp32 bias.
            var spec = layer.spec
            spec.gateDType = dtype
            let direct = try BuiltLayer(spec)
            let (expected, _) = try route(direct, CPUBackend(), values, tokens: 32, dtype: dtype)
            #expect(got == expected)
        }
        #expect(layer.biasCopies == 2)
    }

    @Test func layersWithoutBiasNeverCount() throws {
        let layer = try BuiltLayer(Presets.spec(named: "qwen3-moe", gateDType: .bf16)!)
        let values = InputKind.gaussian.rows(tokens: 4, experts: 128, groups: 1, seed: 1)
        let (_, outcome) = try route(layer, CPUBackend(), values, tokens: 4, dtype: .fp32)
        #expect(!outcome.usedFallbackCast)
        #expect(layer.fallbackCasts == 0)
    }
}
