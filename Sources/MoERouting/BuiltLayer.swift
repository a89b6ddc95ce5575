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
    /// Tokens routed to each logical expert (shared with the layer this one replaced on a reload
    /// when the expert count is the same).
    public let expertLoad: ExpertLoad
    /// The placement requests use now (EPLB), swapped atomically.
    public let placements: PlacementSlot
    /// The layer as the C kernels see it, without bias and hash table (a request sets those):
    /// built once, so that a request copies nothing of the spec. (Its pointers are nil: nothing
    /// in it is shared mutable state.)
    public nonisolated(unsafe) let kernelLayer: mrk_layer

    /// Validates `spec` and pre-casts its bias to the gate dtype. `previous` (the layer of that
    /// name being replaced, if any) hands over its load counters and its run-time placement when
    /// the expert count is unchanged and `spec` brings no placement of its own.
    public init(_ spec: LayerSpec, replacing previous: BuiltLayer? = nil) throws(LayerSpecError) {
        try spec.validate()
        self.spec = spec
        kernelLayer = spec.kernelLayer(bias: nil)
        if let previous, previous.spec.numExperts == spec.numExperts {
            expertLoad = previous.expertLoad
            placements = spec.placement == nil ? previous.placements : PlacementSlot(spec.placement)
        } else {
            expertLoad = ExpertLoad(numExperts: spec.numExperts)
            placements = PlacementSlot(spec.placement)
        }
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

/// Per-expert load counters of one layer: tokens routed to each logical expert since start, and
/// since the last read that reset the window (for a rebalancer). Added to by every routing
/// thread, each in its own row (mrk_place_and_count, sharded counters in moe_kernels.h).
public final class ExpertLoad: @unchecked Sendable {
    public let numExperts: Int
    /// mrk_counts_size(numExperts) counters (rows of numExperts, one per thread), only ever
    /// touched through atomic operations.
    let counts: UnsafeMutablePointer<UInt64>
    private let window = Mutex<(base: [UInt64], startNs: UInt64)>(([], 0))
    public let startNs: UInt64

    public init(numExperts: Int) {
        self.numExperts = numExperts
        let size = Int(mrk_counts_size(Int32(max(1, numExperts))))
        // (Rows a whole number of cache lines apart: two threads never share a line.)
        counts = UnsafeMutableRawPointer.allocate(byteCount: size * 8, alignment: 64).bindMemory(to: UInt64.self, capacity: size)
        counts.initialize(repeating: 0, count: size)
        startNs = Self.now()
        window.withLock { $0 = ([UInt64](repeating: 0, count: numExperts), startNs) }
    }

    deinit { UnsafeMutableRawPointer(counts).deallocate() }

    /// Counters as they stand.
    public func totals() -> [UInt64] {
        var out = [UInt64](repeating: 0, count: numExperts)
        out.withUnsafeMutableBufferPointer { mrk_counts_load(counts, $0.baseAddress, Int32(numExperts)) }
        return out
    }

    /// A reading: totals since start, counts since the window began, and when it began. With
    /// `resetWindow` a new window starts now.
    public func read(resetWindow: Bool) -> ExpertLoadReading {
        let totals = totals()
        let now = Self.now()
        return window.withLock { w in
            let since = zip(totals, w.base).map { $0 &- $1 }
            let reading = ExpertLoadReading(totals: totals, window: since,
                                            sinceStartNs: now &- startNs, windowNs: now &- w.startNs)
            if resetWindow { w = (totals, now) }
            return reading
        }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// What `ExpertLoad.read` returns.
public struct ExpertLoadReading: Sendable, Equatable {
    public var totals: [UInt64]
    public var window: [UInt64]
    public var sinceStartNs: UInt64
    public var windowNs: UInt64
}

/// A layer's current expert placement and its epoch. Every change (a placement set, or removed)
/// takes the next epoch (the first placement is 1); a snapshot reports epoch 0 while there is no
/// placement, so "epoch 0" always means logical ids. A request takes a snapshot once and uses it
/// throughout, so a swap never mixes two placements in one answer.
public final class PlacementSlot: Sendable {
    private let state: Mutex<(placement: ExpertPlacement?, epoch: UInt64)>
    /// Whether `state` holds a placement, stored under its lock: a layer without one (the
    /// usual case) answers a snapshot without the lock (~25 ns of a 1-token route).
    private let present: Atomic<Bool>

    public init(_ initial: ExpertPlacement?) {
        state = Mutex((initial, initial == nil ? 0 : 1))
        present = Atomic(initial != nil)
    }

    /// The placement in force and its epoch (0 when there is none).
    public func snapshot() -> (placement: ExpertPlacement?, epoch: UInt64) {
        // (A set that has not stored `present` yet has not answered either: a snapshot
        // without it comes before the set.)
        guard present.load(ordering: .acquiring) else { return (nil, 0) }
        return state.withLock { ($0.placement, $0.placement == nil ? 0 : $0.epoch) }
    }

    /// How many changes the layer's placement has seen (the epoch the last one took).
    public var changes: UInt64 { state.withLock { $0.epoch } }

    /// Replaces the placement (nil: none) after `validate(numExperts:)`; returns the epoch this
    /// change took (answers report it while this placement is in force; 0 after a removal).
    public func set(_ p: ExpertPlacement?, numExperts: Int) throws(PlacementError) -> UInt64 {
        try p?.validate(numExperts: numExperts)
        return state.withLock { s in
            s = (p, s.epoch + 1)
            present.store(p != nil, ordering: .releasing)
            return s.epoch
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CMoEKernels

/// A counter that many threads bump on every request (STATS): each thread adds to its own row
/// (moe_kernels.h, sharded counters), a plain load and store instead of a locked add (~5 ns on
/// this path); its value is the rows added up.
public final class ShardedCounter: @unchecked Sendable {
    /// One cache line per row.
    private static let stride = 8
    private let rows: UnsafeMutablePointer<UInt64>

    public init() {
        let n = Int(MRK_SHARDS) * Self.stride
        rows = UnsafeMutableRawPointer.allocate(byteCount: n * 8, alignment: 64).bindMemory(to: UInt64.self, capacity: n)
        rows.initialize(repeating: 0, count: n)
    }

    deinit { UnsafeMutableRawPointer(rows).deallocate() }

    public func add(_ n: UInt64) { mrk_sharded_add(rows, Int64(Self.stride), n) }

    public var value: UInt64 { mrk_sharded_sum(rows, Int64(Self.stride)) }
}
