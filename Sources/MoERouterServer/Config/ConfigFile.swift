import Foundation
import MoERouterModels
import MoERouting
import Yams

/// The YAML configuration file (docs/PROTOCOL.md, "Configuration"). Every key is optional;
/// command-line flags override it.
public struct ConfigFile: Decodable, Sendable {
    public var endpoint: String?
    public var tcp: String?
    public var backend: String?
    public var workers: Int?
    public var queue_depth: Int?
    public var channel_threads: Int?
    public var inline_tokens: Int?
    public var max_message_bytes: Int?
    public var max_tokens: Int?
    public var deadline_ms: UInt32?
    public var max_registrations: Int?
    public var max_queued_reply_bytes: Int?
    public var tcp_curve_key: String?
    public var tcp_curve_allow: String?
    public var tcp_allow_insecure: Bool?
    public var max_registrations_per_uid: Int?
    public var max_mapped_bytes_per_uid: Int?
    public var max_queued_reply_bytes_total: Int?
    /// uids allowed control operations besides root and the daemon's own.
    public var control_uids: [UInt32]?
    public var expert_load_metrics: Bool?
    /// Expert placements by layer name, for any layer (config, preset or checkpoint).
    public var placements: [String: PlacementEntry]?
    public var layers: [LayerEntry]?
    /// Checkpoint directories whose MoE layers to serve (docs/MODELS.md).
    public var models: [ModelEntry]?
    /// Where each key stands in the file ("workers", "layers[2].gate_dtype"), for errors.
    public var positions: [String: SourcePosition] = [:]

    public init() {}

    private enum CodingKeys: String, CodingKey {
        case endpoint, tcp, backend, workers, queue_depth, channel_threads, inline_tokens, max_message_bytes, max_tokens, deadline_ms,
             max_registrations, max_queued_reply_bytes, max_queued_reply_bytes_total,
             max_registrations_per_uid, max_mapped_bytes_per_uid, tcp_curve_key, tcp_curve_allow, tcp_allow_insecure,
             control_uids, expert_load_metrics, placements, layers, models
    }

    /// One layer's placement: a JSON file (relative to the config file) or the replica lists.
    public struct PlacementEntry: Decodable, Sendable {
        public var file: String?
        public var replicas: [[Int]]?
        public var num_physical_experts: Int?
    }

    /// Applies `placements` to the layers of `specs` they name (a name no layer has, or an entry
    /// that is neither a file nor replicas, is an error naming the key).
    public func applyPlacements(to specs: inout [LayerSpec], baseDirectory base: String) throws(ConfigError) {
        for (name, entry) in (placements ?? [:]).sorted(by: { $0.key < $1.key }) {
            let key = "placements.\(name)"
            guard let i = specs.firstIndex(where: { $0.name == name }) else {
                throw .invalid(key: key, value: name, expected: "the name of a served layer", at: positions[key])
            }
            do throws(PlacementFile.Failure) {
                switch (entry.file, entry.replicas) {
                case (let file?, nil):
                    specs[i].placement = try PlacementFile.load(path: file.hasPrefix("/") ? file : base + "/" + file)
                case (nil, let replicas?):
                    specs[i].placement = try PlacementFile.placement(replicas: replicas, numPhysical: entry.num_physical_experts)
                default:
                    throw PlacementFile.Failure(description: "either file: or replicas:")
                }
            } catch {
                throw .invalid(key: key, value: name, expected: error.description, at: positions[key])
            }
        }
    }

    /// A checkpoint directory (relative to the config file's directory), with an optional name
    /// (default: the directory's) and gate dtype (auto, fp32, bf16, fp16; default auto).
    public struct ModelEntry: Decodable, Sendable {
        public var path: String
        public var name: String?
        public var gate_dtype: String?
    }

    /// A layer: a `preset` (optionally renamed and with another gate dtype / nonfinite policy)
    /// or a full spec with the snake_case fields of shared/ROUTING.md.
    public struct LayerEntry: Decodable, Sendable {
        public var preset: String?
        public var name: String?
        public var method: String?
        public var num_experts: Int?
        public var top_k: Int?
        public var num_expert_group: Int?
        public var topk_group: Int?
        public var scoring: String?
        public var renormalize: Bool?
        public var routed_scaling_factor: Float?
        public var gate_dtype: String?
        public var nonfinite: String?
        public var bias: [Float]?
        /// Raw little-endian fp32 file, relative to the config file's directory.
        public var bias_file: String?
        /// MiniMax2's renormalisation: weights / (sum + renorm_epsilon).
        public var renorm_epsilon: Float?
        /// Hash routing: tid2eid as raw little-endian int32, [vocab, top_k] row-major (relative
        /// to the config file's directory).
        public var tid2eid_file: String?
        /// Expert placement: per logical expert, its physical replicas; with the physical count
        /// (default: the largest id + 1). Or placement_file: JSON of the same (docs/ROUTING-IMPLEMENTATION.md).
        public var placement: [[Int]]?
        public var num_physical_experts: Int?
        public var placement_file: String?
    }

