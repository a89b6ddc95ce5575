#if canImport(Glibc)
import Glibc
#endif
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
    /// A negative token count, or one whose buffers would not fit in memory.
    case tokenCount(Int)
    /// A padding-mask byte other than 0 (token) or 1 (padding).
    case maskValue(token: Int, value: UInt8)
    /// A hash-routed layer was asked to route without token ids.
    case tokenIdsMissing
    /// A token id outside the layer's tid2eid table.
    case tokenIdOutOfRange(token: Int, value: Int64, vocab: Int)

    public var description: String {
        switch self {
        case .inputSize(let e, let a):
            "input holds \(a) bytes, expected tokens x num_experts x dtype size = \(e)"
        case .outputSize(let n, let e, let a):
            "\(n) holds \(a) elements, expected tokens x top_k = \(e)"
        case .nonFiniteInput(let t, let c):
            "layer rejects non-finite input: \(c) non-finite value(s), first in token \(t)"
        case .tokenCount(let n):
            "token count \(n) is negative or too large"
        case .maskValue(let t, let v):
            "mask[\(t)] = \(v): a mask byte is 0 (token) or 1 (padding)"
        case .tokenIdsMissing:
            "this layer is hash-routed (tid2eid): the request must carry token ids"
        case .tokenIdOutOfRange(let t, let v, let vocab):
            "token_ids[\(t)] = \(v) is outside the layer's tid2eid table (vocab \(vocab))"
        }
    }
}

/// What a routed request reports besides its outputs.
public struct RouteOutcome: Sendable, Equatable {
    /// NaN and ±Inf values seen in the input (clamped to score 0 under the clamp policy).
    public var nonFiniteInputs: Int
    /// Whether the request's dtype differed from the gate dtype and the bias was converted.
    public var usedFallbackCast: Bool
    /// Padding rows (mask byte 1): ids -1, weights 0.
    public var maskedTokens: Int = 0
    /// The placement epoch the ids were mapped with (0: none; logical ids).
    public var placementEpoch: UInt64 = 0

    public init(nonFiniteInputs: Int, usedFallbackCast: Bool, maskedTokens: Int = 0, placementEpoch: UInt64 = 0) {
        self.nonFiniteInputs = nonFiniteInputs
        self.usedFallbackCast = usedFallbackCast
        self.maskedTokens = maskedTokens
        self.placementEpoch = placementEpoch
    }
}

/// The buffer sizes one request of `tokens` rows in `dtype` needs on a layer, computed once
/// without overflow. It holds no reference to the layer (a job is passed next to its layer, so
/// the per-request path does no reference counting).
public struct RouteShape: Sendable, Equatable {
    public let dtype: DType
    public let tokens: Int
    public let numExperts: Int
    public let topK: Int
    /// `tokens × num_experts × dtype size`.
    public let inputBytes: Int
    /// `tokens × top_k`: the element count of each output.
    public let outputCount: Int

    /// - Throws: `.tokenCount` for a negative count or one whose byte counts overflow `Int`.
    @inlinable
    public init(layer: borrowing BuiltLayer, dtype: DType, tokens: Int) throws(RouteError) {
        let e = layer.spec.numExperts, k = layer.spec.topK
        let (inputBytes, o1) = tokens.multipliedReportingOverflow(by: e * dtype.byteSize)
        let (outputBytes, o2) = tokens.multipliedReportingOverflow(by: k * 4)
        guard tokens >= 0, !o1, !o2 else { throw .tokenCount(tokens) }
        self.dtype = dtype
        self.tokens = tokens
        numExperts = e
        topK = k
        self.inputBytes = inputBytes
        self.outputCount = outputBytes / 4
    }

    /// Whether buffers of this shape are the right size for `layer`.
    @inlinable
    public func fits(_ layer: BuiltLayer) -> Bool { layer.spec.numExperts == numExperts && layer.spec.topK == topK }
}

/// The optional per-request buffers of protocol version 2, `tokens` elements each.
public struct RouteExtras {
    /// 1 = padding row (ids -1, weights 0, logits never read), 0 = token.
    public var mask: UnsafePointer<UInt8>?
    /// Token ids for hash-routed layers: Int32 (`tokenIdBytes` 4) or Int64 (8).
    public var tokenIds: UnsafeRawPointer?
    public var tokenIdBytes: Int32

