import Foundation
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
    public var inline_tokens: Int?
    public var max_message_bytes: Int?
    public var max_tokens: Int?
    public var deadline_ms: UInt32?
    public var max_registrations: Int?
    public var layers: [LayerEntry]?

    public init() {}

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
    }

    public static func load(path: String) throws(ConfigError) -> ConfigFile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError("config \(path): \(error.localizedDescription)")
        }
        do { return try YAMLDecoder().decode(ConfigFile.self, from: text) } catch {
            throw ConfigError("config \(path): \(error)")
        }
    }

    /// The layer specs, validated only as far as parsing goes (BuiltLayer validates the rest).
    public func layerSpecs(baseDirectory: String) throws(ConfigError) -> [LayerSpec] {
        try (layers ?? []).enumerated().map { (i, e) throws(ConfigError) in try e.spec(index: i, base: baseDirectory) }
    }
}

extension ConfigFile.LayerEntry {
    func spec(index: Int, base: String) throws(ConfigError) -> LayerSpec {
        let at = "layers[\(index)]"
        func parse<T>(_ field: String, _ value: String?, _ make: (String) -> T?) throws(ConfigError) -> T? {
            guard let value else { return nil }
            guard let v = make(value) else { throw ConfigError("\(at).\(field) = '\(value)' is not valid") }
            return v
        }
        let gate = try parse("gate_dtype", gate_dtype, DType.init(name:))
        let policy = try parse("nonfinite", nonfinite, NonFinitePolicy.init(name:))
        var spec: LayerSpec
        if let preset {
            guard let p = Presets.spec(named: preset, gateDType: gate ?? .bf16) else {
                throw ConfigError("\(at).preset = '\(preset)' is unknown (known: \(Presets.names.joined(separator: ", ")))")
            }
            spec = p
            if let name { spec.name = name }
        } else {
            guard let name else { throw ConfigError("\(at): needs 'preset' or 'name' + 'method' + shape") }
            guard let m = try parse("method", method, RoutingMethod.init(name:)) else { throw ConfigError("\(at).method is missing") }
            guard let e = num_experts, let k = top_k else { throw ConfigError("\(at): num_experts and top_k are required") }
            spec = LayerSpec(name: name, method: m, numExperts: e, topK: k)
            spec.gateDType = gate ?? .bf16
        }
        if let v = num_expert_group { spec.numExpertGroup = v }
        if let v = topk_group { spec.topKGroup = v }
        if let v = try parse("scoring", scoring, ScoringFunction.init(name:)) { spec.scoring = v }
        if let v = renormalize { spec.renormalize = v }
        if let v = routed_scaling_factor { spec.routedScalingFactor = v }
        if let policy { spec.nonFinite = policy }
        if let bias { spec.bias = bias }
        if let bias_file {
            let path = bias_file.hasPrefix("/") ? bias_file : base + "/" + bias_file
            guard let data = FileManager.default.contents(atPath: path), data.count % 4 == 0 else {
                throw ConfigError("\(at).bias_file = '\(path)' is unreadable or not a whole number of fp32 values")
            }
            spec.bias = data.withUnsafeBytes { raw in (0..<data.count / 4).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) } }
        }
        return spec
    }
}