    public static func load(path: String) throws(ConfigError) -> ConfigFile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw .file(path: path, reason: error.localizedDescription)
        }
        return try parse(text, path: path)
    }

    /// Parses a configuration's text; `path` names it in errors.
    public static func parse(_ text: String, path: String) throws(ConfigError) -> ConfigFile {
        var file: ConfigFile
        do {
            let root = try Yams.compose(yaml: text)
            try refuseSexagesimal(root, file: path)
            file = try YAMLDecoder().decode(ConfigFile.self, from: text)
            file.positions = positions(of: root, file: path)
        } catch let error as ConfigError {
            throw error
        } catch let error as DecodingError {
            throw describe(error, path: path, text: text)
        } catch let error as YamlError {
            throw .file(path: path, reason: "\(error)")
        } catch {
            throw .file(path: path, reason: "\(error)")
        }
        return file
    }

    /// The position of `key` in the file (nil when it is not there or came from a flag).
    public func position(_ key: String) -> SourcePosition? { positions[key] }

    /// The layer specs, validated only as far as parsing goes (BuiltLayer validates the rest).
    public func layerSpecs(baseDirectory: String) throws(ConfigError) -> [LayerSpec] {
        try (layers ?? []).enumerated().map { (i, e) throws(ConfigError) in
            try e.spec(key: "layers[\(i)]", base: baseDirectory, positions: positions)
        }
    }

    /// Every mapping key's dotted path with the position of its value.
    /// The keys decoded as integers (top level and layer entries).
    static let integerKeys: Set<String> = [
        "workers", "queue_depth", "channel_threads", "inline_tokens", "max_message_bytes", "max_tokens", "deadline_ms", "max_registrations",
        "max_queued_reply_bytes", "max_queued_reply_bytes_total", "max_registrations_per_uid", "max_mapped_bytes_per_uid",
        "num_experts", "top_k", "num_expert_group", "topk_group", "num_physical_experts", "control_uids",
    ]

    /// YAML 1.1 reads an integer written with colons (`1:30:00`) as base 60, and Yams (5.x)
    /// multiplies its parts without overflow checks — skipping parts that are not numbers —,
    /// so a long one traps: a crash at start or at a SIGHUP reload (found by fuzzing). No
    /// integer setting is written that way: a colon in the value of any integer key is refused
    /// before decoding, naming the position.
    private static func refuseSexagesimal(_ root: Node?, file: String) throws(ConfigError) {
        func walk(_ node: Node) throws(ConfigError) {
            if let mapping = node.mapping {
                for (key, value) in mapping {
                    if let k = key.string, Self.integerKeys.contains(k), let v = value.scalar,
                       v.string.replacingOccurrences(of: "_", with: "").contains(":") {
                        let at = value.mark.map { SourcePosition(file: file, line: $0.line, column: $0.column) }
                        throw .invalid(key: k, value: String(v.string.prefix(40)),
                                       expected: "an integer (YAML 1.1 base-60 numbers like 1:30 are not accepted)", at: at)
                    }
                    try walk(value)
                }
            } else if let sequence = node.sequence {
                for value in sequence { try walk(value) }
            }
        }
        if let root { try walk(root) }
    }

    private static func positions(of root: Node?, file: String) -> [String: SourcePosition] {
        var out: [String: SourcePosition] = [:]
        func walk(_ node: Node, _ path: String) {
            if let mark = node.mark, !path.isEmpty { out[path] = SourcePosition(file: file, line: mark.line, column: mark.column) }
            if let mapping = node.mapping {
                for (key, value) in mapping {
                    guard let k = key.string else { continue }
                    walk(value, path.isEmpty ? k : "\(path).\(k)")
                }
            } else if let sequence = node.sequence {
                for (i, value) in sequence.enumerated() { walk(value, "\(path)[\(i)]") }
            }
        }
        if let root { walk(root, "") }
        return out
    }

    /// A decoding error as the key it concerns and, when the file holds it, its position.
    private static func describe(_ error: DecodingError, path: String, text: String) -> ConfigError {
        let (codingPath, reason): ([any CodingKey], String) = switch error {
        case .typeMismatch(let type, let c): (c.codingPath, "expected a value of type \(type)")
        case .valueNotFound(let type, let c): (c.codingPath, "expected a value of type \(type)")
        case .keyNotFound(let key, let c): (c.codingPath + [key], "is missing")
        case .dataCorrupted(let c): (c.codingPath, c.debugDescription + (c.underlyingError.map { ": \($0)" } ?? ""))
        @unknown default: ([], "\(error)")
        }
        let key = codingPath.reduce("") { path, k in
            k.intValue.map { "\(path)[\($0)]" } ?? (path.isEmpty ? k.stringValue : "\(path).\(k.stringValue)")
        }
        let at = (try? Yams.compose(yaml: text)).flatMap { positions(of: $0, file: path)[key] }
        return .file(path: path, reason: key.isEmpty ? reason : "\(key): \(reason)", at: at)
    }
}

