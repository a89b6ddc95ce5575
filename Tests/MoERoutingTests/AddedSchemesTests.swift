import CMoEKernels
import Dispatch
import Glibc
import Synchronization
import Testing
@testable import MoERouting

/// Issue 17's schemes (shared/ROUTING.md, "Added schemes"): sqrt(softplus) and scoring none,
/// renorm_epsilon, hash-routed layers, padding masks, per-expert load counting and expert
/// placement.

/// The contract's sqrt(softplus) against double precision: within 2 ulp of fp32.
@Suite struct SqrtSoftplusAccuracyTests {
    /// sqrt(softplus(x)) in double, softplus(x) = x above 20 (the contract's threshold).
    static func exact(_ x: Float) -> Double {
        let d = Double(x)
        return (d > 20 ? d : log1p(Glibc.exp(d))).squareRoot()
    }

    @Test func withinTwoUlpOverTheFiniteRange() {
        // every 97th fp32 bit pattern (both signs: the sign is the top bit), 4.4e7 values, split
        // over the cores
        let step: UInt64 = 97, parts = 64
        let worst = Mutex<(ulp: Double, at: Float)>((0, 0))
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            var local: (ulp: Double, at: Float) = (0, 0)
            let span = (UInt64(1) << 32) / UInt64(parts)
            var b = (UInt64(p) * span + step - 1) / step * step
            while b < UInt64(p + 1) * span {
                let x = Float(bitPattern: UInt32(b))
                if x.isFinite {
                    let e = MathAccuracyTests.ulpError(mrk_sqrtsoftplus(x), Self.exact(x))
                    if e > local.ulp { local = (e, x) }
                }
                b += step
            }
            worst.withLock { if local.ulp > $0.ulp { $0 = local } }
        }
        let (ulp, at) = worst.withLock { $0 }
        #expect(ulp <= 2, "sqrtsoftplus max error \(ulp) ulp at x = \(at)")
    }

    @Test func edgesAndBranchBoundaries() {
        for x: Float in [20, -20, -17.5, 0, -0.0, 1e-30, -1e-30, 88, -88, 1e30, -1e30, .greatestFiniteMagnitude,
                         -.greatestFiniteMagnitude, .leastNonzeroMagnitude]
        {
            for v in [x, x.nextUp, x.nextDown] where v.isFinite {
                #expect(MathAccuracyTests.ulpError(mrk_sqrtsoftplus(v), Self.exact(v)) <= 2, "x = \(v)")
            }
        }
        #expect(mrk_sqrtsoftplus(.infinity) == .infinity)
        #expect(mrk_sqrtsoftplus(-.infinity) == 0)
        #expect(mrk_sqrtsoftplus(.nan).isNaN)
        #expect(mrk_sqrtsoftplus(-1e30) == 0)
        #expect(mrk_sqrtsoftplus(-150) > 0) // e^-75: subnormal, not flushed
        #expect(mrk_sqrtsoftplus(400) == Float(20)) // sqrt(x) above 20
        // the Swift reference computes the same bits
        for x: Float in [-40, -17.5, -3.25, -0.5, 0, 0.375, 1, 7.5, 11.25, 19.99, 20, 25] {
            #expect(ReferenceRouter.sqrtSoftplus(x).bitPattern == mrk_sqrtsoftplus(x).bitPattern, "x = \(x)")
        }
    }
}

/// Random rows, every sixth with NaN and ±inf sprinkled (a row holding one takes the exact path
/// on AVX-512; the others are the fast paths'), and rows that reach every branch of
/// sqrt(softplus) and of its fast-path approximation (below -20.5, above 11.25 and 20).
func sprinkledRows(tokens: Int, experts E: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<tokens * E).map { i in
        let t = i / E
        switch t % 6 == 1 ? Int.random(in: 0..<20, using: &rng) : 3 {
        case 0: return .nan
        case 1: return .infinity
        case 2: return -.infinity
        default:
            switch t % 4 {
            case 0: return rng.gaussian()
            case 1: return rng.gaussian() * 12
            case 2: return [-30, -20.5, -17.5, 0, 11.25, 19.5, 20, 24][Int.random(in: 0..<8, using: &rng)]
            default: return rng.gaussian() * 3 + (t % 8 == 3 ? 15 : 0)
            }
        }
    }
}

