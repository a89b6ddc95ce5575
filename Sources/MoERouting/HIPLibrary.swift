#if canImport(Glibc)
import Glibc
#endif

/// The two builds of the GPU backend (rocm/): one C ABI, found and named by runtime.
public enum GPURuntime: String, Sendable, CaseIterable {
    /// libmoe_router_hip.so (hipcc, AMD GPUs).
    case rocm
    /// libmoe_router_cuda.so (nvcc, NVIDIA GPUs).
    case cuda

    var fileName: String { self == .rocm ? "libmoe_router_hip.so" : "libmoe_router_cuda.so" }
    /// The variable naming the library (the only path searched when set).
    var environment: String { self == .rocm ? "MOE_ROUTER_HIP_LIB" : "MOE_ROUTER_CUDA_LIB" }
    var buildDirectory: String { self == .rocm ? "build/rocm/" : "build/cuda/" }
    var buildScript: String { self == .rocm ? "scripts/build-rocm.sh" : "scripts/build-cuda.sh" }
    var displayName: String { self == .rocm ? "ROCm" : "CUDA" }
    var runtimePackage: String {
        self == .rocm ? "is the HIP runtime libamdhip64 installed? apt-get install libamdhip64-5"
            : "is the NVIDIA driver (libcuda.so.1) installed?"
    }

    /// The runtime a library belongs to: CUDA for the CUDA build's file name or runtime, else ROCm
    /// (the HIP build and its host emulation).
    init(libraryPath: String) {
        let file = libraryPath.split(separator: "/").last.map(String.init) ?? libraryPath
        self = file.contains("cuda") ? .cuda : .rocm
    }
}

/// Why a backend cannot be used, or a device operation failed. Every case says what was tried
/// and what to do.
public enum BackendError: Error, Equatable, CustomStringConvertible {
    /// No backend library at any of `searched` (build it with scripts/build-rocm.sh).
    case libraryNotFound(searched: [String])
    /// The library exists but `dlopen` refused it; usually the ROCm runtime (libamdhip64.so.5)
    /// is not installed.
    case libraryLoadFailed(path: String, reason: String)
    /// The library lacks a symbol or speaks another ABI version.
    case incompatibleLibrary(path: String, reason: String)
    /// The runtime loaded but reports no usable device (this is hipErrorNoDevice, status 100,
    /// on a machine without an AMD GPU or without access to /dev/kfd).
    case noDevice(runtime: String, status: Int32, error: String)
    /// The runtime failed in `operation` (layer upload, stream creation, a route).
    case deviceFailure(operation: String, status: Int32, error: String)
    /// A CPU kernel this processor cannot run was asked for.
    case unsupportedCPU(kernel: String)

    public var description: String {
        switch self {
        case .libraryNotFound(let paths):
            "\(GPURuntime(libraryPath: paths.first ?? "").displayName) backend library not found "
                + "(looked at \(paths.joined(separator: ", "))); build it with "
                + "\(GPURuntime(libraryPath: paths.first ?? "").buildScript) or set \(GPURuntime(libraryPath: paths.first ?? "").environment)"
        case .libraryLoadFailed(let path, let reason):
            "no \(GPURuntime(libraryPath: path).displayName) runtime: cannot load \(path): \(reason) "
                + "(\(GPURuntime(libraryPath: path).runtimePackage))"
        case .incompatibleLibrary(let path, let reason):
            "\(GPURuntime(libraryPath: path).displayName) backend library \(path) is incompatible: \(reason); "
                + "rebuild it with \(GPURuntime(libraryPath: path).buildScript)"
        case .noDevice(let runtime, let status, let error):
            "no \(GPURuntime(libraryPath: runtime).displayName) device: the \(runtime) runtime reports \(error) "
                + "(status \(status)); use --backend cpu or auto"
        case .deviceFailure(let op, let status, let error):
            "GPU \(op) failed: \(error) (status \(status))"
        case .unsupportedCPU(let kernel):
            "this CPU cannot run the \(kernel) kernel; use --backend cpu"
        }
    }
}

