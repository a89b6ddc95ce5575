import CMoEKernels
import Glibc
import Testing
@testable import MoERouting

@Suite struct ParallelTests {
    @Test func splitBatchesEqualOneThread() throws {
        for name in ["deepseek-v3", "kimi-k2", "qwen3-moe"] {
            let layer = try BuiltLayer(Presets.spec(named: name)!)
            let E = layer.spec.numExperts, tokens = 3001
            var values = InputKind.wide.rows(tokens: tokens, experts: E, groups: layer.spec.numExpertGroup, seed: 8)
            values[1500 * E] = .nan
            let (one, o1) = try route(layer, CPUBackend(threads: 1), values, tokens: tokens, dtype: .bf16)
            let (many, o2) = try route(layer, CPUBackend(threads: 4, parallelThreshold: 64), values, tokens: tokens, dtype: .bf16)
            #expect(one == many)
            #expect(o1 == o2 && o2.nonFiniteInputs == 1)
        }
    }

    @Test func concurrentCallersShareOneLayer() async throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3")!)
        let values = InputKind.gaussian.rows(tokens: 64, experts: 256, groups: 8, seed: 12)
        let (expected, _) = try route(layer, CPUBackend(threads: 1), values, tokens: 64, dtype: .bf16)
        try await withThrowingTaskGroup(of: Routed.self) { group in
            for _ in 0..<8 {
                group.addTask { try route(layer, CPUBackend(), values, tokens: 64, dtype: .bf16).0 }
            }
            for try await got in group { #expect(got == expected) }
        }
    }
}

/// The contract allows exp/sigmoid within 2 ulp of fp32; check ours against double precision.
@Suite struct MathAccuracyTests {
    static func ulpError(_ got: Float, _ exact: Double) -> Double {
        if exact == 0 { return got == 0 ? 0 : Double(got.bitPattern & 0x7fff_ffff) }
        let ulp = Double(Float(exact).ulp == 0 ? Float.leastNonzeroMagnitude : Float(exact).ulp)
        return abs(Double(got) - exact) / ulp
    }

    @Test func sigmoidWithinTwoUlpOverTheWholeRange() {
        var worst = 0.0
        // every 61st fp32 pattern, both signs: covers tiny, huge, subnormal and saturating inputs
        var bits: UInt32 = 0
        while bits < 0x7f80_0000 {
            for sign: UInt32 in [0, 0x8000_0000] {
                let x = Float(bitPattern: bits | sign)
                let exact = 1 / (1 + Glibc.exp(-Double(x)))
                worst = max(worst, Self.ulpError(mrk_sigmoid(x), exact))
            }
            bits &+= 61
        }
        #expect(worst <= 2, "sigmoid max error \(worst) ulp")
    }

    @Test func expWithinTwoUlp() {
        var worst = 0.0
        var bits: UInt32 = 0
        while bits < 0x7f80_0000 {
            let t = -Float(bitPattern: bits)
            worst = max(worst, Self.ulpError(mrk_exp_nonpositive(t), Glibc.exp(Double(t))))
            bits &+= 29
        }
        #expect(worst <= 2, "exp max error \(worst) ulp")
    }

    @Test func saturationIsClean() {
        #expect(mrk_sigmoid(.infinity) == 1)
        #expect(mrk_sigmoid(-.infinity) == 0)
        #expect(mrk_sigmoid(1e30) == 1)
        #expect(mrk_sigmoid(-1e30) == 0)
        #expect(mrk_sigmoid(-100) > 0) // subnormal, not flushed
        #expect(mrk_sigmoid(.nan).isNaN)
        #expect(mrk_exp_nonpositive(-.infinity) == 0)
        #expect(mrk_exp_nonpositive(0) == 1)
        #expect(ReferenceRouter.exp(-3.7) == mrk_exp_nonpositive(-3.7))
    }
}