/// The added schemes, each with a bias (a biased method) and without one.
let addedSchemeSpecs: [LayerSpec] = {
    func bias(_ e: Int) -> [Float] { Presets.syntheticBias(count: e).map { $0 * 3 } }
    return [
        Presets.spec(named: "deepseek-v4", gateDType: .fp32)!,
        Presets.spec(named: "deepseek-v4-flash", gateDType: .bf16)!,
        LayerSpec(name: "ssp-grouped", method: .biasedGroupedTopK, numExperts: 256, topK: 8, numExpertGroup: 8, topKGroup: 4, scoring: .sqrtSoftplus, renormalize: true, routedScalingFactor: 2.5, bias: bias(256)),
        LayerSpec(name: "ssp-unbiased-grouped", method: .groupedTopK, numExperts: 72, topK: 5, numExpertGroup: 6, topKGroup: 2, scoring: .sqrtSoftplus, renormalize: true),
        LayerSpec(name: "ssp-softmax-topk", method: .softmaxTopK, numExperts: 40, topK: 4, scoring: .sqrtSoftplus),
        LayerSpec(name: "none-biased", method: .biasedTopK, numExperts: 384, topK: 6, scoring: .none, renormalize: true, bias: bias(384)),
        LayerSpec(name: "none-unbiased", method: .softmaxTopK, numExperts: 64, topK: 6, scoring: .none, renormalize: true, routedScalingFactor: 2),
        LayerSpec(name: "eps-sigmoid-biased", method: .biasedTopK, numExperts: 256, topK: 8, scoring: .sigmoid, renormalize: true, bias: bias(256), renormEpsilon: 1e-20),
        LayerSpec(name: "eps-sigmoid-grouped", method: .biasedGroupedTopK, numExperts: 256, topK: 8, numExpertGroup: 8, topKGroup: 4, scoring: .sigmoid, renormalize: true, bias: bias(256), renormEpsilon: 1e-6),
        LayerSpec(name: "eps-ssp-biased", method: .biasedTopK, numExperts: 384, topK: 6, scoring: .sqrtSoftplus, renormalize: true, routedScalingFactor: 2.5, bias: bias(384), renormEpsilon: 1e-3),
        LayerSpec(name: "eps-softmax-small", method: .softmaxTopK, numExperts: 8, topK: 2, renormalize: true, renormEpsilon: 1e-3),
        LayerSpec(name: "eps-softmax", method: .softmaxTopK, numExperts: 128, topK: 8, renormalize: true, renormEpsilon: 1e-20),
        LayerSpec(name: "eps-grouped-softmax", method: .groupedTopK, numExperts: 160, topK: 6, numExpertGroup: 8, topKGroup: 3, renormalize: true, routedScalingFactor: 16, renormEpsilon: 1e-5),
        Presets.spec(named: "deepseek-v4-hash", gateDType: .fp32)!,
        LayerSpec(name: "hash-sigmoid-biased", method: .biasedTopK, numExperts: 64, topK: 6, scoring: .sigmoid, renormalize: true, bias: bias(64), renormEpsilon: 1e-6, hashTable: .synthetic(vocab: 500, topK: 6, numExperts: 64)),
        LayerSpec(name: "hash-softmax", method: .softmaxTopK, numExperts: 60, topK: 4, renormalize: true, hashTable: .synthetic(vocab: 1000, topK: 4, numExperts: 60)),
        LayerSpec(name: "hash-none-k32", method: .biasedTopK, numExperts: 1024, topK: 32, scoring: .none, renormalize: false, routedScalingFactor: 0.5, hashTable: .synthetic(vocab: 300, topK: 32, numExperts: 1024)),
    ]
}()

