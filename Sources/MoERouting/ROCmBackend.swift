import CMoEKernels
import Synchronization

/// The ROCm backend: the HIP kernels of rocm/ (the per-token code of the CPU backend, compiled
/// as device code), loaded at run time from libmoe_router_hip.so so that
/// the package builds and runs where ROCm is absent. Results are bit-identical to `CPUBackend`.
///
/// Each layer is uploaded once (`prepare`, or on its first request): its parameters, its bias in
/// the gate dtype's fp32 widening and, for a hash-routed layer, its tid2eid table stay resident
/// on the device. Each request copies its gating output (with its padding mask and token ids,
/// when it has them) into a pinned staging buffer of a stream, which the kernel reads in place
/// (mapped host memory) or, above the library's copy threshold, uploads; the outputs come back
/// the same way. Streams are pooled: every concurrent caller (worker thread) holds its own for
/// the duration of a request, so the pool grows to the peak concurrency.
///
/// Zero copy (ABI 3): the daemon hands every client segment it maps to `hostMemoryMapped`, which
/// registers it with the runtime once (pinned, mapped for the device); a request whose buffers
/// all lie in registered mappings is one kernel launch reading and writing the client's memory
/// in place (`mrh_route_mapped`). `hostMemoryReleased` unregisters it before the daemon unmaps.
///
/// Once the outputs are in host memory, the backend-independent last step runs as on the CPU
/// backend: per-expert load counting and the expert placement (`mrk_place_and_count`).
///
/// A runtime failure during a request (which `RouteError` cannot express) is answered by the
/// CPU backend instead, with the same bits; it is counted in `deviceFailures` and described in
/// `lastDeviceFailure`.
public final class ROCmBackend: RoutingBackend {
    /// "rocm" on a HIP device, "cuda" on the CUDA build, "rocm-host-emulation" on the CPU
    /// emulation library the tests use.
    public let name: String
    /// The device ordinal this backend routes on.
    public let device: Int
    /// The device's architecture name as the runtime reports it ("gfx90a:sramecc+:xnack-").
    public let deviceName: String
    /// Devices the runtime reported when the backend was opened.
    public let deviceCount: Int
    /// The library this backend loaded.
    public var libraryPath: String { library.path }

    private let library: HIPLibrary
    private let layers = Mutex<[ObjectIdentifier: DeviceLayer]>([:])
    private let idleStreams = Mutex<[DeviceStream]>([])
    private let failures = Mutex<(count: Int, last: BackendError?)>((0, nil))
    /// Client mappings registered with the runtime, and how many the runtime refused.
    private let hostRanges = Mutex<(ranges: HostRanges, refused: UInt64)>((HostRanges(), 0))
    private let zeroCopyRoutes = Atomic<UInt64>(0)
    private let stagedRoutes = Atomic<UInt64>(0)

    /// Loads the backend library and checks that the runtime has a device.
    ///
    /// - Parameters:
    ///   - library: the library to load; by default the first that exists of
    ///     `ROCmBackend.searchPaths(for: runtime)` (`MOE_ROUTER_HIP_LIB` / `MOE_ROUTER_CUDA_LIB`,
    ///     next to the executable, `bin/../lib`, `build/rocm/` / `build/cuda/`).
    ///   - device: the device ordinal.
    ///   - runtime: which build to look for when `library` is nil: HIP (default) or CUDA.
    /// - Throws: `BackendError.libraryNotFound`, `.libraryLoadFailed` (no GPU runtime),
    ///   `.incompatibleLibrary`, or `.noDevice` (e.g. hipErrorNoDevice).
    public static func open(library: String? = nil, device: Int = 0, runtime: GPURuntime = .rocm) throws(BackendError) -> ROCmBackend {
        let candidates = library.map { [$0] } ?? searchPaths(for: runtime)
        guard let path = candidates.first(where: HIPLibrary.fileExists) else {
            throw .libraryNotFound(searched: candidates)
        }
        let lib = try HIPLibrary(path: path)
        var count: Int32 = 0
        let status = lib.deviceCount(&count)
        guard status == 0, count > 0 else {
            throw .noDevice(runtime: lib.runtime, status: status, error: lib.describe(status))
        }
        guard device >= 0, device < Int(count) else {
            throw .noDevice(runtime: lib.runtime, status: status,
                            error: "device \(device) requested, \(count) present")
        }
        var buffer = [CChar](repeating: 0, count: 256)
        let nameStatus = lib.deviceName(Int32(device), &buffer, Int32(buffer.count))
        let arch = nameStatus == 0
            ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            : "unknown"
        return ROCmBackend(library: lib, device: device, deviceName: arch, deviceCount: Int(count))
    }

