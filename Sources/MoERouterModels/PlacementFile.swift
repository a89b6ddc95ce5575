import Foundation
import MoERouting

/// The placement file format (config `placement_file`, `moe-routerctl placement LAYER FILE`):
/// JSON, either `{"num_physical_experts": N, "replicas": [[p, ...], ...]}` or just the list of
/// lists (then N = the largest physical id + 1). Entry e lists logical expert e's physical
/// replicas in the order the contract's `t mod count` rule takes them.
public enum PlacementFile {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// At most 16 MiB: a placement of 65,536 ids is well under 1 MiB of JSON.
    static let maxBytes = 16 << 20

    public static func load(path: String) throws(Failure) -> ExpertPlacement {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw Failure(description: "a readable JSON placement file") }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: maxBytes + 1)) ?? Data()
        guard data.count <= maxBytes else { throw Failure(description: "a placement file of at most \(maxBytes) bytes") }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws(Failure) -> ExpertPlacement {
        struct Full: Decodable {
            var num_physical_experts: Int?
            var replicas: [[Int]]
        }
        let decoder = JSONDecoder()
        if let full = try? decoder.decode(Full.self, from: data) {
            return try placement(replicas: full.replicas, numPhysical: full.num_physical_experts)
        }
        if let list = try? decoder.decode([[Int]].self, from: data) { return try placement(replicas: list, numPhysical: nil) }
        throw Failure(description: "JSON: {\"num_physical_experts\": N, \"replicas\": [[physical ids of expert 0], ...]} or the list of lists")
    }

    /// The placement of `replicas` over `numPhysical` physical experts (default: the largest id
    /// + 1); shape and ranges are checked against the layer when it is built or set.
    public static func placement(replicas: [[Int]], numPhysical: Int?) throws(Failure) -> ExpertPlacement {
        let n = numPhysical ?? ((replicas.joined().max() ?? -1) + 1)
        if let bad = replicas.joined().first(where: { $0 < 0 || $0 >= ExpertPlacement.maxPhysical }) {
            throw Failure(description: "physical ids in 0..<\(ExpertPlacement.maxPhysical) (found \(bad))")
        }
        do { return try ExpertPlacement(numPhysical: n, replicas: replicas) } catch {
            throw Failure(description: error.description)
        }
    }
}
