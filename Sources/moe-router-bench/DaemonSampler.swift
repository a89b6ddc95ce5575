import Foundation
import Synchronization

/// Resident memory and open descriptors of the daemon, read from /proc.
struct DaemonSample: Codable {
    var seconds: Double
    var rssKiB: Int
    var fds: Int
}

func sampleDaemon(pid: Int32, at seconds: Double) -> DaemonSample? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kib = Int(line.split(separator: " ").dropFirst().first ?? ""),
          let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return nil }
    return DaemonSample(seconds: seconds, rssKiB: kib, fds: fds.count)
}

/// Whether a series stayed within ±`tolerance` of its first value; nil when there is nothing
/// to judge (fewer than two samples).
func isFlat(_ values: [Int], tolerance: Double) -> Bool? {
    guard values.count >= 2, let first = values.first, first > 0 else { return nil }
    return values.allSatisfy { abs(Double($0 - first)) / Double(first) <= tolerance }
}

/// Samples appended by the sampler thread, read once the soak is over.
final class SampleLog: Sendable {
    private let list = Mutex<[DaemonSample]>([])
    func append(_ s: DaemonSample) { list.withLock { $0.append(s) } }
    var all: [DaemonSample] { list.withLock { $0 } }
}