    /// Where `open()` looks for the HIP library, in order.
    public static var searchPaths: [String] { HIPLibrary.searchPaths() }
    /// Where `open(runtime:)` looks for that runtime's library, in order.
    public static func searchPaths(for runtime: GPURuntime) -> [String] { HIPLibrary.searchPaths(for: runtime) }

    /// The library's runtime: "hip", "cuda" or "host-emulation".
    public var runtime: String { library.runtime }

    private init(library: HIPLibrary, device: Int, deviceName: String, deviceCount: Int) {
        self.library = library
        self.device = device
        self.deviceName = deviceName
        self.deviceCount = deviceCount
        switch library.runtime {
        case "hip": name = "rocm"
        case "host-emulation": name = "rocm-host-emulation"
        default: name = library.runtime
        }
    }

    deinit {
        for range in hostRanges.withLock({ $0.ranges.all }) { _ = library.hostUnregister?(UnsafeMutableRawPointer(bitPattern: range.start)) }
        for layer in layers.withLock({ $0.values }) { library.layerDestroy(layer.handle) }
        for stream in idleStreams.withLock({ $0 }) { library.streamDestroy(stream.handle) }
    }

    /// Runtime failures answered by the CPU backend instead (see the type's documentation).
    public var deviceFailures: Int { failures.withLock { $0.count } }
    /// The most recent of them.
    public var lastDeviceFailure: BackendError? { failures.withLock { $0.last } }

    /// Whether the library can route client memory in place (ABI 3).
    public var supportsZeroCopy: Bool { library.routeMapped != nil }

    /// The library's own count of registered host ranges and bytes (nil before ABI 3): what a
    /// leak check compares with zero.
    public var libraryRegistrations: (count: Int, bytes: Int)? {
        guard let registered = library.hostRegistered else { return nil }
        var count: Int64 = 0
        var bytes: UInt64 = 0
        registered(&count, &bytes)
        return (Int(count), Int(bytes))
    }

    public func hostMemoryMapped(_ base: UnsafeMutableRawPointer, bytes: Int) -> Bool {
        guard let register = library.hostRegister, bytes > 0 else { return false }
        let status = register(Int32(device), base, UInt64(bytes))
        hostRanges.withLock { h in
            if status == 0 { h.ranges.insert(start: UInt(bitPattern: base), bytes: bytes) } else { h.refused += 1 }
        }
        return status == 0
    }

    public func hostMemoryReleased(_ base: UnsafeMutableRawPointer) {
        // Out of the table first: no later request takes the in-place path on it.
        guard hostRanges.withLock({ $0.ranges.remove(start: UInt(bitPattern: base)) }) else { return }
        _ = library.hostUnregister?(base)
    }

    public var transfers: BackendTransfers {
        var t = BackendTransfers()
        hostRanges.withLock { h in
            t.registrations = h.ranges.count
            t.registeredBytes = h.ranges.bytes
            t.registrationFailures = h.refused
        }
        t.zeroCopyRoutes = zeroCopyRoutes.load(ordering: .relaxed)
        t.stagedRoutes = stagedRoutes.load(ordering: .relaxed)
        return t
    }

    /// Uploads `layer` to the device now (at layer build) rather than on its first request.
    public func prepare(_ layer: BuiltLayer) throws(BackendError) {
        _ = try deviceLayer(for: layer)
    }

    /// Frees the device copy of `layer`. Requests for it in flight must have returned.
    public func release(_ layer: BuiltLayer) {
        if let gone = layers.withLock({ $0.removeValue(forKey: ObjectIdentifier(layer)) }) {
            library.layerDestroy(gone.handle)
        }
    }

