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
    /// Every byte read: `config.json`, the shard index, each needed shard's header and the
    /// bias tensors — never a weight.
    public let bytesRead: Int
    /// Bias values the pre-cast to the gate dtype changes (0: the cast is exact), of `biasValues`.
    public let roundedBiasValues: Int
    public var biasValues: Int { layers.reduce(0) { $0 + ($1.bias?.count ?? 0) } }
    /// Hash-routed layers (tid2eid tables read).
    public var hashLayerCount: Int { layers.count { $0.hashTable != nil } }

    /// Reads `directory`. `name`: the model's name (default: the directory's base name).
    public init(directory: String, name: String? = nil, gate: GateDTypeChoice = .auto) throws(CheckpointError) {
        let dir = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        self.name = name ?? URL(fileURLWithPath: dir).lastPathComponent
        let configPath = dir + "/config.json"
        let configBytes = try Self.contents(configPath)
        config = try ModelConfig(json: configBytes, path: configPath)
        var bytes = configBytes.count
        switch gate {
        case .fixed(let d): gateDType = d
        case .auto where config.gateDTypeOverride != nil:
            gateDType = config.gateDTypeOverride!
        case .auto:
            guard let d = config.torchDType else {
                throw .badConfig(path: configPath, reason: "torch_dtype is missing or not float32/bfloat16/float16; pass a gate dtype")
            }
            gateDType = d
        }
        var specs: [LayerSpec] = []
        var storedDTypes = Set<DType>()
        var rounded = 0
        if let biasTensor = config.biasTensor {
            let index = try ShardIndex(directory: dir)
            bytes += index.bytesRead
            var files: [String: SafetensorsFile] = [:]
            /// The file holding the first of `names` the checkpoint has, and that name.
            func open(_ names: [String]) throws(CheckpointError) -> (SafetensorsFile, String) {
                var firstError: CheckpointError?
                for tensor in names {
                    do {
                        let path = try index.file(holding: tensor)
                        let file: SafetensorsFile
                        if let open = files[path] { file = open } else {
                            file = try SafetensorsFile(path: path)
                            files[path] = file
                        }
                        if file.tensors[tensor] != nil || names.count == 1 { return (file, tensor) }
                        if firstError == nil { firstError = .badTensor(path: path, tensor: tensor, reason: "not in the file") }
                    } catch {
                        if firstError == nil { firstError = error }
                    }
                }
                throw firstError ?? .badConfig(path: dir, reason: "no tensor named")
            }
            for layerIndex in config.moeLayers {
                let name = "\(self.name)/\(layerIndex)"
                if config.hashLayers.contains(layerIndex), let hashTensors = config.hashTensors, let vocab = config.vocabSize {
                    let (file, tensor) = try open(hashTensors(layerIndex))
                    let ids = try file.readIndexMatrix(tensor, rows: vocab, columns: config.layer.topK)
                    var s = Self.spec(config.layer, name, gateDType, bias: nil)
                    s.hashTable = TokenTable(vocab: vocab, topK: config.layer.topK, ids: ids)
                    specs.append(s)
                    continue
                }
                let names = [biasTensor(layerIndex)] + (config.biasTensorAlternative.map { [$0(layerIndex)] } ?? [])
                let (file, tensor) = try open(names)
                let (values, stored) = try file.readVector(tensor, count: config.layer.numExperts)
                storedDTypes.insert(stored)
                rounded += values.count { [gateDType] in gateDType.roundTrip($0) != $0 }
                specs.append(Self.spec(config.layer, name, gateDType, bias: values))
            }
            bytes += files.values.reduce(0) { $0 + $1.bytesRead }
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
        roundedBiasValues = rounded
    }

    /// One line for logs and `moe-routerctl inspect`: family, layers, the bias's stored dtype, the
    /// gate dtype, and whether the pre-cast rounds.
    public var summary: String {
        let cast: String
        if let stored = biasDType {
            cast = "bias stored \(stored), pre-cast to \(gateDType) once: "
                + (roundedBiasValues == 0 ? "exact" : "rounds \(roundedBiasValues) of \(biasValues) values")
        } else {
            cast = "no bias"
        }
        let hash = hashLayerCount > 0 ? " (\(hashLayerCount) hash-routed, tid2eid [\(config.vocabSize ?? 0), \(config.layer.topK)])" : ""
        return "model \(name): \(config.modelType), \(layers.count) MoE layers\(hash), gate \(gateDType), \(cast), read \(bytesRead) bytes"
    }

    private static func spec(_ shared: LayerSpec, _ name: String, _ gate: DType, bias: [Float]?) -> LayerSpec {
        var s = shared
        s.name = name
        s.gateDType = gate
        s.bias = bias
        return s
    }

    /// A small file's bytes (config.json, the index): a regular file of at most `limit` bytes.
    static func contents(_ path: String, limit: Int = 64 << 20) throws(CheckpointError) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .unreadable(path: path, reason: "not a regular file") }
        guard st.st_size <= limit else { throw .unreadable(path: path, reason: "\(st.st_size) bytes; at most \(limit) are read") }
        var data = Data(count: Int(st.st_size))
        let got = data.withUnsafeMutableBytes { buf in
            var done = 0
            while done < buf.count {
                let n = pread(fd, buf.baseAddress! + done, buf.count - done, off_t(done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return n < 0 ? -1 : done }
                done += n
            }
            return done
        }
        guard got >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard got == data.count else { throw .unreadable(path: path, reason: "changed size while read") }
        return data
    }
}

/// Where each tensor lives: `model.safetensors.index.json`'s `weight_map`, read once, or the
/// single `model.safetensors` when there is no index.
struct ShardIndex {
    let directory: String
    let indexPath: String
    let weightMap: [String: Any]?
    let bytesRead: Int

    init(directory: String) throws(CheckpointError) {
        self.directory = directory
        indexPath = directory + "/model.safetensors.index.json"
        var st = stat()
        guard lstat(indexPath, &st) == 0 || errno != ENOENT else {
            weightMap = nil
            bytesRead = 0
            return
        }
        let data = try Checkpoint.contents(indexPath)
        let root = try jsonObject(data) { [indexPath] in .badConfig(path: indexPath, reason: $0) }
        guard let map = root["weight_map"] as? [String: Any] else {
            throw .badConfig(path: indexPath, reason: "no weight_map object")
        }
        weightMap = map
        bytesRead = data.count
    }

    /// The file holding `tensor`; a shard must be a plain file name inside the directory.
    func file(holding tensor: String) throws(CheckpointError) -> String {
        guard let weightMap else { return directory + "/model.safetensors" }
        guard let file = weightMap[tensor] as? String else { throw .badConfig(path: indexPath, reason: "weight_map has no \(tensor)") }
        guard !file.isEmpty, !file.contains("/"), !file.hasPrefix(".") else {
            throw .badConfig(path: indexPath, reason: "weight_map names \(file) for \(tensor): a shard must be a file in the directory")
        }
        return directory + "/" + file
    }
}