/// The C ABI of rocm/moe_router_hip.h, resolved from a dlopen'ed library. The library is never
/// unloaded: GPU runtimes do not support being unloaded from a live process.
final class HIPLibrary: @unchecked Sendable {
    typealias CountFn = @convention(c) (UnsafeMutablePointer<Int32>?) -> Int32
    typealias NameFn = @convention(c) (Int32, UnsafeMutablePointer<CChar>?, Int32) -> Int32
    typealias StatusTextFn = @convention(c) (Int32) -> UnsafePointer<CChar>?
    typealias LayerCreateFn = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32, Float, Float, UnsafePointer<Float>?,
        UnsafePointer<Int32>?, Int64, UnsafeMutablePointer<OpaquePointer?>?
    ) -> Int32
    typealias StreamCreateFn = @convention(c) (Int32, UnsafeMutablePointer<OpaquePointer?>?) -> Int32
    typealias DestroyFn = @convention(c) (OpaquePointer?) -> Void
    typealias RouteFn = @convention(c) (
        OpaquePointer?, OpaquePointer?, UnsafePointer<Float>?, UnsafeRawPointer?, Int32, Int64,
        UnsafePointer<UInt8>?, UnsafeRawPointer?, Int32,
        UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int64>?
    ) -> Int32

    typealias HostRegisterFn = @convention(c) (Int32, UnsafeMutableRawPointer?, UInt64) -> Int32
    typealias HostUnregisterFn = @convention(c) (UnsafeMutableRawPointer?) -> Int32
    typealias HostRegisteredFn = @convention(c) (UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<UInt64>?) -> Void

    /// 2: mrh_layer_create_ex and mrh_route_ex (renorm_epsilon, hash-routed layers, masks).
    /// 3: zero copy (mrh_host_register, mrh_route_mapped). A version-2 library still serves,
    /// staging every request.
    static let abiVersions: ClosedRange<Int32> = 2...3

    let path: String
    let runtime: String
    let deviceCount: CountFn
    let deviceName: NameFn
    let errorName: StatusTextFn
    let errorString: StatusTextFn
    /// mrh_layer_create_ex.
    let layerCreate: LayerCreateFn
    let layerDestroy: DestroyFn
    let streamCreate: StreamCreateFn
    let streamDestroy: DestroyFn
    /// mrh_route_ex.
    let route: RouteFn
    /// The library's ABI version (one of `abiVersions`).
    let version: Int32
    /// ABI 3 (nil for a version-2 library): host registration and mrh_route_mapped.
    let hostRegister: HostRegisterFn?
    let hostUnregister: HostUnregisterFn?
    let hostRegistered: HostRegisteredFn?
    let routeMapped: RouteFn?

    init(path: String) throws(BackendError) {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw .libraryLoadFailed(path: path, reason: reason)
        }
        func symbol<T>(_ name: String, as: T.Type) throws(BackendError) -> T {
            guard let p = dlsym(handle, name) else {
                throw .incompatibleLibrary(path: path, reason: "missing symbol \(name)")
            }
            return unsafeBitCast(p, to: T.self)
        }
        typealias VersionFn = @convention(c) () -> Int32
        typealias TextFn = @convention(c) () -> UnsafePointer<CChar>?
        let version = try symbol("mrh_abi_version", as: VersionFn.self)()
        guard Self.abiVersions.contains(version) else {
            throw .incompatibleLibrary(
                path: path, reason: "ABI version \(version), expected \(Self.abiVersions.lowerBound)...\(Self.abiVersions.upperBound)")
        }
        self.path = path
        self.version = version
        runtime = try symbol("mrh_runtime_name", as: TextFn.self)().map { String(cString: $0) } ?? "?"
        deviceCount = try symbol("mrh_device_count", as: CountFn.self)
        deviceName = try symbol("mrh_device_name", as: NameFn.self)
        errorName = try symbol("mrh_error_name", as: StatusTextFn.self)
        errorString = try symbol("mrh_error_string", as: StatusTextFn.self)
        layerCreate = try symbol("mrh_layer_create_ex", as: LayerCreateFn.self)
        layerDestroy = try symbol("mrh_layer_destroy", as: DestroyFn.self)
        streamCreate = try symbol("mrh_stream_create", as: StreamCreateFn.self)
        streamDestroy = try symbol("mrh_stream_destroy", as: DestroyFn.self)
        route = try symbol("mrh_route_ex", as: RouteFn.self)
        let zeroCopy = version >= 3
        hostRegister = zeroCopy ? try symbol("mrh_host_register", as: HostRegisterFn.self) : nil
        hostUnregister = zeroCopy ? try symbol("mrh_host_unregister", as: HostUnregisterFn.self) : nil
        hostRegistered = zeroCopy ? try symbol("mrh_host_registered", as: HostRegisteredFn.self) : nil
        routeMapped = zeroCopy ? try symbol("mrh_route_mapped", as: RouteFn.self) : nil
    }

    /// "hipErrorNoDevice: no ROCm-capable device is detected".
    func describe(_ status: Int32) -> String {
        let name = errorName(status).map { String(cString: $0) } ?? "status \(status)"
        let text = errorString(status).map { String(cString: $0) } ?? ""
        return text.isEmpty || text == name ? name : "\(name): \(text)"
    }

    func failure(_ operation: String, _ status: Int32) -> BackendError {
        .deviceFailure(operation: operation, status: status, error: describe(status))
    }

    /// Where the backend looks for a runtime's library, in order: its variable
    /// (`MOE_ROUTER_HIP_LIB`, `MOE_ROUTER_CUDA_LIB`) alone when set; else next to the executable,
    /// the install's lib directory (`bin/../lib`), then `build/rocm/` or `build/cuda/` under the
    /// working directory.
    static func searchPaths(for runtime: GPURuntime = .rocm) -> [String] {
        if let env = getenv(runtime.environment), env.pointee != 0 { return [String(cString: env)] }
        var paths: [String] = []
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 {
            let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let slash = exe.lastIndex(of: "/") {
                let dir = exe[..<slash]
                paths.append(dir + "/" + runtime.fileName)
                if let up = dir.lastIndex(of: "/") { paths.append(dir[..<up] + "/lib/" + runtime.fileName) }
            }
        }
        paths.append(runtime.buildDirectory + runtime.fileName)
        return paths
    }

    static func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }
}
