import Glibc
import MoERouting

/// Deterministic random numbers for reproducible test inputs.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func gaussian() -> Float {
        let u1 = Double.random(in: Double.ulpOfOne..<1, using: &self)
        let u2 = Double.random(in: 0..<1, using: &self)
        return Float((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }
}


/// Encodes fp32 values as a request's input bytes in `dtype` (RNE for 16-bit dtypes).
func encode(_ values: [Float], as dtype: DType) -> [UInt8] {
    switch dtype {
    case .fp32: return values.withUnsafeBytes { Array($0) }
    default: return values.map { dtype.narrow($0) }.withUnsafeBytes { Array($0) }
    }
}

struct Routed: Equatable {
    var weights: [Float]
    var ids: [Int32]
    var nonFinite: Int

    /// Weights compared bit for bit (so NaN or -0 differences are caught too).
    static func == (a: Routed, b: Routed) -> Bool {
        a.ids == b.ids && a.nonFinite == b.nonFinite
            && a.weights.map(\.bitPattern) == b.weights.map(\.bitPattern)
    }
}

/// A request's protocol-version-2 extras, as arrays: padding mask, token ids (sent as int32
/// or int64).
struct TestExtras {
    var mask: [UInt8]?
    var tokenIds: [Int64]?
    var idBytes: Int32 = 4

    static let none = TestExtras()

    /// Token ids for a hash-routed layer (deterministic, spread over the table; none for a
    /// scored layer), with `mask` and the id width given.
    static func defaults(_ layer: BuiltLayer, tokens: Int, mask: [UInt8]? = nil, idBytes: Int32 = 4) -> TestExtras {
        let ids = layer.spec.hashTable.map { table in (0..<tokens).map { Int64(($0 * 7919 + 13) % table.vocab) } }
        return TestExtras(mask: mask, tokenIds: ids, idBytes: idBytes)
    }

    /// Runs `body` with the extras as RouteExtras pointers.
    func with<R>(_ body: (RouteExtras) throws -> R) rethrows -> R {
        let ids32 = tokenIds?.map { Int32(truncatingIfNeeded: $0) }
        return try mask.withOptionalBuffer { m in
            try (idBytes == 8 ? tokenIds.map { $0.withUnsafeBytes { Array($0) } } : ids32.map { $0.withUnsafeBytes { Array($0) } })
                .withOptionalBuffer { ids in
                    try body(RouteExtras(mask: m, tokenIds: ids.map(UnsafeRawPointer.init), tokenIdBytes: idBytes))
                }
        }
    }
}

extension Optional {
    /// The base address of the array (nil when self is nil), valid inside `body`.
    func withOptionalBuffer<E, R>(_ body: (UnsafePointer<E>?) throws -> R) rethrows -> R where Wrapped == [E] {
        guard let array = self else { return try body(nil) }
        return try array.withUnsafeBufferPointer { try body($0.baseAddress) }
    }
}

/// Routes through `backend`; a hash-routed layer gets `TestExtras.defaults`' token ids unless
/// `extras` says otherwise.
func route(_ layer: BuiltLayer, _ backend: some RoutingBackend, _ values: [Float], tokens: Int,
           dtype: DType, extras given: TestExtras? = nil) throws -> (Routed, RouteOutcome) {
    let extras = given ?? TestExtras.defaults(layer, tokens: tokens)
    let bytes = encode(values, as: dtype)
    let n = tokens * layer.spec.topK
    var w = [Float](repeating: -7, count: n)
    var ids = [Int32](repeating: -7, count: n)
    let outcome = try bytes.withUnsafeBytes { input in
        try w.withUnsafeMutableBufferPointer { wp in
            try ids.withUnsafeMutableBufferPointer { ip in
                try extras.with { ex in
                    var job = try RouteJob(layer: layer, input: input, dtype: dtype, tokens: tokens, weights: wp, ids: ip)
                    job.extras = ex
                    return try backend.route(job, on: layer)
                }
            }
        }
    }
    return (Routed(weights: w, ids: ids, nonFinite: outcome.nonFiniteInputs), outcome)
}

/// The reference result: bias as the request sees it (the stored bias, converted to the
/// request dtype when they differ), inputs as the dtype holds them; masked tokens -1 and 0,
/// hash-routed layers from their table at the token ids (`TestExtras.defaults` unless given).
func reference(_ layer: BuiltLayer, _ values: [Float], tokens: Int, dtype: DType, extras given: TestExtras? = nil) -> Routed {
    let extras = given ?? TestExtras.defaults(layer, tokens: tokens)
    let E = layer.spec.numExperts, k = layer.spec.topK
    let bias = layer.storedBias.map { stored in
        stored.dtype == dtype ? stored.widened() : stored.widened().map { dtype.roundTrip($0) }
    }
    var out = Routed(weights: [], ids: [], nonFinite: 0)
    for t in 0..<tokens {
        if let mask = extras.mask, mask[t] != 0 {
            out.weights += [Float](repeating: 0, count: k)
            out.ids += [Int32](repeating: -1, count: k)
            continue
        }
        let row = values[t * E..<(t + 1) * E].map { dtype.roundTrip($0) }
        let r: (weights: [Float], ids: [Int32], nonFinite: Int)
        if let table = layer.spec.hashTable, let tokenIds = extras.tokenIds {
            let id = Int(tokenIds[t])
            r = ReferenceRouter.routeHashed(layer.spec, tableRow: Array(table.ids[id * k..<(id + 1) * k]), row: row)
        } else {
            r = ReferenceRouter.route(layer.spec, bias: bias, row: row)
        }
        out.weights += r.weights
        out.ids += r.ids
        out.nonFinite += r.nonFinite
    }
    return out
}

/// The kernels this CPU can run.
let kernels = CPUBackend.Kernel.allCases.filter(\.isSupported)
