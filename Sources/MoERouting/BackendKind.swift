/// The `--backend` setting: which kernel backend serves, resolved with the reason it was chosen.
public enum BackendKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The fastest CPU kernel this machine runs.
    case cpu
    /// The AVX-512 CPU kernel; a CPU without AVX-512 is an error.
    case cpuAVX512 = "cpu-avx512"
    /// The portable CPU kernel (bit-identical to the AVX-512 one).
    case cpuGeneric = "cpu-generic"
    /// The GPU backend's HIP build (libmoe_router_hip.so); no usable device is an error.
    case rocm
    /// The GPU backend's CUDA build (libmoe_router_cuda.so); no usable device is an error.
    case cuda
    /// The first GPU build (ROCm, then CUDA) that finds a device, else `cpu`.
    case auto

    public var description: String { rawValue }

    /// Every accepted spelling, for help texts and error messages.
    public static var names: [String] { allCases.map(\.rawValue) }

    /// A resolved choice: the backend to serve with and a sentence for the log saying why.
    public struct Selection: Sendable {
        public let backend: any RoutingBackend
        public let reason: String
    }

    /// Resolves the choice.
    ///
    /// - Parameters:
    ///   - threads: the CPU backend's threads for large batches (default: every core).
    ///   - device: the GPU device ordinal.
    ///   - rocmLibrary: the HIP library to load (default: `ROCmBackend.searchPaths(for: .rocm)`).
    ///   - cudaLibrary: the CUDA library to load (default: `ROCmBackend.searchPaths(for: .cuda)`).
    /// - Throws: why the requested backend cannot run here (never for `.cpu`, `.cpuGeneric`,
    ///   `.auto`).
    public func select(threads: Int? = nil, device: Int = 0, rocmLibrary: String? = nil,
                       cudaLibrary: String? = nil) throws(BackendError) -> Selection {
        let requested = "requested with --backend \(rawValue)"
        switch self {
        case .cpu, .cpuGeneric:
            let backend = CPUBackend(kernel: self == .cpu ? .best : .generic, threads: threads)
            return Selection(backend: backend, reason: "backend \(backend.name): \(requested)")
        case .cpuAVX512:
            guard CPUBackend.Kernel.avx512.isSupported else { throw .unsupportedCPU(kernel: "avx512") }
            let backend = CPUBackend(kernel: .avx512, threads: threads)
            return Selection(backend: backend, reason: "backend \(backend.name): \(requested)")
        case .rocm, .cuda:
            let backend = try ROCmBackend.open(library: self == .rocm ? rocmLibrary : cudaLibrary, device: device,
                                               runtime: self == .rocm ? .rocm : .cuda)
            return Selection(backend: backend, reason: "backend \(backend.name): \(requested); \(Self.describe(backend))")
        case .auto:
            // Each GPU build in turn; the reason keeps why each was skipped.
            var skipped: [String] = []
            for (runtime, library) in [(GPURuntime.rocm, rocmLibrary), (.cuda, cudaLibrary)] {
                do {
                    let backend = try ROCmBackend.open(library: library, device: device, runtime: runtime)
                    let before = skipped.isEmpty ? "" : " (\(skipped.joined(separator: "; ")))"
                    return Selection(backend: backend, reason: "backend \(backend.name) (auto): \(Self.describe(backend))\(before)")
                } catch {
                    skipped.append("\(runtime.displayName) unavailable: \(error)")
                }
            }
            let backend = CPUBackend(threads: threads)
            return Selection(backend: backend, reason: "backend \(backend.name) (auto): \(skipped.joined(separator: "; "))")
        }
    }

    private static func describe(_ backend: ROCmBackend) -> String {
        "device \(backend.device) of \(backend.deviceCount) (\(backend.deviceName)), library \(backend.libraryPath)"
    }
}
