import CMoEKernels
import Dispatch
import Synchronization

/// The CPU backend: C kernels (AVX-512 where the CPU has it, else a portable path with
/// bit-identical results), batches split across threads.
///
/// A request smaller than `parallelThreshold` tokens of a 256-expert layer (the threshold scales
/// with num_experts, since the work does) runs on the calling thread without
/// touching the heap; larger ones are cut into contiguous token ranges, one per thread.
public final class CPUBackend: RoutingBackend {
    /// The kernel implementation to run.
    public enum Kernel: Int32, Sendable, CaseIterable, CustomStringConvertible {
        case generic = 0
        case avx512 = 1

        public var description: String { String(cString: mrk_impl_name(rawValue)) }

        /// Whether this CPU can run it.
        public var isSupported: Bool { mrk_impl_supported(rawValue) != 0 }

        /// The fastest kernel this CPU runs.
        public static var best: Kernel { Kernel(rawValue: mrk_best_impl()) ?? .generic }
    }

    public let kernel: Kernel
    public let threads: Int
    public let parallelThreshold: Int
    /// Whether routes add to their layer's per-expert load counters (on by default; the kernel
    /// bench turns it off to measure what counting costs).
    public let countsLoad: Bool
    public var name: String { "cpu-\(kernel)" }

    /// - Parameters:
    ///   - kernel: defaults to the fastest supported; an unsupported one is a precondition failure.
    ///   - threads: worker count for large batches (default: all cores).
    ///   - parallelThreshold: smallest batch worth splitting, in tokens of a 256-expert layer
    ///     (a layer with E experts splits from `parallelThreshold * 256 / E` tokens).
    public init(kernel: Kernel = .best, threads: Int? = nil, parallelThreshold: Int = 512, countsLoad: Bool = true) {
        precondition(kernel.isSupported, "kernel \(kernel) is not supported on this CPU")
        self.kernel = kernel
        self.threads = max(1, threads ?? ProcessInfoCores.count)
        self.parallelThreshold = max(1, parallelThreshold)
        self.countsLoad = countsLoad
    }

    public func route(_ job: RouteJob, on layer: BuiltLayer) throws(RouteError) -> RouteOutcome {
        let masked = try job.check(on: layer)
        let (placement, epoch) = layer.placements.snapshot()
        let counts = countsLoad ? layer.expertLoad.counts : nil
        // The kernel's view of the layer was built with it: nothing of the spec is copied here.
        if let table = layer.spec.hashTable {  // the bias plays no part in hash routing: nothing to convert
            let n = table.ids.withUnsafeBufferPointer { t in
                var k = layer.kernelLayer
                k.tid2eid = t.baseAddress
                return run(k, job, placement, counts)
            }
            return RouteOutcome(nonFiniteInputs: n, usedFallbackCast: false, maskedTokens: masked, placementEpoch: epoch)
        }
        return layer.withRequestBias(job.dtype) { bias, fallback in
            var k = layer.kernelLayer
            k.bias = bias
            return RouteOutcome(nonFiniteInputs: run(k, job, placement, counts), usedFallbackCast: fallback,
                                maskedTokens: masked, placementEpoch: epoch)
        }
    }

    private func run(_ layer: mrk_layer, _ job: RouteJob, _ placement: ExpertPlacement?,
                     _ counts: UnsafeMutablePointer<UInt64>?) -> Int {
        guard let placement else { return run(layer, Int(layer.num_experts), job, nil, nil, counts) }
        return placement.offsets.withUnsafeBufferPointer { o in
            placement.flat.withUnsafeBufferPointer { f in
                run(layer, Int(layer.num_experts), job, o.baseAddress, f.baseAddress, counts)
            }
        }
    }