    public func route(_ job: RouteJob, on layer: BuiltLayer) throws(RouteError) -> RouteOutcome {
        let masked = try job.check(on: layer)
        let spec = layer.spec
        let (placement, epoch) = layer.placements.snapshot()
        func routed(_ bias: UnsafePointer<Float>?, _ fallback: Bool) -> RouteOutcome {
            let nonFinite: Int
            do throws(BackendError) {
                nonFinite = try run(layer, fallback ? bias : nil, job)
            } catch {
                failures.withLock { $0 = ($0.count + 1, error) }
                nonFinite = routeOnCPU(spec, bias, job)
            }
            placeAndCount(spec, layer.expertLoad, placement, job)
            return RouteOutcome(nonFiniteInputs: nonFinite, usedFallbackCast: fallback, maskedTokens: masked,
                                placementEpoch: epoch)
        }
        // As on the CPU backend, the bias plays no part in hash routing: nothing to convert.
        if spec.hashTable != nil { return routed(nil, false) }
        // The matched path (or no bias) passes no bias: the kernel reads the copy resident on the
        // device. The fallback uploads the converted bias with the request.
        return layer.withRequestBias(job.dtype) { bias, fallback in routed(bias, fallback) }
    }

    /// The same request on the CPU kernels (identical bits), for when the device failed.
    private func routeOnCPU(_ spec: LayerSpec, _ bias: UnsafePointer<Float>?, _ job: RouteJob) -> Int {
        spec.withKernelLayer(bias: bias, placement: nil) { layer, _, _ in
            var layer = layer
            let extras = job.extras
            return Int(mrk_route_ex(&layer, job.input.baseAddress, Int32(job.dtype.rawValue), Int64(job.tokens),
                                    extras.mask, extras.tokenIds, extras.tokenIdBytes, job.weights.baseAddress,
                                    job.ids.baseAddress, mrk_best_impl()))
        }
    }

    /// The backend-independent last step, on the outputs in host memory: the layer's load
    /// counters, then the placement snapshot the request took (logical ids -> physical).
    private func placeAndCount(_ spec: LayerSpec, _ load: ExpertLoad, _ placement: ExpertPlacement?, _ job: RouteJob) {
        guard job.tokens > 0 else { return }
        spec.withKernelLayer(bias: nil, placement: placement) { _, offsets, replicas in
            mrk_place_and_count(job.ids.baseAddress, Int64(job.tokens), Int32(spec.topK), 0, offsets, replicas,
                                load.counts, Int32(spec.numExperts))
        }
    }

    private func run(_ layer: BuiltLayer, _ fallbackBias: UnsafePointer<Float>?, _ job: RouteJob) throws(BackendError) -> Int {
        if job.tokens == 0 { return 0 }
        let deviceLayer = try deviceLayer(for: layer)
        let stream = try takeStream()
        defer { idleStreams.withLock { $0.append(stream) } }
        var nonFinite: Int64 = 0
        let extras = job.extras
        // Token ids only where they are read: a scored layer's may lie anywhere.
        let tokenIds = layer.spec.hashTable == nil ? nil : extras.tokenIds
        let inPlace = library.routeMapped.flatMap { mapped in inRegisteredMemory(job, tokenIds) ? mapped : nil }
        let status = (inPlace ?? library.route)(
            deviceLayer.handle, stream.handle, fallbackBias, job.input.baseAddress, Int32(job.dtype.rawValue),
            Int64(job.tokens), extras.mask, tokenIds, extras.tokenIdBytes, job.weights.baseAddress,
            job.ids.baseAddress, &nonFinite)
        guard status == 0 else { throw library.failure(inPlace == nil ? "route" : "zero-copy route", status) }
        if inPlace == nil { stagedRoutes.add(1, ordering: .relaxed) } else { zeroCopyRoutes.add(1, ordering: .relaxed) }
        return Int(nonFinite)
    }

