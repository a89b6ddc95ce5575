import Foundation
import MoERouterModels
import MoERouterServer

/// The fuzz targets: `decoder` (a request through the whole request core), `config` (the YAML
/// configuration loader), `checkpoint` (config.json parsing and a safetensors file: header,
/// every tensor entry, each tensor read). scripts/fuzz.sh builds this with AddressSanitizer,
/// libFuzzer's coverage instrumentation and `-DMOE_FUZZING` (the entry point runs libFuzzer's
/// driver; the target comes from `$MOE_FUZZ_TARGET`); the plain build replays files through a target:
/// `moe-router-fuzz TARGET FILE_OR_DIR...` (the checked-in corpus runs in the test suite).
enum Target: String, CaseIterable {
    case decoder, config, checkpoint

    /// What the input came to, for the replay's `-v` (the decoder's answer status).
    @discardableResult
    func run(_ data: UnsafeRawBufferPointer) -> String {
        switch self {
        case .decoder: return FuzzEntry.request(data)
        case .config: FuzzEntry.config(data)
        case .checkpoint: Self.checkpoint(data)
        }
        return "ran"
    }

    /// An unlinked file in /dev/shm, rewritten for each input.
    private static let scratchFD: Int32 = {
        let path = "/dev/shm/moe-router-fuzz-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        unlink(path)
        return fd
    }()

    /// Byte 0 even: `data[1...]` as config.json; odd: as a safetensors file (written to a scratch
    /// file, opened by path as the loader does), every tensor then read as a bias would be.
    private static func checkpoint(_ data: UnsafeRawBufferPointer) {
        guard let first = data.first else { return }
        let rest = UnsafeRawBufferPointer(rebasing: data[1...])
        if first & 1 == 0 {
            _ = try? ModelConfig(json: Data(rest), path: "config.json")
            return
        }
        let fd = scratchFD
        guard fd >= 0, ftruncate(fd, 0) == 0 else { return }
        guard rest.isEmpty || pwrite(fd, rest.baseAddress!, rest.count, 0) == rest.count else { return }
        guard let file = try? SafetensorsFile(path: "/proc/self/fd/\(fd)") else { return }
        for (name, tensor) in file.tensors.prefix(16) {
            _ = try? file.readVector(name, count: tensor.elementCount)
        }
    }
}

#if MOE_FUZZING
nonisolated(unsafe) private let selected: Target = {
    guard let name = ProcessInfo.processInfo.environment["MOE_FUZZ_TARGET"], let t = Target(rawValue: name) else {
        fatalError("set MOE_FUZZ_TARGET to one of \(Target.allCases.map(\.rawValue))")
    }
    return t
}()

/// libFuzzer's driver (libclang_rt.fuzzer_no_main), called from our entry point: SwiftPM links
/// an executable's entry as `main`.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@main
struct FuzzMain {
    static func main() {
        FuzzEntry.prepare()
        _ = selected.run(UnsafeRawBufferPointer(start: nil, count: 0))
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            _ = selected.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        })
    }
}
#else
@main
struct Replay {
    static func main() {
        var args = CommandLine.arguments.dropFirst()
        let verbose = args.first == "-v"
        if verbose { args = args.dropFirst() }
        guard let name = args.first, let target = Target(rawValue: name), args.count >= 2 else {
            FileHandle.standardError.write("usage: moe-router-fuzz [-v] \(Target.allCases.map(\.rawValue).joined(separator: "|")) FILE_OR_DIR...\n".data(using: .utf8)!)
            exit(64)
        }
        var count = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                FileHandle.standardError.write("\(path): no such file\n".data(using: .utf8)!)
                exit(66)
            }
            let files = isDir.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                let outcome = data.withUnsafeBytes { target.run($0) }
                if verbose { print("\(file): \(outcome)") }
                count += 1
            }
        }
        print("\(name): \(count) input(s) ran without a crash")
    }
}
#endif