    private func run(
        _ layer: mrk_layer, _ numExperts: Int, _ job: RouteJob, _ offsets: UnsafePointer<Int32>?,
        _ replicas: UnsafePointer<Int32>?, _ counts: UnsafeMutablePointer<UInt64>?
    ) -> Int {
        var layer = layer
        let tokens = job.tokens, dtype = job.dtype, k = Int(layer.top_k)
        let input = job.input, weights = job.weights, ids = job.ids, extras = job.extras
        let E = Int32(numExperts)
        // Work is about tokens x experts; fanning out costs tens of microseconds, so small
        // layers (mixtral: 8 ns/token) need many more tokens than large ones before it pays.
        let work = tokens * numExperts, unit = parallelThreshold * 256
        let workers = work >= unit ? min(threads, max(1, work / (unit / 2))) : 1
        if workers <= 1 {
            let n = Int(mrk_route_ex(&layer, input.baseAddress, Int32(dtype.rawValue), Int64(tokens), extras.mask,
                                     extras.tokenIds, extras.tokenIdBytes, weights.baseAddress, ids.baseAddress,
                                     kernel.rawValue))
            if counts != nil || offsets != nil, tokens > 0 {
                mrk_place_and_count(ids.baseAddress, Int64(tokens), Int32(k), 0, offsets, replicas, counts, E)
            }
            return n
        }
        // More chunks than threads, each worker taking the next one until none is left: a helper
        // thread that wakes late, or a core another process takes for a while, then costs a
        // chunk's worth of imbalance instead of half the batch.
        let chunks = min(tokens, workers * 8, max(workers, work / (unit / 8)))
        let rowBytes = numExperts * dtype.byteSize
        let idBytes = Int(extras.tokenIdBytes)
        let impl = kernel.rawValue
        let next = ChunkCounter()
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: chunks) { nonfinite in
            let shared = UnsafeSendable((layer, input, weights, ids, nonfinite, extras, offsets, replicas, counts))
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                var (layer, input, weights, ids, nonfinite, extras, offsets, replicas, counts) = shared.value
                while case let c = next.take(), c < chunks {
                    let begin = tokens * c / chunks, end = tokens * (c + 1) / chunks
                    nonfinite[c] = Int(mrk_route_ex(
                        &layer, input.baseAddress! + begin * rowBytes, Int32(dtype.rawValue), Int64(end - begin),
                        extras.mask.map { $0 + begin }, extras.tokenIds.map { $0 + begin * idBytes },
                        extras.tokenIdBytes, weights.baseAddress! + begin * k, ids.baseAddress! + begin * k, impl))
                    if counts != nil || offsets != nil {
                        mrk_place_and_count(ids.baseAddress! + begin * k, Int64(end - begin), Int32(k), Int64(begin),
                                            offsets, replicas, counts, E)
                    }
                }
            }
            return nonfinite.reduce(0, +)
        }
    }
}

/// The next chunk of a parallel batch.
private final class ChunkCounter: Sendable {
    private let value = Atomic<Int>(0)
    func take() -> Int { value.add(1, ordering: .relaxed).oldValue }
}

extension LayerSpec {
    /// The layer as the C kernels see it, with `bias` the fp32 values the request computes with
    /// (the hash table's pointer is valid only inside `body`; use `withKernelLayer` for those).
    func kernelLayer(bias: UnsafePointer<Float>?) -> mrk_layer {
        mrk_layer(
            method: Int32(method.rawValue), scoring: Int32(scoring.rawValue),
            num_experts: Int32(numExperts), top_k: Int32(topK),
            num_groups: Int32(numExpertGroup), topk_group: Int32(topKGroup),
            renormalize: renormalize ? 1 : 0, routed_scaling_factor: routedScalingFactor,
            bias: bias, renorm_epsilon: renormEpsilon, reserved: 0, tid2eid: nil,
            vocab: Int64(hashTable?.vocab ?? 0))
    }

    /// Runs `body` with the kernel layer (its tid2eid pointer set for a hash-routed layer) and
    /// `placement`'s offsets and replicas (nil without one), all valid for the call. (No closure
    /// here captures a variable it changes: such a variable would be boxed on the heap, one
    /// allocation per request in a debug build.)
    func withKernelLayer<R>(
        bias: UnsafePointer<Float>?, placement: ExpertPlacement?,
        _ body: (mrk_layer, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
    ) -> R {
        let base = kernelLayer(bias: bias)
        guard let table = hashTable else { return Self.withPlacement(base, placement, body) }
        return table.ids.withUnsafeBufferPointer { t in
            var layer = base
            layer.tid2eid = t.baseAddress
            return Self.withPlacement(layer, placement, body)
        }
    }

    private static func withPlacement<R>(
        _ layer: mrk_layer, _ placement: ExpertPlacement?,
        _ body: (mrk_layer, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
    ) -> R {
        guard let placement else { return body(layer, nil, nil) }
        return placement.offsets.withUnsafeBufferPointer { o in
            placement.flat.withUnsafeBufferPointer { f in body(layer, o.baseAddress, f.baseAddress) }
        }
    }
}

/// Carries pointers into `concurrentPerform`, whose workers write disjoint ranges.
struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

enum ProcessInfoCores {
    static var count: Int {
        #if canImport(Glibc)
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
        return 1
        #endif
    }
}

#if canImport(Glibc)
import Glibc
#endif