    /// Whether every buffer of `job` lies wholly inside one registered mapping.
    private func inRegisteredMemory(_ job: RouteJob, _ tokenIds: UnsafeRawPointer?) -> Bool {
        hostRanges.withLock { h in
            guard !h.ranges.isEmpty else { return false }
            func inside(_ p: UnsafeRawPointer?, _ bytes: Int) -> Bool { p.map { h.ranges.contains(UInt(bitPattern: $0), bytes) } ?? true }
            return inside(job.input.baseAddress, job.input.count) && inside(job.weights.baseAddress, job.weights.count * 4)
                && inside(job.ids.baseAddress, job.ids.count * 4) && inside(job.extras.mask, job.tokens)
                && inside(tokenIds, job.tokens * Int(job.extras.tokenIdBytes))
        }
    }

    private func deviceLayer(for layer: BuiltLayer) throws(BackendError) -> DeviceLayer {
        let key = ObjectIdentifier(layer)
        if let existing = layers.withLock({ $0[key] }) { return existing }
        let spec = layer.spec
        var handle: OpaquePointer?
        let bias = layer.kernelBias ?? []
        let table = spec.hashTable?.ids ?? []
        let status = bias.withUnsafeBufferPointer { bias in
            table.withUnsafeBufferPointer { table in
                library.layerCreate(
                    Int32(device), Int32(spec.method.rawValue), Int32(spec.scoring.rawValue),
                    Int32(spec.numExperts), Int32(spec.topK), Int32(spec.numExpertGroup),
                    Int32(spec.topKGroup), spec.renormalize ? 1 : 0, spec.routedScalingFactor,
                    spec.renormEpsilon, layer.kernelBias == nil ? nil : bias.baseAddress,
                    spec.hashTable == nil ? nil : table.baseAddress, Int64(spec.hashTable?.vocab ?? 0), &handle)
            }
        }
        guard status == 0, let handle else { throw library.failure("layer upload '\(spec.name)'", status) }
        let created = DeviceLayer(handle: handle, layer: layer)
        let (kept, duplicate) = layers.withLock { table -> (DeviceLayer, DeviceLayer?) in
            if let raced = table[key] { return (raced, created) }
            table[key] = created
            return (created, nil)
        }
        if let duplicate { library.layerDestroy(duplicate.handle) }
        return kept
    }

    private func takeStream() throws(BackendError) -> DeviceStream {
        if let idle = idleStreams.withLock({ $0.popLast() }) { return idle }
        var handle: OpaquePointer?
        let status = library.streamCreate(Int32(device), &handle)
        guard status == 0, let handle else { throw library.failure("stream creation", status) }
        return DeviceStream(handle: handle)
    }
}

/// A layer resident on the device. Holds its `BuiltLayer` so that the `ObjectIdentifier` keying
/// it cannot be reused by another layer while the entry exists.
private final class DeviceLayer: @unchecked Sendable {
    let handle: OpaquePointer
    let layer: BuiltLayer
    init(handle: OpaquePointer, layer: BuiltLayer) {
        self.handle = handle
        self.layer = layer
    }
}

/// One worker's stream with its staging buffers; used by one request at a time.
private struct DeviceStream: @unchecked Sendable {
    let handle: OpaquePointer
}

/// Registered host ranges, sorted by start (they never overlap: the library refuses overlaps).
struct HostRanges {
    private(set) var all: [(start: UInt, end: UInt)] = []
    private(set) var bytes = 0

    var count: Int { all.count }
    var isEmpty: Bool { all.isEmpty }

    /// The index of the first range starting after `address`.
    private func after(_ address: UInt) -> Int {
        var lo = 0, hi = all.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if all[mid].start <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    mutating func insert(start: UInt, bytes n: Int) {
        all.insert((start, start + UInt(n)), at: after(start))
        bytes += n
    }

    /// Removes the range starting at `start`; false when there is none.
    mutating func remove(start: UInt) -> Bool {
        let i = after(start) - 1
        guard i >= 0, all[i].start == start else { return false }
        bytes -= Int(all[i].end - all[i].start)
        all.remove(at: i)
        return true
    }

    /// Whether [address, address + n) lies inside one range.
    func contains(_ address: UInt, _ n: Int) -> Bool {
        let i = after(address) - 1
        guard i >= 0 else { return false }
        let (end, overflow) = address.addingReportingOverflow(UInt(n))
        return !overflow && end <= all[i].end
    }
}
