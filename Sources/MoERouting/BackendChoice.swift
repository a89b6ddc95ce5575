/// The `--backend cpu|rocm|auto` choice, resolved to a backend with the reason it was chosen.
public enum BackendChoice: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The CPU backend, always.
    case cpu
    /// The ROCm backend; no device is an error (the daemon exits with its message).
    case rocm
    /// ROCm when a device is present, else the CPU backend.
    case auto

    public var description: String { rawValue }

    /// A resolved choice: the backend to serve with and a sentence for the log saying why.
    public struct Selection: Sendable {
        public let backend: any RoutingBackend
        public let reason: String
    }

    /// Resolves the choice.
    ///
    /// - Parameters:
    ///   - rocmLibrary: the HIP library to load (default: `ROCmBackend.searchPaths`).
    ///   - device: the ROCm device ordinal.
    ///   - cpu: makes the CPU backend when it is the one chosen.
    /// - Throws: for `.rocm` only, the `ROCmBackendError` saying why ROCm cannot be used.
    public func select(
        rocmLibrary: String? = nil, device: Int = 0, cpu: () -> CPUBackend = { CPUBackend() }
    ) throws(ROCmBackendError) -> Selection {
        switch self {
        case .cpu:
            let backend = cpu()
            return Selection(backend: backend, reason: "backend \(backend.name): requested with --backend cpu")
        case .rocm:
            let backend = try ROCmBackend.open(library: rocmLibrary, device: device)
            return Selection(backend: backend, reason: "backend \(backend.name): requested with --backend rocm; "
                + Self.describe(backend))
        case .auto:
            do {
                let backend = try ROCmBackend.open(library: rocmLibrary, device: device)
                return Selection(backend: backend, reason: "backend \(backend.name) (auto): " + Self.describe(backend))
            } catch {
                let backend = cpu()
                return Selection(backend: backend, reason: "backend \(backend.name) (auto): ROCm unavailable: \(error)")
            }
        }
    }

    private static func describe(_ backend: ROCmBackend) -> String {
        "device \(backend.device) of \(backend.deviceCount) (\(backend.deviceName)), library \(backend.libraryPath)"
    }
}
