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

    func countFallbackCast() { fallbackCastCount.add(1, ordering: .relaxed) }

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
    /// `out`. Counted process-wide in `StoredBias.conversions` so tests can prove the matched
    /// path never gets here.
    func convert(to dtype: DType, into out: UnsafeMutableBufferPointer<Float>) {
        StoredBias.conversionCount.add(1, ordering: .relaxed)
        switch self {
        case .fp32(let v):
            for i in v.indices { out[i] = dtype.roundTrip(v[i]) }
        case .half(let d, let bits):
            for i in bits.indices { out[i] = dtype.roundTrip(d.widen(bits[i])) }
        }
    }

    static let conversionCount = Atomic<Int>(0)

    /// Fallback bias conversions performed in this process, by any layer.
    public static var conversions: Int { conversionCount.load(ordering: .relaxed) }
}
