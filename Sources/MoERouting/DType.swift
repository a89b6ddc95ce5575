import CMoEKernels

/// The element type of a gating output or of a layer's stored bias.
public enum DType: UInt8, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case fp32 = 0
    case bf16 = 1
    case fp16 = 2

    /// Bytes per element.
    public var byteSize: Int { self == .fp32 ? 4 : 2 }

    public var description: String {
        switch self {
        case .fp32: "fp32"
        case .bf16: "bf16"
        case .fp16: "fp16"
        }
    }

    /// Parses "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16"/"half".
    public init?(name: String) {
        switch name.lowercased() {
        case "fp32", "float32", "f32", "float": self = .fp32
        case "bf16", "bfloat16": self = .bf16
        case "fp16", "float16", "f16", "half": self = .fp16
        default: return nil
        }
    }

    /// Exact widening of a 16-bit pattern of this dtype (bf16 or fp16) to fp32.
    @inlinable
    public func widen(_ bits: UInt16) -> Float {
        precondition(self != .fp32, "fp32 has no 16-bit pattern")
        return self == .bf16 ? mrk_bf16_to_f32(bits) : mrk_f16_to_f32(bits)
    }

    /// Round-to-nearest-even narrowing of an fp32 value to this dtype (bf16 or fp16).
    @inlinable
    public func narrow(_ value: Float) -> UInt16 {
        precondition(self != .fp32, "fp32 has no 16-bit pattern")
        return self == .bf16 ? mrk_f32_to_bf16(value) : mrk_f32_to_f16(value)
    }

    /// The value an fp32 number takes once stored in this dtype, widened back to fp32.
    @inlinable
    public func roundTrip(_ value: Float) -> Float {
        self == .fp32 ? value : widen(narrow(value))
    }
}

