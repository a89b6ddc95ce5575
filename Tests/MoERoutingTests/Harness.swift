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

func route(_ layer: BuiltLayer, _ backend: some RoutingBackend, _ values: [Float], tokens: Int,
           dtype: DType) throws -> (Routed, RouteOutcome) {
    let bytes = encode(values, as: dtype)
    let n = tokens * layer.spec.topK
    var w = [Float](repeating: -7, count: n)
    var ids = [Int32](repeating: -7, count: n)
    let outcome = try bytes.withUnsafeBytes { input in
        try w.withUnsafeMutableBufferPointer { wp in
            try ids.withUnsafeMutableBufferPointer { ip in
                try backend.route(layer: layer, input: input, dtype: dtype, tokens: tokens, weights: wp, ids: ip)
            }
        }
    }
    return (Routed(weights: w, ids: ids, nonFinite: outcome.nonFiniteInputs), outcome)
}

/// The reference result: bias as the request sees it (the stored bias, converted to the
/// request dtype when they differ), inputs as the dtype holds them.
func reference(_ layer: BuiltLayer, _ values: [Float], tokens: Int, dtype: DType) -> Routed {
    let E = layer.spec.numExperts
    let bias = layer.storedBias.map { stored in
        stored.dtype == dtype ? stored.widened() : stored.widened().map { dtype.roundTrip($0) }
    }
    var out = Routed(weights: [], ids: [], nonFinite: 0)
    for t in 0..<tokens {
        let row = values[t * E..<(t + 1) * E].map { dtype.roundTrip($0) }
        let r = ReferenceRouter.route(layer.spec, bias: bias, row: row)
        out.weights += r.weights
        out.ids += r.ids
        out.nonFinite += r.nonFinite
    }
    return out
}

/// The kernels this CPU can run.
let kernels = CPUBackend.Kernel.allCases.filter(\.isSupported)
