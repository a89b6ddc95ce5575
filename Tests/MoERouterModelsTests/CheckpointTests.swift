import Foundation
import MoERouterModels
import MoERouting
import Testing

/// Checkpoint directories in the Hugging Face layout, written by the tests.
struct CheckpointFixture {
    let directory: String

    init(config: [String: Any], shards: [String: SafetensorsFixture], index: [String: String]? = nil) throws {
        directory = NSTemporaryDirectory() + "ckpt-\(UInt32.random(in: 0...UInt32.max))/Model-X"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
        for (file, fixture) in shards { try Data(fixture.bytes()).write(to: URL(fileURLWithPath: directory + "/" + file)) }
        if let index {
            try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": index])
                .write(to: URL(fileURLWithPath: directory + "/model.safetensors.index.json"))
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: (directory as NSString).deletingLastPathComponent) }

    /// DeepSeek-V3's config.json routing keys (the real values).
    static func deepseekV3(layers: Int = 61) -> [String: Any] {
        ["model_type": "deepseek_v3", "num_hidden_layers": layers, "first_k_dense_replace": 3, "moe_layer_freq": 1,
         "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc",
         "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5, "torch_dtype": "bfloat16"]
    }

    static func bias(_ layer: Int, count: Int) -> [Float] {
        (0..<count).map { Float(($0 * 7 + layer * 13) % 97) / 97 - 0.5 }
    }
}

@Suite struct CheckpointTests {
    /// A 61-layer DeepSeek-V3-shaped checkpoint in 4 shards, each bias beside a 256 KiB stand-in
    /// for the layer's weights: the loader reads the headers and the 58 biases, nothing else.
    @Test func deepseekV3ReadsOnlyTheBiases() throws {
        var shards: [String: SafetensorsFixture] = [:]
        var index: [String: String] = [:]
        for layer in 0..<61 {
            let file = "model-0000\(layer % 4 + 1)-of-00004.safetensors"
            let weight = "model.layers.\(layer).mlp.experts.0.down_proj.weight"
            shards[file, default: SafetensorsFixture()].entries.append((weight, "BF16", [512, 256], [UInt8](repeating: 7, count: 512 * 256 * 2)))
            index[weight] = file
            guard layer >= 3 else { continue }
            let bias = "model.layers.\(layer).mlp.gate.e_score_correction_bias"
            shards[file]!.entries.append((bias, "F32", [256], SafetensorsFixture.f32(CheckpointFixture.bias(layer, count: 256))))
            index[bias] = file
        }
        let fixture = try CheckpointFixture(config: CheckpointFixture.deepseekV3(), shards: shards, index: index)
        defer { fixture.remove() }
        let started = Date()
        let model = try Checkpoint(directory: fixture.directory)
        let seconds = Date().timeIntervalSince(started)
        #expect(model.name == "Model-X" && model.layers.count == 58)
        #expect(model.layers.first?.name == "Model-X/3" && model.layers.last?.name == "Model-X/60")
        let preset = Presets.spec(named: "deepseek-v3")!
        for (i, spec) in model.layers.enumerated() {
            #expect(spec.method == preset.method && spec.numExperts == 256 && spec.topK == 8 && spec.numExpertGroup == 8
                    && spec.topKGroup == 4 && spec.routedScalingFactor == 2.5 && spec.renormalize && spec.scoring == .sigmoid)
            #expect(spec.gateDType == .bf16, "auto = torch_dtype")
            #expect(spec.bias == CheckpointFixture.bias(i + 3, count: 256), "layer \(i + 3)'s bias, bit for bit")
        }
        #expect(model.biasDType == .fp32)
        let headers = shards.values.reduce(0) { $0 + $1.bytes().count } - 61 * 512 * 256 * 2 - 58 * 1024
        let json = try ["config.json", "model.safetensors.index.json"].reduce(0) {
            $0 + (try FileManager.default.attributesOfItem(atPath: fixture.directory + "/" + $1)[.size] as! Int)
        }
        #expect(model.bytesRead == json + headers + 58 * 1024, "config, index, headers and biases only, not the 16 MiB of weights")
        #expect(model.roundedBiasValues == model.layers.reduce(0) { n, l in n + l.bias!.count { DType.bf16.roundTrip($0) != $0 } })
        #expect(model.roundedBiasValues > 0 && model.summary.contains("bias stored fp32, pre-cast to bf16 once: rounds \(model.roundedBiasValues) of \(58 * 256) values"))
        let exact = try Checkpoint(directory: fixture.directory, gate: .fixed(.fp32))
        #expect(exact.roundedBiasValues == 0 && exact.summary.contains("pre-cast to fp32 once: exact"), "\(exact.summary)")
        #expect(model.bytesRead < 128 << 10, "of a 16.5 MB checkpoint")
        print("deepseek-v3-shaped checkpoint (61 layers, 4 shards): \(model.bytesRead) bytes read in \(String(format: "%.1f", seconds * 1000)) ms")
        let layers = try model.layers.map { try BuiltLayer($0) }
        #expect(layers.count == 58)
    }

