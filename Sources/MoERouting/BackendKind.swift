/// The `--backend` setting: which kernel backend serves, resolved with the reason it was chosen.
public enum BackendKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The fastest CPU kernel this machine runs.
    case cpu
    /// The AVX-512 CPU kernel; a CPU without AVX-512 is an error.
    case cpuAVX512 = "cpu-avx512"
    /// The portable CPU kernel (bit-identical to the AVX-512 one).
    case cpuGeneric = "cpu-generic"
    /// The GPU backend (HIP or its CUDA build); no usable device is an error.
    case rocm
    /// The GPU backend when a device is present, else `cpu`.
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
    ///   - rocmLibrary: the GPU library to load (default: `ROCmBackend.searchPaths`).
    /// - Throws: why the requested backend cannot run here (never for `.cpu`, `.cpuGeneric`,
    ///   `.auto`).
    public func select(threads: Int? = nil, device: Int = 0, rocmLibrary: String? = nil) throws(BackendError) -> Selection {
        let requested = "requested with --backend \(rawValue)"
        switch self {
        case .cpu, .cpuGeneric:
            let backend = CPUBackend(kernel: self == .cpu ? .best : .generic, threads: threads)
            return Selection(backend: backend, reason: "backend \(backend.name): \(requested)")
        case .cpuAVX512:
            guard CPUBackend.Kernel.avx512.isSupported else { throw .unsupportedCPU(kernel: "avx512") }
            let backend = CPUBackend(kernel: .avx512, threads: threads)
            return Selection(backend: backend, reason: "backend \(backend.name): \(requested)")
        case .rocm:
            let backend = try ROCmBackend.open(library: rocmLibrary, device: device)
            return Selection(backend: backend, reason: "backend \(backend.name): \(requested); \(Self.describe(backend))")
        case .auto:
            do {
                let backend = try ROCmBackend.open(library: rocmLibrary, device: device)
                return Selection(backend: backend, reason: "backend \(backend.name) (auto): \(Self.describe(backend))")
            } catch {
                let backend = CPUBackend(threads: threads)
                return Selection(backend: backend, reason: "backend \(backend.name) (auto): ROCm unavailable: \(error)")
            }
        }
    }

    private static func describe(_ backend: ROCmBackend) -> String {
        "device \(backend.device) of \(backend.deviceCount) (\(backend.deviceName)), library \(backend.libraryPath)"
    }
}