@Suite(.enabled(if: CPUBackend.Kernel.avx512.isSupported, "this CPU has no AVX-512"))
struct AddedSchemesKernelTests {
    @Test(arguments: addedSchemeSpecs.map(\.name), DType.allCases)
    func genericAndAVX512AreBitIdentical(specName: String, dtype: DType) throws {
        var spec = addedSchemeSpecs.first { $0.name == specName }!
        spec.gateDType = dtype
        let layer = try BuiltLayer(spec)
        let tokens = 83 // blocks of 16 and a partial one
        let values = sprinkledRows(tokens: tokens, experts: spec.numExperts, seed: UInt64(spec.numExperts * 7 + dtype.byteSize))
        let mask = (0..<tokens).map { UInt8($0 % 7 == 2 ? 1 : 0) }
        for extras in [TestExtras.defaults(layer, tokens: tokens),
                       TestExtras.defaults(layer, tokens: tokens, mask: mask, idBytes: 8)] {
            let (generic, g) = try route(layer, CPUBackend(kernel: .generic, threads: 1), values, tokens: tokens, dtype: dtype, extras: extras)
            let (avx512, a) = try route(layer, CPUBackend(kernel: .avx512, threads: 1), values, tokens: tokens, dtype: dtype, extras: extras)
            #expect(avx512 == generic, "\(specName) \(dtype) mask=\(extras.mask != nil)")
            #expect(a == g)
            #expect(generic == reference(layer, values, tokens: tokens, dtype: dtype, extras: extras), "\(specName) \(dtype)")
        }
    }

    /// DeepSeek-V4 rows whose keys nearly tie (the fast path's candidates then include experts
    /// its bound cannot separate, or too many: the exact path decides).
    @Test(arguments: DType.allCases)
    func nearTiesAndEqualRowsTakeTheExactPathAlike(dtype: DType) throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v4", gateDType: dtype)!)
        for kind in [InputKind.nearTies, .allEqual, .exactTies, .tiny, .huge] {
            let values = kind.rows(tokens: 40, experts: 384, groups: 1, seed: 5)
            let (g, _) = try route(layer, CPUBackend(kernel: .generic, threads: 1), values, tokens: 40, dtype: dtype)
            let (a, _) = try route(layer, CPUBackend(kernel: .avx512, threads: 1), values, tokens: 40, dtype: dtype)
            #expect(a == g, "\(kind) \(dtype)")
        }
    }
}

@Suite struct HashRoutingTests {
    let layer = try! BuiltLayer(Presets.spec(named: "deepseek-v4-hash", gateDType: .fp32)!)

    /// Routes with explicit extras into buffers that start at -7; returns them whatever happened.
    func attempt(_ values: [Float], tokens: Int, _ extras: TestExtras, backend: CPUBackend = CPUBackend())
        -> (result: Result<RouteOutcome, RouteError>, w: [Float], ids: [Int32])
    {
        let bytes = encode(values, as: .fp32)
        var w = [Float](repeating: -7, count: tokens * 6), ids = [Int32](repeating: -7, count: tokens * 6)
        let result = bytes.withUnsafeBytes { input in
            w.withUnsafeMutableBufferPointer { wp in
                ids.withUnsafeMutableBufferPointer { ip in
                    extras.with { ex -> Result<RouteOutcome, RouteError> in
                        do throws(RouteError) {
                            var job = try RouteJob(layer: layer, input: input, dtype: .fp32, tokens: tokens, weights: wp, ids: ip)
                            job.extras = ex
                            return .success(try backend.route(job, on: layer))
                        } catch {
                            return .failure(error)
                        }
                    }
                }
            }
        }
        return (result, w, ids)
    }

    func routeRaw(_ values: [Float], tokens: Int, _ extras: TestExtras, backend: CPUBackend = CPUBackend()) throws(RouteError)
        -> (w: [Float], ids: [Int32], outcome: RouteOutcome)
    {
        let r = attempt(values, tokens: tokens, extras, backend: backend)
        return (r.w, r.ids, try r.result.get())
    }

    /// The error `extras` cause, after checking that nothing was written.
    func failure(_ values: [Float], tokens: Int, _ extras: TestExtras) -> RouteError? {
        let r = attempt(values, tokens: tokens, extras)
        #expect(r.w.allSatisfy { $0 == -7 } && r.ids.allSatisfy { $0 == -7 })
        guard case .failure(let error) = r.result else { return nil }
        return error
    }