    public init(mask: UnsafePointer<UInt8>? = nil, tokenIds: UnsafeRawPointer? = nil, tokenIdBytes: Int32 = 4) {
        precondition(tokenIdBytes == 4 || tokenIdBytes == 8, "token ids are int32 or int64")
        self.mask = mask
        self.tokenIds = tokenIds
        self.tokenIdBytes = tokenIdBytes
    }

    public static var none: RouteExtras { RouteExtras() }
}

/// One routing request whose buffers match its shape: the input holds `shape.inputBytes` bytes,
/// each output `shape.outputCount` elements. A backend routes it without checking sizes again.
public struct RouteJob {
    public let shape: RouteShape
    public let input: UnsafeRawBufferPointer
    public let weights: UnsafeMutableBufferPointer<Float>
    public let ids: UnsafeMutableBufferPointer<Int32>
    /// Mask and token ids (sized `tokens` by whoever set them).
    public var extras: RouteExtras = .none

    public var dtype: DType { shape.dtype }
    public var tokens: Int { shape.tokens }

    /// Checks every buffer's size against the layer (the one place sizes are checked).
    @inlinable
    public init(layer: borrowing BuiltLayer, input: UnsafeRawBufferPointer, dtype: DType, tokens: Int,
                weights: UnsafeMutableBufferPointer<Float>, ids: UnsafeMutableBufferPointer<Int32>) throws(RouteError) {
        let shape = try RouteShape(layer: layer, dtype: dtype, tokens: tokens)
        guard input.count == shape.inputBytes else { throw .inputSize(expected: shape.inputBytes, actual: input.count) }
        guard weights.count == shape.outputCount else {
            throw .outputSize(name: "topk_weights", expected: shape.outputCount, actual: weights.count)
        }
        guard ids.count == shape.outputCount else {
            throw .outputSize(name: "topk_ids", expected: shape.outputCount, actual: ids.count)
        }
        self.init(shape, input: input.baseAddress, weights: weights.baseAddress, ids: ids.baseAddress)
    }

    /// Buffers the caller sized from `shape` itself (the daemon checks each wire buffer
    /// reference against the shape, naming the field): the extents come from the shape.
    @inlinable
    public init(_ shape: RouteShape, input: UnsafeRawPointer?, weights: UnsafeMutablePointer<Float>?,
                ids: UnsafeMutablePointer<Int32>?) {
        precondition(shape.tokens == 0 || (input != nil && weights != nil && ids != nil), "a buffer of a non-empty job is missing")
        self.shape = shape
        self.input = UnsafeRawBufferPointer(start: input, count: shape.inputBytes)
        self.weights = UnsafeMutableBufferPointer(start: weights, count: shape.outputCount)
        self.ids = UnsafeMutableBufferPointer(start: ids, count: shape.outputCount)
    }

    /// The job's checks against the layer it runs on, for backends to call first: its shape (a
    /// programmer error if not), and for a layer that rejects non-finite input, the scan naming
    /// the first offending token.
    /// Also checks the extras: mask bytes, token ids present and inside the table for a
    /// hash-routed layer. Returns the number of masked tokens.
    @inlinable
    @discardableResult
    public func check(on layer: BuiltLayer) throws(RouteError) -> Int {
        precondition(shape.fits(layer), "a job shaped for another layer")
        guard tokens > 0 else { return 0 }
        var masked: Int64 = 0
        if let mask = extras.mask {
            let bad = mrk_check_mask(mask, Int64(tokens), &masked)
            if bad >= 0 { throw .maskValue(token: Int(bad), value: mask[Int(bad)]) }
        }
        if let table = layer.spec.hashTable {
            guard let tokenIds = extras.tokenIds else { throw .tokenIdsMissing }
            var value: Int64 = 0
            let bad = mrk_check_token_ids(tokenIds, extras.tokenIdBytes, Int64(tokens), Int64(table.vocab), extras.mask, &value)
            if bad >= 0 { throw .tokenIdOutOfRange(token: Int(bad), value: value, vocab: table.vocab) }
        }
        guard layer.spec.nonFinite == .reject else { return Int(masked) }
        var count: Int64 = 0
        let first = mrk_scan_nonfinite_masked(input.baseAddress, Int32(dtype.rawValue), Int64(shape.numExperts),
                                              Int64(tokens), extras.mask, &count)
        if first >= 0 { throw .nonFiniteInput(firstToken: Int(first), count: Int(count)) }
        return Int(masked)
    }
}