extension ConfigFile.LayerEntry {
    func spec(key at: String, base: String, positions: [String: SourcePosition]) throws(ConfigError) -> LayerSpec {
        func parse<T>(_ field: String, _ value: String?, expected: String, _ make: (String) -> T?) throws(ConfigError) -> T? {
            guard let value else { return nil }
            guard let v = make(value) else {
                throw .invalid(key: "\(at).\(field)", value: value, expected: expected, at: positions["\(at).\(field)"])
            }
            return v
        }
        let gate = try parse("gate_dtype", gate_dtype, expected: "fp32, bf16 or fp16", DType.init(name:))
        let policy = try parse("nonfinite", nonfinite, expected: "clamp or reject", NonFinitePolicy.init(name:))
        var spec: LayerSpec
        if let preset {
            guard let p = Presets.spec(named: preset, gateDType: gate ?? Presets.naturalGateDType(preset)) else {
                throw .invalid(key: "\(at).preset", value: preset, expected: "one of \(Presets.names.joined(separator: ", "))",
                               at: positions["\(at).preset"])
            }
            spec = p
            if let name { spec.name = name }
        } else {
            guard let name else { throw .missing(key: "\(at).preset or \(at).name + method + shape", at: positions[at]) }
            let methods = RoutingMethod.allCases.map(\.name).joined(separator: ", ")
            guard let m = try parse("method", method, expected: methods, RoutingMethod.init(name:)) else {
                throw .missing(key: "\(at).method", at: positions[at])
            }
            guard let e = num_experts else { throw .missing(key: "\(at).num_experts", at: positions[at]) }
            guard let k = top_k else { throw .missing(key: "\(at).top_k", at: positions[at]) }
            spec = LayerSpec(name: name, method: m, numExperts: e, topK: k)
            spec.gateDType = gate ?? .bf16
        }
        if let v = num_expert_group { spec.numExpertGroup = v }
        if let v = topk_group { spec.topKGroup = v }
        if let v = try parse("scoring", scoring, expected: "softmax, sigmoid, sqrtsoftplus or none", ScoringFunction.init(name:)) { spec.scoring = v }
        if let v = renormalize { spec.renormalize = v }
        if let v = routed_scaling_factor { spec.routedScalingFactor = v }
        if let policy { spec.nonFinite = policy }
        if let bias { spec.bias = bias }
        if let bias_file {
            let path = bias_file.hasPrefix("/") ? bias_file : base + "/" + bias_file
            guard let data = FileManager.default.contents(atPath: path), data.count % 4 == 0 else {
                throw .invalid(key: "\(at).bias_file", value: path, expected: "a readable file of whole fp32 values",
                               at: positions["\(at).bias_file"])
            }
            spec.bias = data.withUnsafeBytes { raw in (0..<data.count / 4).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) } }
        }
        if let v = renorm_epsilon { spec.renormEpsilon = v }
        if let tid2eid_file {
            let path = tid2eid_file.hasPrefix("/") ? tid2eid_file : base + "/" + tid2eid_file
            let row = spec.topK * 4
            guard let data = FileManager.default.contents(atPath: path), !data.isEmpty, data.count % row == 0 else {
                throw .invalid(key: "\(at).tid2eid_file", value: path,
                               expected: "a readable file of whole rows of top_k (\(spec.topK)) little-endian int32 expert ids",
                               at: positions["\(at).tid2eid_file"])
            }
            let ids = data.withUnsafeBytes { raw in (0..<data.count / 4).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self) } }
            spec.hashTable = TokenTable(vocab: data.count / row, topK: spec.topK, ids: ids)
        }
        if placement != nil && placement_file != nil {
            throw .invalid(key: "\(at).placement_file", value: placement_file!, expected: "placement or placement_file, not both",
                           at: positions["\(at).placement_file"])
        }
        if let placement {
            do { spec.placement = try PlacementFile.placement(replicas: placement, numPhysical: num_physical_experts) } catch {
                throw .invalid(key: "\(at).placement", value: "\(placement.count) experts", expected: error.description,
                               at: positions["\(at).placement"])
            }
        } else if let placement_file {
            let path = placement_file.hasPrefix("/") ? placement_file : base + "/" + placement_file
            do { spec.placement = try PlacementFile.load(path: path) } catch {
                throw .invalid(key: "\(at).placement_file", value: path, expected: error.description,
                               at: positions["\(at).placement_file"])
            }
        }
        return spec
    }
}
