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
    public var name: String { "cpu-\(kernel)" }

    /// - Parameters:
    ///   - kernel: defaults to the fastest supported; an unsupported one is a precondition failure.
    ///   - threads: worker count for large batches (default: all cores).
    ///   - parallelThreshold: smallest batch worth splitting, in tokens of a 256-expert layer
    ///     (a layer with E experts splits from `parallelThreshold * 256 / E` tokens).
    public init(kernel: Kernel = .best, threads: Int? = nil, parallelThreshold: Int = 512) {
        precondition(kernel.isSupported, "kernel \(kernel) is not supported on this CPU")
        self.kernel = kernel
        self.threads = max(1, threads ?? ProcessInfoCores.count)
        self.parallelThreshold = max(1, parallelThreshold)
    }

    public func route(_ job: RouteJob, on layer: BuiltLayer) throws(RouteError) -> RouteOutcome {
        try job.check(on: layer)
        let spec = layer.spec  // the closure then holds no reference to retain
        return layer.withRequestBias(job.dtype) { bias, fallback in
            RouteOutcome(nonFiniteInputs: run(spec, bias, job.input, job.dtype, job.tokens, job.weights, job.ids),
                         usedFallbackCast: fallback)
        }
    }

    private func run(
        _ spec: LayerSpec, _ bias: UnsafePointer<Float>?, _ input: UnsafeRawBufferPointer,
        _ dtype: DType, _ tokens: Int, _ weights: UnsafeMutableBufferPointer<Float>,
        _ ids: UnsafeMutableBufferPointer<Int32>
    ) -> Int {
        var layer = spec.kernelLayer(bias: bias)
        // Work is about tokens x experts; fanning out costs tens of microseconds, so small
        // layers (mixtral: 8 ns/token) need many more tokens than large ones before it pays.
        let work = tokens * spec.numExperts, unit = parallelThreshold * 256
        let workers = work >= unit ? min(threads, max(1, work / (unit / 2))) : 1
        if workers <= 1 {
            return Int(mrk_route(&layer, input.baseAddress, Int32(dtype.rawValue), Int64(tokens),
                                 weights.baseAddress, ids.baseAddress, kernel.rawValue))
        }
        // More chunks than threads, each worker taking the next one until none is left: a helper
        // thread that wakes late, or a core another process takes for a while, then costs a
        // chunk's worth of imbalance instead of half the batch.
        let chunks = min(tokens, workers * 8, max(workers, work / (unit / 8)))
        let rowBytes = spec.numExperts * dtype.byteSize
        let k = spec.topK
        let impl = kernel.rawValue
        let next = ChunkCounter()
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: chunks) { counts in
            let shared = UnsafeSendable((layer, input, weights, ids, counts))
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                var (layer, input, weights, ids, counts) = shared.value
                while case let c = next.take(), c < chunks {
                    let begin = tokens * c / chunks, end = tokens * (c + 1) / chunks
                    counts[c] = Int(mrk_route(
                        &layer, input.baseAddress! + begin * rowBytes, Int32(dtype.rawValue),
                        Int64(end - begin), weights.baseAddress! + begin * k, ids.baseAddress! + begin * k,
                        impl))
                }
            }
            return counts.reduce(0, +)
        }
    }
}

/// The next chunk of a parallel batch.
private final class ChunkCounter: Sendable {
    private let value = Atomic<Int>(0)
    func take() -> Int { value.add(1, ordering: .relaxed).oldValue }
}

extension LayerSpec {
    /// The layer as the C kernels see it, with `bias` the fp32 values the request computes with.
    func kernelLayer(bias: UnsafePointer<Float>?) -> mrk_layer {
        mrk_layer(
            method: Int32(method.rawValue), scoring: Int32(scoring.rawValue),
            num_experts: Int32(numExperts), top_k: Int32(topK),
            num_groups: Int32(numExpertGroup), topk_group: Int32(topKGroup),
            renormalize: renormalize ? 1 : 0, routed_scaling_factor: routedScalingFactor,
            bias: bias)
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