/// A kernel backend: routes a batch of gating outputs through a built layer, writing straight
/// into caller-provided buffers (which may live in shared memory).
public protocol RoutingBackend: Sendable {
    /// "cpu-avx512", "cpu-generic", "rocm", ...
    var name: String { get }

    /// Makes `layer` ready to serve (a device backend uploads it); called when a layer is built
    /// or reloaded, before its first request.
    func prepare(_ layer: BuiltLayer) throws(BackendError)

    /// Frees what `prepare` made for `layer`. No request for it may be running.
    func release(_ layer: BuiltLayer)

    /// Routes `job` through `layer` (the layer its shape was computed for) into its outputs. On
    /// error nothing is written.
    func route(_ job: RouteJob, on layer: BuiltLayer) throws(RouteError) -> RouteOutcome

    /// A client's shared memory the daemon has just mapped: `bytes` at `base`, usable as request
    /// buffers until `hostMemoryReleased(base)`. A device backend registers it with its runtime
    /// once, so that a request whose buffers all lie in such mappings copies nothing. Returns
    /// whether it did.
    func hostMemoryMapped(_ base: UnsafeMutableRawPointer, bytes: Int) -> Bool

    /// The mapping at `base` (one `hostMemoryMapped` accepted) is about to be unmapped; no request
    /// uses it any more.
    func hostMemoryReleased(_ base: UnsafeMutableRawPointer)

    /// How requests reached the device (all zero on a CPU backend).
    var transfers: BackendTransfers { get }

    /// What runs the kernels: "cpu", or the GPU library's runtime ("hip", "cuda", "host-emulation").
    var runtime: String { get }
    /// The processor or device routing ("AMD EPYC 9654 96-Core Processor", "NVIDIA H200", "gfx90a:...").
    var deviceName: String { get }
}

/// A device backend's host-memory registrations and how its routes moved their data.
public struct BackendTransfers: Sendable, Equatable {
    /// Client mappings registered with the device runtime now, and their bytes.
    public var registrations = 0
    public var registeredBytes = 0
    /// Registrations the runtime refused (those mappings' requests are staged).
    public var registrationFailures: UInt64 = 0
    /// Routes that read and wrote the client's mapping in place (no copy).
    public var zeroCopyRoutes: UInt64 = 0
    /// Routes whose data went through the backend's staging buffers.
    public var stagedRoutes: UInt64 = 0

    public init() {}
}

extension RoutingBackend {
    /// Nothing to prepare: the layer's host copy is all a CPU backend reads.
    public func prepare(_ layer: BuiltLayer) throws(BackendError) {}
    public func release(_ layer: BuiltLayer) {}
    /// A CPU backend reads client memory where it is: nothing to register.
    public func hostMemoryMapped(_ base: UnsafeMutableRawPointer, bytes: Int) -> Bool { false }
    public func hostMemoryReleased(_ base: UnsafeMutableRawPointer) {}
    public var transfers: BackendTransfers { BackendTransfers() }
    public var runtime: String { "cpu" }
    public var deviceName: String { cpuModelName }

    /// Routes `tokens` rows of `input` (row-major `[tokens, num_experts]` in `dtype`) into
    /// `weights` and `ids` (`[tokens, top_k]` each), checking every size first. Inlinable, so a
    /// caller that knows its backend's type calls that backend directly.
    @inlinable
    public func route(
        layer: BuiltLayer, input: UnsafeRawBufferPointer, dtype: DType, tokens: Int,
        weights: UnsafeMutableBufferPointer<Float>, ids: UnsafeMutableBufferPointer<Int32>
    ) throws(RouteError) -> RouteOutcome {
        try route(RouteJob(layer: layer, input: input, dtype: dtype, tokens: tokens, weights: weights, ids: ids), on: layer)
    }
}

/// The CPU's model name as /proc/cpuinfo gives it ("unknown CPU" where it does not).
let cpuModelName: String = {
    guard let file = fopen("/proc/cpuinfo", "r") else { return "unknown CPU" }
    defer { fclose(file) }
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0, let line {
        let text = String(cString: line)
        guard text.hasPrefix("model name"), let colon = text.firstIndex(of: ":") else { continue }
        return text[text.index(after: colon)...].trimmingCharacters(in: " \t\n")
    }
    return "unknown CPU"
}()

extension StringProtocol {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let scalars = Set(set.unicodeScalars)
        let s = unicodeScalars.drop { scalars.contains($0) }.reversed().drop { scalars.contains($0) }.reversed()
        return String(String.UnicodeScalarView(s))
    }
}
