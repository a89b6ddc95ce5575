import Synchronization

/// A validated, servable routing layer. Immutable (but for its counters) and safe to share.
///
/// Building converts `e_score_correction_bias` to the gate dtype exactly once
/// (round-to-nearest-even). The kernels read its exact fp32 widening, kept beside it, so a
/// request in the gate dtype converts nothing. A request in another dtype takes the fallback:
/// the stored bias is converted to the request's dtype for that request, and counted.
public final class BuiltLayer: Sendable {
    public let spec: LayerSpec
    /// The bias as stored: its values in the gate dtype (fp32 values when the gate is fp32).
    public let storedBias: StoredBias?
    /// The exact fp32 widening of `storedBias`, which the matched path hands to the kernel.
    let kernelBias: [Float]?
    private let fallbackCastCount = Atomic<Int>(0)
    private let biasCopyCount = Atomic<Int>(0)

    /// Validates `spec` and pre-casts its bias to the gate dtype.
    public init(_ spec: LayerSpec) throws(LayerSpecError) {
        try spec.validate()
        self.spec = spec
        if let bias = spec.bias {
            let stored = StoredBias(bias, as: spec.gateDType)
            storedBias = stored
            kernelBias = stored.widened()
        } else {
            storedBias = nil
            kernelBias = nil
        }
    }

    /// Requests that took the fallback path (their dtype differed from the gate dtype and the
    /// layer has a bias to convert).
    public var fallbackCasts: Int { fallbackCastCount.load(ordering: .relaxed) }

    /// Bias copies this layer has made (one per fallback request); 0 proves the matched path
    /// never converted or copied anything.
    public var biasCopies: Int { biasCopyCount.load(ordering: .relaxed) }

    /// Runs `body` with the bias as a request in `dtype` sees it: the layer's own fp32 widening
    /// when `dtype` is the gate dtype (nothing converted, nothing copied), else the stored bias
    /// converted to `dtype` in a stack buffer (the counted fallback). `body` gets `nil` for
    /// layers without bias, and whether the fallback ran.
    public func withRequestBias<R, E: Error>(
        _ dtype: DType, _ body: (UnsafePointer<Float>?, _ fallback: Bool) throws(E) -> R
    ) throws(E) -> R {
        guard let stored = storedBias, let widened = kernelBias else { return try body(nil, false) }
        if dtype == stored.dtype {
            return try widened.withUnsafeBufferPointer { (p) throws(E) -> R in try body(p.baseAddress, false) }
        }
        fallbackCastCount.add(1, ordering: .relaxed)
        biasCopyCount.add(1, ordering: .relaxed)
        // On the stack for every layer size (withUnsafeTemporaryAllocation goes to the heap
        // above 1 KiB, i.e. for more than 256 experts).
        // (1024 = RoutingLimits.maxExperts; a generic argument must be a literal.)
        var scratch = InlineArray<1024, Float>(repeating: 0)
        precondition(spec.numExperts <= scratch.count, "RoutingLimits.maxExperts outgrew the fallback's stack buffer")
        var span = scratch.mutableSpan
        return try span.withUnsafeMutableBufferPointer { (all) throws(E) -> R in
            let buf = UnsafeMutableBufferPointer(rebasing: all[..<spec.numExperts])
            stored.convert(to: dtype, into: buf)
            return try body(UnsafePointer(buf.baseAddress), true)
        }
    }

    public var name: String { spec.name }
}

/// A bias held in a dtype: fp32 values, or 16-bit patterns of bf16/fp16.
public enum StoredBias: Sendable, Equatable {
    case fp32([Float])
    case half(DType, [UInt16])

    /// Converts fp32 source values to `dtype` with round-to-nearest-even.
    public init(_ values: [Float], as dtype: DType) {
        if dtype == .fp32 {
            self = .fp32(values)
        } else {
            self = .half(dtype, values.map { dtype.narrow($0) })
        }
    }

    public var dtype: DType {
        switch self {
        case .fp32: .fp32
        case .half(let d, _): d
        }
    }

    /// Exact fp32 values of the stored elements.
    public func widened() -> [Float] {
        switch self {
        case .fp32(let v): v
        case .half(let d, let bits): bits.map { d.widen($0) }
        }
    }

    /// The fallback conversion: the stored values converted to `dtype`, widened to fp32, into
    /// `out`.
    func convert(to dtype: DType, into out: UnsafeMutableBufferPointer<Float>) {
        switch self {
        case .fp32(let v):
            for i in v.indices { out[i] = dtype.roundTrip(v[i]) }
        case .half(let d, let bits):
            for i in bits.indices { out[i] = dtype.roundTrip(d.widen(bits[i])) }
        }
    }
}
