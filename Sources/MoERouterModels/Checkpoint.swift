import Foundation
import MoERouting

/// The gate dtype a model's layers are built for: the checkpoint's `torch_dtype` (`auto`, what
/// the engine's gate emits by default), or a given one.
public enum GateDTypeChoice: Sendable, Equatable {
    case auto
    case fixed(DType)

    /// `auto`, `fp32`, `bf16` or `fp16`.
    public init?(name: String) {
        if name == "auto" { self = .auto } else if let d = DType(name: name) { self = .fixed(d) } else { return nil }
    }
}

/// A Hugging Face checkpoint directory read for its routing layers: `config.json`, then the
/// `e_score_correction_bias` tensors only (from `model.safetensors`, or the shards that
/// `model.safetensors.index.json` names for them).
public struct Checkpoint: Sendable {
    public let name: String
    public let config: ModelConfig
    /// One spec per MoE layer, named "`name`/`layer index`", in layer order.
    public let layers: [LayerSpec]
    /// The dtype the biases are stored in (nil for methods without one).
    public let biasDType: DType?
    public let gateDType: DType
    /// Bytes read from the safetensors files (headers and biases).
    public let bytesRead: Int

    /// Reads `directory`. `name`: the model's name (default: the directory's base name).
    public init(directory: String, name: String? = nil, gate: GateDTypeChoice = .auto) throws(CheckpointError) {
        let dir = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        self.name = name ?? URL(fileURLWithPath: dir).lastPathComponent
        let configPath = dir + "/config.json"
        config = try ModelConfig(json: try Self.contents(configPath), path: configPath)
        switch gate {
        case .fixed(let d): gateDType = d
        case .auto:
            guard let d = config.torchDType else {
                throw .badConfig(path: configPath, reason: "torch_dtype is missing or not float32/bfloat16/float16; pass a gate dtype")
            }
            gateDType = d
        }
        var specs: [LayerSpec] = []
        var storedDTypes = Set<DType>()
        var bytes = 0
        if let biasTensor = config.biasTensor {
            let names = config.moeLayers.map(biasTensor)
            var files: [String: SafetensorsFile] = [:]
            for (layerIndex, tensor) in zip(config.moeLayers, names) {
                let path = try Self.shard(holding: tensor, in: dir)
                let file: SafetensorsFile
                if let open = files[path] { file = open } else {
                    file = try SafetensorsFile(path: path)
                    files[path] = file
                }
                let (values, stored) = try file.readVector(tensor, count: config.layer.numExperts)
                storedDTypes.insert(stored)
                specs.append(Self.spec(config.layer, "\(self.name)/\(layerIndex)", gateDType, bias: values))
            }
            bytes = files.values.reduce(0) { $0 + $1.bytesRead }
        } else {
            let (shared, model, gate) = (config.layer, self.name, gateDType)
            specs = config.moeLayers.map { Self.spec(shared, "\(model)/\($0)", gate, bias: nil) }
        }
        guard storedDTypes.count <= 1 else {
            throw .badConfig(path: dir, reason: "the biases are stored in several dtypes (\(storedDTypes.map(\.description).sorted()))")
        }
        layers = specs
        biasDType = storedDTypes.first
        bytesRead = bytes
    }

    private static func spec(_ shared: LayerSpec, _ name: String, _ gate: DType, bias: [Float]?) -> LayerSpec {
        var s = shared
        s.name = name
        s.gateDType = gate
        s.bias = bias
        return s
    }

    /// The safetensors file holding `tensor`: `model.safetensors`, else the shard the index maps
    /// it to (the index is read once per lookup; it is small).
    private static func shard(holding tensor: String, in dir: String) throws(CheckpointError) -> String {
        let single = dir + "/model.safetensors"
        let indexPath = dir + "/model.safetensors.index.json"
        guard FileManager.default.fileExists(atPath: indexPath) else { return single }
        let root = try jsonObject(try contents(indexPath)) { .badConfig(path: indexPath, reason: $0) }
        guard let index = root["weight_map"] as? [String: Any] else {
            throw .badConfig(path: indexPath, reason: "no weight_map object")
        }
        guard let file = index[tensor] as? String else { throw .badConfig(path: indexPath, reason: "weight_map has no \(tensor)") }
        guard !file.contains("/"), !file.hasPrefix(".") else {
            throw .badConfig(path: indexPath, reason: "weight_map names \(file) for \(tensor): a shard must be a file in the directory")
        }
        return dir + "/" + file
    }

    private static func contents(_ path: String) throws(CheckpointError) -> Data {
        do { return try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw .unreadable(path: path, reason: (error as NSError).localizedDescription)
        }
    }
}
