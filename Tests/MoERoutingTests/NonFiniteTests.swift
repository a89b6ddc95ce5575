import Testing
@testable import MoERouting

@Suite struct NonFiniteTests {
    @Test(arguments: DType.allCases)
    func clampCountsAndZeroes(dtype: DType) throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: dtype)!)
        var values = InputKind.gaussian.rows(tokens: 3, experts: 256, groups: 8, seed: 2)
        values[10] = .nan
        values[256 + 3] = .infinity
        values[256 + 4] = -.infinity
        for kernel in kernels {
            let (got, outcome) = try route(layer, CPUBackend(kernel: kernel), values, tokens: 3, dtype: dtype)
            #expect(outcome.nonFiniteInputs == 3)
            #expect(got.weights.allSatisfy { $0.isFinite })
            #expect(got == reference(layer, values, tokens: 3, dtype: dtype))
        }
    }

    @Test func softmaxRowWithNaNRoutesToZeroWeights() throws {
        let layer = try BuiltLayer(LayerSpec(name: "s", method: .softmaxTopK, numExperts: 8, topK: 2,
                                             renormalize: true, gateDType: .fp32))
        let row: [Float] = [1, 2, .nan, 3, 4, 5, 6, 7]
        for kernel in kernels {
            let (got, _) = try route(layer, CPUBackend(kernel: kernel), row, tokens: 1, dtype: .fp32)
            // the whole softmax is NaN, every score clamps to 0: ties resolve to the lowest ids
            #expect(got.ids == [0, 1])
            #expect(got.weights == [0, 0])
        }
    }

    @Test(arguments: DType.allCases)
    func rejectNamesFirstTokenAndWritesNothing(dtype: DType) throws {
        var spec = Presets.spec(named: "kimi-k2", gateDType: dtype)!
        spec.nonFinite = .reject
        let layer = try BuiltLayer(spec)
        var values = InputKind.gaussian.rows(tokens: 5, experts: 384, groups: 1, seed: 4)
        values[3 * 384 + 17] = .nan
        values[4 * 384] = -.infinity
        let bytes = encode(values, as: dtype)
        var w = [Float](repeating: 42, count: 40)
        var ids = [Int32](repeating: 42, count: 40)
        #expect(throws: RouteError.nonFiniteInput(firstToken: 3, count: 2)) {
            try bytes.withUnsafeBytes { input in
                try w.withUnsafeMutableBufferPointer { wp in
                    try ids.withUnsafeMutableBufferPointer { ip in
                        try CPUBackend().route(layer: layer, input: input, dtype: dtype, tokens: 5, weights: wp, ids: ip)
                    }
                }
            }
        }
        #expect(w.allSatisfy { $0 == 42 } && ids.allSatisfy { $0 == 42 })
        // the same layer routes finite input normally
        values[3 * 384 + 17] = 0
        values[4 * 384] = 0
        let (_, outcome) = try route(layer, CPUBackend(), values, tokens: 5, dtype: dtype)
        #expect(outcome.nonFiniteInputs == 0)
    }

    @Test func shapeErrors() throws {
        let layer = try BuiltLayer(Presets.spec(named: "mixtral-8x7b")!)
        let input = [UInt8](repeating: 0, count: 8 * 2 * 3)
        var w = [Float](repeating: 0, count: 6), ids = [Int32](repeating: 0, count: 6)
        func attempt(tokens: Int, bytes: Int, wCount: Int, idCount: Int) -> RouteError? {
            input.withUnsafeBytes { inp -> RouteError? in
                w.withUnsafeMutableBufferPointer { wp -> RouteError? in
                    ids.withUnsafeMutableBufferPointer { ip -> RouteError? in
                        do {
                            _ = try CPUBackend().route(
                                layer: layer, input: UnsafeRawBufferPointer(rebasing: inp[0..<bytes]), dtype: .bf16,
                                tokens: tokens, weights: UnsafeMutableBufferPointer(rebasing: wp[0..<wCount]),
                                ids: UnsafeMutableBufferPointer(rebasing: ip[0..<idCount]))
                            return nil
                        } catch { return error as? RouteError }
                    }
                }
            }
        }
        #expect(attempt(tokens: 3, bytes: 48, wCount: 6, idCount: 6) == nil)
        #expect(attempt(tokens: 3, bytes: 40, wCount: 6, idCount: 6) == .inputSize(expected: 48, actual: 40))
        #expect(attempt(tokens: 3, bytes: 48, wCount: 5, idCount: 6) == .outputSize(name: "topk_weights", expected: 6, actual: 5))
        #expect(attempt(tokens: 3, bytes: 48, wCount: 6, idCount: 4) == .outputSize(name: "topk_ids", expected: 6, actual: 4))
        #expect(attempt(tokens: -1, bytes: 48, wCount: 6, idCount: 6) == .tokenCount(-1))
        #expect(attempt(tokens: 0, bytes: 0, wCount: 0, idCount: 0) == nil)
    }
}
