import CMoEKernels

/// What went wrong with one routing request. Every case is caused by the request, never by the
/// layer (a layer is valid once built).
public enum RouteError: Error, Equatable, CustomStringConvertible {
    /// The input holds `actual` bytes; `tokens × num_experts × dtype size` is `expected`.
    case inputSize(expected: Int, actual: Int)
    /// An output buffer holds `actual` elements; `tokens × top_k` is `expected`.
    case outputSize(name: String, expected: Int, actual: Int)
    /// The layer rejects non-finite input: `count` values, the first in token `firstToken`.
    case nonFiniteInput(firstToken: Int, count: Int)
    /// A negative token count.
    case tokenCount(Int)

    public var description: String {
        switch self {
        case .inputSize(let e, let a):
            "input holds \(a) bytes, expected tokens x num_experts x dtype size = \(e)"
        case .outputSize(let n, let e, let a):
            "\(n) holds \(a) elements, expected tokens x top_k = \(e)"
        case .nonFiniteInput(let t, let c):
            "layer rejects non-finite input: \(c) non-finite value(s), first in token \(t)"
        case .tokenCount(let n):
            "token count \(n) is negative"
        }
    }
}

/// What a routed request reports besides its outputs.
public struct RouteOutcome: Sendable, Equatable {
    /// NaN and ±Inf values seen in the input (clamped to score 0 under the clamp policy).
    public var nonFiniteInputs: Int
    /// Whether the request's dtype differed from the gate dtype and the bias was converted.
    public var usedFallbackCast: Bool

    public init(nonFiniteInputs: Int, usedFallbackCast: Bool) {
        self.nonFiniteInputs = nonFiniteInputs
        self.usedFallbackCast = usedFallbackCast
    }
}

/// A kernel backend: routes a batch of gating outputs through a built layer, writing straight
/// into caller-provided buffers (which may live in shared memory).
public protocol RoutingBackend: Sendable {
    /// "cpu-avx512", "cpu-generic", "rocm", ...
    var name: String { get }

    /// Routes `tokens` rows of `input` (row-major `[tokens, num_experts]` in `dtype`) into
    /// `weights` and `ids` (`[tokens, top_k]` each). On error nothing is written.
    func route(
        layer: BuiltLayer, input: UnsafeRawBufferPointer, dtype: DType, tokens: Int,
        weights: UnsafeMutableBufferPointer<Float>, ids: UnsafeMutableBufferPointer<Int32>
    ) throws(RouteError) -> RouteOutcome
}

extension RoutingBackend {
    /// Everything a backend checks before it writes anything: buffer sizes against the layer,
    /// and, for a layer that rejects non-finite input, a scan naming the first offending token.
    public func checkRequest(
        layer: BuiltLayer, input: UnsafeRawBufferPointer, dtype: DType, tokens: Int,
        weights: UnsafeMutableBufferPointer<Float>, ids: UnsafeMutableBufferPointer<Int32>
    ) throws(RouteError) {
        try checkShapes(layer: layer, inputBytes: input.count, dtype: dtype, tokens: tokens,
                        weights: weights.count, ids: ids.count)
        let spec = layer.spec
        if spec.nonFinite == .reject && tokens > 0 {
            var count: Int64 = 0
            let first = mrk_scan_nonfinite(input.baseAddress, Int32(dtype.rawValue),
                                           Int64(spec.numExperts), Int64(tokens), &count)
            if first >= 0 { throw .nonFiniteInput(firstToken: Int(first), count: Int(count)) }
        }
    }

    /// Checks buffer sizes against the layer; shared by every backend.
    public func checkShapes(
        layer: BuiltLayer, inputBytes: Int, dtype: DType, tokens: Int, weights: Int, ids: Int
    ) throws(RouteError) {
        guard tokens >= 0 else { throw .tokenCount(tokens) }
        let (inBytes, o1) = tokens.multipliedReportingOverflow(by: layer.spec.numExperts * dtype.byteSize)
        guard !o1, inBytes == inputBytes else {
            throw .inputSize(expected: o1 ? Int.max : inBytes, actual: inputBytes)
        }
        let (outCount, o2) = tokens.multipliedReportingOverflow(by: layer.spec.topK)
        guard !o2, outCount == weights else {
            throw .outputSize(name: "topk_weights", expected: outCount, actual: weights)
        }
        guard outCount == ids else { throw .outputSize(name: "topk_ids", expected: outCount, actual: ids) }
    }
}