    @Test func idsComeFromTheTableAndInt32EqualsInt64() throws {
        let tokens = 50
        let values = InputKind.wide.rows(tokens: tokens, experts: 384, groups: 1, seed: 3)
        let ids = (0..<tokens).map { Int64(($0 * 104_729 + 7) % Presets.deepSeekV4Vocab) }
        let a = try routeRaw(values, tokens: tokens, TestExtras(tokenIds: ids, idBytes: 4))
        let b = try routeRaw(values, tokens: tokens, TestExtras(tokenIds: ids, idBytes: 8))
        #expect(a.ids == b.ids && a.w.map(\.bitPattern) == b.w.map(\.bitPattern))
        let table = layer.spec.hashTable!
        for t in 0..<tokens {
            let row = Array(table.ids[Int(ids[t]) * 6..<(Int(ids[t]) + 1) * 6])
            #expect(Array(a.ids[t * 6..<(t + 1) * 6]) == row)
            let sum = a.w[t * 6..<(t + 1) * 6].reduce(0, +)
            #expect(abs(sum - 2.5) < 1e-5) // renormalised, times rsf
        }
        let expected = reference(layer, values, tokens: tokens, dtype: .fp32, extras: TestExtras(tokenIds: ids))
        #expect(Routed(weights: a.w, ids: a.ids, nonFinite: a.outcome.nonFiniteInputs) == expected)
    }

    @Test func masksAreMinusOneAndZeroAndUncounted() throws {
        let tokens = 20
        var values = InputKind.gaussian.rows(tokens: tokens, experts: 384, groups: 1, seed: 4)
        values[3 * 384 + 1] = .nan // masked: not counted
        values[4 * 384 + 2] = .infinity // counted
        let mask = (0..<tokens).map { UInt8($0 == 3 || $0 == 11 ? 1 : 0) }
        // a masked token's id is never read: out of range is fine there
        var ids = (0..<tokens).map { Int64($0 * 31) }
        ids[11] = -5
        for kernel in kernels {
            let r = try routeRaw(values, tokens: tokens, TestExtras(mask: mask, tokenIds: ids, idBytes: 8),
                                 backend: CPUBackend(kernel: kernel))
            #expect(r.outcome.maskedTokens == 2 && r.outcome.nonFiniteInputs == 1)
            for t in [3, 11] {
                #expect(r.ids[t * 6..<(t + 1) * 6].allSatisfy { $0 == -1 })
                #expect(r.w[t * 6..<(t + 1) * 6].allSatisfy { $0.bitPattern == 0 })
            }
            #expect(r.ids.allSatisfy { $0 != -7 })
        }
    }

    @Test func badExtrasAreTypedErrorsAndWriteNothing() throws {
        let tokens = 6
        let values = InputKind.gaussian.rows(tokens: tokens, experts: 384, groups: 1, seed: 1)
        let vocab = Presets.deepSeekV4Vocab
        for bytes: Int32 in [4, 8] {
            var ids: [Int64] = [0, 1, 2, Int64(vocab), 4, 5]
            #expect(failure(values, tokens: tokens, TestExtras(tokenIds: ids, idBytes: bytes))
                    == .tokenIdOutOfRange(token: 3, value: Int64(vocab), vocab: vocab))
            ids[3] = 3
            ids[5] = -1
            #expect(failure(values, tokens: tokens, TestExtras(tokenIds: ids, idBytes: bytes))
                    == .tokenIdOutOfRange(token: 5, value: -1, vocab: vocab))
        }
        let big = Int64(Int32.max) + 10 // int64 only: refused, not truncated
        #expect(failure(values, tokens: tokens, TestExtras(tokenIds: [big, 1, 2, 3, 4, 5], idBytes: 8))
                == .tokenIdOutOfRange(token: 0, value: big, vocab: vocab))
        #expect(failure(values, tokens: tokens, .none) == .tokenIdsMissing)
        #expect(failure(values, tokens: tokens, TestExtras(mask: [0, 1, 2, 0, 0, 0], tokenIds: [0, 1, 2, 3, 4, 5]))
                == .maskValue(token: 2, value: 2))
        // a mask byte is checked on scored layers too
        let scored = try BuiltLayer(Presets.spec(named: "deepseek-v4", gateDType: .fp32)!)
        #expect(throws: RouteError.maskValue(token: 0, value: 255)) {
            try route(scored, CPUBackend(), values, tokens: tokens, dtype: .fp32, extras: TestExtras(mask: [255, 0, 0, 0, 0, 0]))
        }
        #expect(RouteError.tokenIdOutOfRange(token: 3, value: 129_280, vocab: vocab).description.contains("token_ids[3] = 129280"))
    }

    @Test func scoredLayersHonourMasksToo() throws {
        let scored = try BuiltLayer(Presets.spec(named: "deepseek-v4", gateDType: .bf16)!)
        let tokens = 37
        let values = InputKind.gaussian.rows(tokens: tokens, experts: 384, groups: 1, seed: 9)
        let mask = (0..<tokens).map { UInt8($0 % 5 == 0 ? 1 : 0) }
        let (plain, _) = try route(scored, CPUBackend(), values, tokens: tokens, dtype: .bf16)
        for kernel in kernels {
            let (masked, outcome) = try route(scored, CPUBackend(kernel: kernel), values, tokens: tokens, dtype: .bf16,
                                              extras: TestExtras(mask: mask))
            #expect(outcome.maskedTokens == 8)
            for t in 0..<tokens {
                let cols = t * 6..<(t + 1) * 6
                if mask[t] != 0 {
                    #expect(masked.ids[cols].allSatisfy { $0 == -1 } && masked.weights[cols].allSatisfy { $0 == 0 })
                } else {
                    #expect(masked.ids[cols] == plain.ids[cols] && masked.weights[cols] == plain.weights[cols])
                }
            }
        }
    }
}