    @Test func eachFamilyMapsItsKeys() throws {
        func load(_ config: [String: Any], _ shard: SafetensorsFixture = SafetensorsFixture(), gate: GateDTypeChoice = .auto) throws -> Checkpoint {
            let f = try CheckpointFixture(config: config, shards: ["model.safetensors": shard])
            defer { f.remove() }
            return try Checkpoint(directory: f.directory, name: "m", gate: gate)
        }
        let qwen = try load(["model_type": "qwen3_moe", "num_hidden_layers": 6, "num_experts": 128, "num_experts_per_tok": 8,
                             "norm_topk_prob": true, "decoder_sparse_step": 2, "mlp_only_layers": [3], "torch_dtype": "bfloat16"])
        #expect(qwen.layers.map(\.name) == ["m/1", "m/5"])
        #expect(qwen.layers[0].method == .softmaxTopK && qwen.layers[0].renormalize && qwen.layers[0].bias == nil)
        let mixtral = try load(["model_type": "mixtral", "num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
                                "torch_dtype": "float16"], gate: .fixed(.fp32))
        #expect(mixtral.layers.count == 2 && mixtral.layers[0].gateDType == .fp32 && mixtral.layers[0].topK == 2)
        let oss = try load(["model_type": "gpt_oss", "num_hidden_layers": 3, "num_local_experts": 128, "experts_per_token": 4,
                            "torch_dtype": "bfloat16"])
        #expect(oss.layers.count == 3 && oss.layers[0].method == .topKSoftmax && oss.layers[0].topK == 4)
        let llama = try load(["model_type": "llama4", "text_config": ["num_hidden_layers": 6, "num_local_experts": 128,
                              "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "torch_dtype": "bfloat16"]])
        #expect(llama.layers.map(\.name) == ["m/1", "m/3", "m/5"] && llama.layers[0].method == .llama4Top1)
        let lite = try load(["model_type": "deepseek_v2", "num_hidden_layers": 4, "first_k_dense_replace": 1,
                             "n_routed_experts": 64, "num_experts_per_tok": 6, "topk_method": "greedy", "torch_dtype": "bfloat16"])
        #expect(lite.layers.count == 3 && lite.layers[0].method == .softmaxTopK && !lite.layers[0].renormalize)
        let v2 = try load(["model_type": "deepseek_v2", "num_hidden_layers": 2, "n_routed_experts": 160, "num_experts_per_tok": 6,
                           "n_group": 8, "topk_group": 3, "topk_method": "group_limited_greedy", "routed_scaling_factor": 16.0,
                           "torch_dtype": "bfloat16"])
        #expect(v2.layers[0].method == .groupedTopK && v2.layers[0].routedScalingFactor == 16)
        let minimaxBias = SafetensorsFixture.u16(CheckpointFixture.bias(0, count: 256).map { DType.bf16.narrow($0) })
        var shard = SafetensorsFixture()
        shard.entries = [("model.layers.0.block_sparse_moe.e_score_correction_bias", "BF16", [256], minimaxBias)]
        let minimax = try load(["model_type": "minimax_m2", "num_hidden_layers": 1, "num_local_experts": 256, "num_experts_per_tok": 8,
                                "scoring_func": "sigmoid", "use_routing_bias": true, "torch_dtype": "bfloat16"], shard)
        #expect(minimax.layers[0].method == .biasedTopK && minimax.biasDType == .bf16)
        #expect(minimax.layers[0].bias == minimaxBias.withUnsafeBytes { b in (0..<256).map { DType.bf16.widen(b.load(fromByteOffset: 2 * $0, as: UInt16.self)) } })
    }

    @Test func badCheckpointsAreNamedErrors() throws {
        func error(_ config: [String: Any]?, shards: [String: SafetensorsFixture] = [:], index: [String: String]? = nil,
                   rawConfig: String? = nil) throws -> String {
            let f = try CheckpointFixture(config: config ?? [:], shards: shards, index: index)
            defer { f.remove() }
            let path = f.directory + "/config.json"
            if let rawConfig { try rawConfig.write(toFile: path, atomically: true, encoding: .utf8) }
            if config == nil && rawConfig == nil { try FileManager.default.removeItem(atPath: path) }
            do {
                _ = try Checkpoint(directory: f.directory)
                return "loaded"
            } catch {
                return error.description
            }
        }
        #expect(try error(nil).contains("config.json"))
        #expect(try error(nil, rawConfig: "{\"model_type\": ").contains("invalid JSON"))
        #expect(try error(["model_type": "bert", "num_hidden_layers": 2]).contains("model_type bert is not supported (supported: deepseek_v2"))
        var v3 = CheckpointFixture.deepseekV3(layers: 4)
        v3["n_group"] = 7
        #expect(try error(v3).contains("config.json"), "7 groups do not divide 256 experts")
        v3 = CheckpointFixture.deepseekV3(layers: 4)
        v3["num_hidden_layers"] = 484_444_444_444  // found by the fuzzer: it hung the start
        #expect(try error(v3).contains("num_hidden_layers = 484444444444 is outside 1...10000"))
        v3 = CheckpointFixture.deepseekV3(layers: 4)
        v3.removeValue(forKey: "n_routed_experts")
        #expect(try error(v3).contains("n_routed_experts is missing"))
        v3 = CheckpointFixture.deepseekV3(layers: 4)
        v3["torch_dtype"] = "float8"
        #expect(try error(v3).contains("torch_dtype is missing or not"))
        let bias = "model.layers.3.mlp.gate.e_score_correction_bias"
        #expect(try error(CheckpointFixture.deepseekV3(layers: 4), index: [bias: "model-00009.safetensors"]).contains("model-00009.safetensors"))
        #expect(try error(CheckpointFixture.deepseekV3(layers: 4), index: [:]).contains("weight_map has no \(bias)"))
        #expect(try error(CheckpointFixture.deepseekV3(layers: 4), index: [bias: "../elsewhere.safetensors"]).contains("a shard must be a file in the directory"))
        // config.json a symlink loop, a FIFO (never blocks), a directory.
        for make in [{ (p: String) in symlink(p, p) }, { (p: String) in mkfifo(p, 0o600) }, { (p: String) in mkdir(p, 0o700) }] {
            let f = try CheckpointFixture(config: [:], shards: [:], index: nil)
            defer { f.remove() }
            let path = f.directory + "/config.json"
            try FileManager.default.removeItem(atPath: path)
            #expect(make(path) == 0)
            do { _ = try Checkpoint(directory: f.directory); Issue.record("loaded") } catch {
                #expect(error.description.hasPrefix(path + ": ")
                        && ["symbolic links", "not a regular file"].contains { error.description.contains($0) }, "\(error)")
            }
        }
        let short = SafetensorsFixture(entries: [(bias, "F32", [255], SafetensorsFixture.f32(Array(repeating: 0, count: 255)))])
        #expect(try error(CheckpointFixture.deepseekV3(layers: 4), shards: ["model.safetensors": short]).contains("tensor \(bias): shape [255], expected [256]"))
    }
}
