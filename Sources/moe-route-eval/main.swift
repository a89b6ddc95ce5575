import ArgumentParser
import Foundation
import MoERouting

/// Routes the cases of a JSON manifest and writes raw outputs, so that tests in other
/// languages (IntegrationTests/python) can check the Swift implementation against their own references.
///
/// Manifest: `{"cases": [{"id", "spec" | "preset" (+ "gate_dtype"), "dtype", "tokens",
/// "input" (raw little-endian file), "kernel": "avx512" | "generic" | "best"}]}`; a spec holds
/// the snake_case fields of shared/ROUTING.md plus "bias_file" (raw fp32). For each case it
/// writes `<id>.weights.f32` and `<id>.ids.i32` and a line of `results.jsonl`.
@main
struct RouteEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-route-eval",
        abstract: "Route test cases from a manifest through the CPU backend.")

    @Option(help: "Path of the JSON manifest.")
    var manifest: String

    @Option(help: "Directory for outputs (input paths are relative to the manifest's directory).")
    var outDir: String

    mutating func run() throws {
        let base = URL(fileURLWithPath: manifest).deletingLastPathComponent()
        let data = try Data(contentsOf: URL(fileURLWithPath: manifest))
        let cases = try JSONDecoder().decode(Manifest.self, from: data).cases
        var results = ""
        for c in cases {
            let result = evaluate(c, base: base)
            let line = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            results += String(decoding: line, as: UTF8.self) + "\n"
        }
        try results.write(toFile: outDir + "/results.jsonl", atomically: true, encoding: .utf8)
    }

    /// A request the backend refused (a non-finite input under the reject policy, ...).
    static func failure(_ id: String, _ e: RouteError) -> [String: Any] {
        var r: [String: Any] = ["id": id, "ok": false, "kind": "route", "error": e.description]
        if case .nonFiniteInput(let t, let count) = e { r["first_token"] = t; r["count"] = count }
        return r
    }

    func evaluate(_ c: Case, base: URL) -> [String: Any] {
        do {
            let spec = try c.layerSpec(base: base)
            let layer = try BuiltLayer(spec)
            guard let dtype = DType(name: c.dtype) else { throw EvalError("unknown dtype \(c.dtype)") }
            let kernel: CPUBackend.Kernel = switch c.kernel ?? "best" {
            case "generic": .generic
            case "avx512": .avx512
            default: .best
            }
            guard kernel.isSupported else { return ["id": c.id, "ok": false, "kind": "unsupported_kernel", "error": "\(kernel)"] }
            let input = try Data(contentsOf: base.appendingPathComponent(c.input))
            let n = c.tokens * spec.topK
            // Sentinels: a rejected request must leave the outputs exactly as they were.
            let unsetWeight: Float = -7.5, unsetID: Int32 = -7
            var weights = [Float](repeating: unsetWeight, count: n)
            var ids = [Int32](repeating: unsetID, count: n)
            let outcome: RouteOutcome
            do {
                outcome = try input.withUnsafeBytes { inp in
                    try weights.withUnsafeMutableBufferPointer { w in
                        try ids.withUnsafeMutableBufferPointer { i in
                            try CPUBackend(kernel: kernel).route(layer: layer, input: inp, dtype: dtype,
                                                                 tokens: c.tokens, weights: w, ids: i)
                        }
                    }
                }
            } catch let e as RouteError {
                var r = Self.failure(c.id, e)
                r["outputs_untouched"] = weights.allSatisfy { $0 == unsetWeight } && ids.allSatisfy { $0 == unsetID }
                return r
            }
            try weights.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: "\(outDir)/\(c.id).weights.f32")) }
            try ids.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: "\(outDir)/\(c.id).ids.i32")) }
            return ["id": c.id, "ok": true, "nonfinite": outcome.nonFiniteInputs,
                    "fallback": outcome.usedFallbackCast, "kernel": "\(kernel)"]
        } catch let e as LayerSpecError {
            return ["id": c.id, "ok": false, "kind": "layer_spec", "field": e.field, "error": e.description]
        } catch let e as RouteError {
            return Self.failure(c.id, e)
        } catch {
            return ["id": c.id, "ok": false, "kind": "other", "error": "\(error)"]
        }
    }
}

struct EvalError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

struct Manifest: Decodable { let cases: [Case] }

struct Case: Decodable {
    let id: String
    let preset: String?
    let gate_dtype: String?
    let spec: SpecJSON?
    let dtype: String
    let tokens: Int
    let input: String
    let kernel: String?

    func layerSpec(base: URL) throws -> LayerSpec {
        if let preset {
            let gate = try gate_dtype.map { name in
                guard let d = DType(name: name) else { throw EvalError("unknown gate dtype \(name)") }
                return d
            } ?? .bf16
            guard let s = Presets.spec(named: preset, gateDType: gate) else { throw EvalError("unknown preset \(preset)") }
            return s
        }
        guard let spec else { throw EvalError("case \(id) has neither preset nor spec") }
        return try spec.layerSpec(base: base)
    }
}

struct SpecJSON: Decodable {
    let name: String
    let method: String
    let num_experts: Int
    let top_k: Int
    let num_expert_group: Int?
    let topk_group: Int?
    let scoring: String?
    let renormalize: Bool?
    let routed_scaling_factor: Float?
    let gate_dtype: String?
    let nonfinite: String?
    let bias_file: String?

    func layerSpec(base: URL) throws -> LayerSpec {
        guard let m = RoutingMethod(name: method) else { throw EvalError("unknown method \(method)") }
        var bias: [Float]?
        if let bias_file {
            let d = try Data(contentsOf: base.appendingPathComponent(bias_file))
            bias = d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        guard let sc = ScoringFunction(name: scoring ?? "softmax") else { throw EvalError("unknown scoring \(scoring!)") }
        guard let gate = DType(name: gate_dtype ?? "bf16") else { throw EvalError("unknown gate dtype \(gate_dtype!)") }
        guard let nf = NonFinitePolicy(name: nonfinite ?? "clamp") else { throw EvalError("unknown nonfinite \(nonfinite!)") }
        return LayerSpec(
            name: name, method: m, numExperts: num_experts, topK: top_k,
            numExpertGroup: num_expert_group ?? 1, topKGroup: topk_group ?? 1, scoring: sc,
            renormalize: renormalize ?? false, routedScalingFactor: routed_scaling_factor ?? 1,
            gateDType: gate, nonFinite: nf, bias: bias)
    }
}