/// mrk_place_and_count: load counting and expert placement, the backend-independent last step.
@Suite struct PlaceAndCountTests {
    /// Logical e has 1 + (e % 3) replicas: physical e, then E + ..., in order.
    static func placement(numExperts E: Int) throws -> ExpertPlacement {
        var next = E
        let replicas = (0..<E).map { e -> [Int] in
            var r = [e]
            for _ in 0..<(e % 3) {
                r.append(next)
                next += 1
            }
            return r
        }
        return try ExpertPlacement(numPhysical: next, replicas: replicas)
    }

    /// The E counters of a sharded block (its rows added up).
    static func load(_ block: [UInt64], _ E: Int) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: E)
        mrk_counts_load(block, &out, Int32(E))
        return out
    }

    static func recount(_ ids: [Int32], numExperts: Int) -> [UInt64] {
        var c = [UInt64](repeating: 0, count: numExperts)
        for id in ids where id >= 0 { c[Int(id)] += 1 }
        return c
    }

    @Test(arguments: ["deepseek-v4", "deepseek-v3", "deepseek-v4-hash"])
    func splitBatchesPlaceLikeOneThreadAndCountLogicalIds(name: String) throws {
        var spec = Presets.spec(named: name, gateDType: .bf16)!
        let E = spec.numExperts, k = spec.topK
        let plainLayer = try BuiltLayer(spec)
        spec.placement = try Self.placement(numExperts: E)
        let one = try BuiltLayer(spec), many = try BuiltLayer(spec)
        let tokens = 3001
        let values = InputKind.gaussian.rows(tokens: tokens, experts: E, groups: spec.numExpertGroup, seed: 21)
        let mask = (0..<tokens).map { UInt8($0 % 13 == 4 ? 1 : 0) }
        let extras = TestExtras.defaults(plainLayer, tokens: tokens, mask: mask)
        let (logical, _) = try route(plainLayer, CPUBackend(threads: 1), values, tokens: tokens, dtype: .bf16, extras: extras)
        let (a, oa) = try route(one, CPUBackend(threads: 1), values, tokens: tokens, dtype: .bf16, extras: extras)
        // 4 workers and 32 chunks: the chunks' t0 offsets decide the replicas
        let (b, ob) = try route(many, CPUBackend(threads: 4, parallelThreshold: 16), values, tokens: tokens, dtype: .bf16, extras: extras)
        #expect(a == b)
        #expect(oa == ob && oa.placementEpoch == 1 && oa.maskedTokens == mask.filter { $0 != 0 }.count)
        let placement = spec.placement!
        for t in 0..<tokens {
            for j in 0..<k {
                let e = Int(logical.ids[t * k + j])
                if e < 0 {
                    #expect(a.ids[t * k + j] == -1 && a.weights[t * k + j].bitPattern == 0 && mask[t] == 1)
                    continue
                }
                let r = placement.replicas(of: e)
                #expect(a.ids[t * k + j] == r[r.startIndex + t % r.count], "token \(t) column \(j)")
            }
        }
        let expected = Self.recount(logical.ids, numExperts: E)
        #expect(one.expertLoad.totals() == expected)
        #expect(many.expertLoad.totals() == expected)
        #expect(expected.reduce(0, +) == UInt64((tokens - oa.maskedTokens) * k))
        #expect(plainLayer.expertLoad.totals() == expected)
    }

    @Test func countingIsOptionalAndAccumulates() throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v4", gateDType: .fp32)!)
        let values = InputKind.gaussian.rows(tokens: 64, experts: 384, groups: 1, seed: 2)
        let (got, _) = try route(layer, CPUBackend(countsLoad: false), values, tokens: 64, dtype: .fp32)
        #expect(layer.expertLoad.totals().allSatisfy { $0 == 0 })
        for _ in 0..<3 { _ = try route(layer, CPUBackend(), values, tokens: 64, dtype: .fp32) }
        #expect(layer.expertLoad.totals() == Self.recount(got.ids, numExperts: 384).map { $0 * 3 })
    }

    /// The C step itself: rows [t0, t0 + n) placed as token t0 + t; many small calls equal one.
    @Test func chunkOffsetsAndTheAtomicAndBatchedCountingAgree() throws {
        let E = 40, k = 3, tokens = 101
        let placement = try Self.placement(numExperts: E)
        var rng = SplitMix64(seed: 4)
        let logical: [Int32] = (0..<tokens * k).map { i in i % 17 == 5 ? -1 : Int32.random(in: 0..<Int32(E), using: &rng) }
        var whole = logical, pieces = logical
        var c1 = [UInt64](repeating: 0, count: Int(mrk_counts_size(Int32(E)))), c2 = c1
        placement.offsets.withUnsafeBufferPointer { o in
            placement.flat.withUnsafeBufferPointer { f in
                mrk_place_and_count(&whole, Int64(tokens), Int32(k), 0, o.baseAddress, f.baseAddress, &c1, Int32(E))
                // 1- and 7-token pieces: n * k < E / 4 takes the per-id atomic path, the rest the batched one
                var t = 0
                while t < tokens {
                    let n = min(t % 2 == 0 ? 1 : 7, tokens - t)
                    pieces.withUnsafeMutableBufferPointer { p in
                        mrk_place_and_count(p.baseAddress! + t * k, Int64(n), Int32(k), Int64(t), o.baseAddress, f.baseAddress,
                                            &c2, Int32(E))
                    }
                    t += n
                }
            }
        }
        #expect(whole == pieces)
        #expect(Self.load(c1, E) == Self.load(c2, E) && Self.load(c1, E) == Self.recount(logical, numExperts: E))
        for (i, e) in logical.enumerated() where e >= 0 {
            let r = placement.replicas(of: Int(e))
            #expect(whole[i] == r[r.startIndex + (i / k) % r.count])
        }
    }
    /// Ids in a client's shared memory may be rewritten between the kernel and this step: one
    /// outside [0, E) is skipped like a masked row's -1 (never an index), on both counting paths.
    @Test func idsOutOfRangeAreSkipped() throws {
        let E = 40, k = 3
        let placement = try Self.placement(numExperts: E)
        let bad: [Int32] = [-2, 40, 41, Int32.max, Int32.min, -1]
        for tokens in [2, 101] {  // n * 4 < E: the per-id path; else the batched one
            var ids: [Int32] = (0..<tokens * k).map { i in i % 5 == 0 ? bad[(i / 5) % bad.count] : Int32(i % E) }
            let before = ids
            var counts = [UInt64](repeating: 0, count: Int(mrk_counts_size(Int32(E))))
            placement.offsets.withUnsafeBufferPointer { o in
                placement.flat.withUnsafeBufferPointer { f in
                    mrk_place_and_count(&ids, Int64(tokens), Int32(k), 0, o.baseAddress, f.baseAddress, &counts, Int32(E))
                }
            }
            #expect(Self.load(counts, E) == Self.recount(before.map { $0 >= 0 && $0 < Int32(E) ? $0 : -1 }, numExperts: E))
            for (i, e) in before.enumerated() where e < 0 || e >= Int32(E) { #expect(ids[i] == e, "left as it was") }
        }
    }
}
