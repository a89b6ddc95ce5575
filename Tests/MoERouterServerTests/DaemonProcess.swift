import Foundation
import Glibc

/// A real moe-routerd process on a private ipc endpoint, stopped with SIGTERM at the end.
final class DaemonProcess {
    let process = Process()
    let endpoint: String
    let directory: String

    /// The daemon binary beside this test bundle (same build), or $MOE_ROUTERD.
    static var binary: String {
        if let p = ProcessInfo.processInfo.environment["MOE_ROUTERD"] { return p }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("moe-routerd").path
    }

    init(arguments: [String]) throws {
        directory = NSTemporaryDirectory() + "moe-routerd-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        endpoint = "ipc://\(directory)/routerd.sock"
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments + ["--endpoint", endpoint, "--log-level", "warning"]
        try process.run()
        let path = directory + "/routerd.sock"
        for _ in 0..<200 where access(path, F_OK) != 0 { usleep(25_000) }
        guard access(path, F_OK) == 0 else { throw DaemonError("daemon did not create \(path)") }
    }

    /// SIGTERM, then the exit status (waits at most 10 s).
    func terminate() -> Int32 {
        kill(process.processIdentifier, SIGTERM)
        for _ in 0..<400 where process.isRunning { usleep(25_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
        return process.terminationStatus
    }
}

struct DaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
