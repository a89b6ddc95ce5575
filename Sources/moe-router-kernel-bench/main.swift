import ArgumentParser
import MoERouting

#if canImport(Glibc)
import Glibc
#endif

/// Kernel throughput per preset × dtype × batch, on one thread and on all cores, plus the
/// matched (pre-cast) path against the fallback cast for small batches.
@main
struct KernelBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-router-kernel-bench",
        abstract: "Measure the CPU routing kernels (ns/token, Mtok/s).")

    @Option(help: "Comma-separated presets (default: all).")
    var presets: String = Presets.names.joined(separator: ",")

    @Option(help: "Comma-separated input dtypes; each row builds the layer with the same gate dtype.")
    var dtypes: String = "fp32,bf16,fp16"

    @Option(help: "Comma-separated batch sizes in tokens.")
    var batches: String = "1,64,4096,16384"

    @Option(help: "Kernel: best, avx512 or generic.")
    var kernel: String = "best"

    @Option(help: "Minimum measured time per figure, seconds.")
    var minTime: Double = 0.15

    @Flag(help: "Skip the matched-vs-fallback section.")
    var noFallback = false

    mutating func run() throws {
        let kernel = try chosenKernel()
        let cores = CPUBackend(kernel: kernel).threads
        let single = CPUBackend(kernel: kernel, threads: 1)
        let all = CPUBackend(kernel: kernel, threads: cores)
        let batchList = batches.split(separator: ",").compactMap { Int($0) }
        print("kernel \(kernel), \(cores) cores, min \(minTime)s per figure")
        print(pad("preset", 18) + pad("dtype", 6) + pad("tokens", 8)
              + pad("1 thread ns/tok", 17) + pad("Mtok/s", 9)
              + pad("\(cores) threads ns/tok", 18) + pad("Mtok/s", 9) + "speedup")
        for name in presets.split(separator: ",").map(String.init) {
            for dtypeName in dtypes.split(separator: ",") {
                guard let dtype = DType(name: String(dtypeName)),
                      let spec = Presets.spec(named: name, gateDType: dtype) else {
                    throw ValidationError("unknown preset or dtype: \(name) \(dtypeName)")
                }
                let layer = try BuiltLayer(spec)
                for tokens in batchList {
                    let bench = Workload(layer: layer, dtype: dtype, tokens: tokens)
                    let one = bench.nsPerToken(single, minTime: minTime)
                    let many = bench.nsPerToken(all, minTime: minTime)
                    print(pad(name, 18) + pad("\(dtype)", 6) + pad("\(tokens)", 8)
                          + pad(fmt(one, 1), 17) + pad(fmt(1e3 / one, 2), 9)
                          + pad(fmt(many, 1), 18) + pad(fmt(1e3 / many, 2), 9) + fmt(one / many, 2) + "x")
                }
            }
        }
        if !noFallback { try fallbackSection(single) }
    }

    /// The effect the pre-cast exists for: same input dtype, layer built in it (matched) or in
    /// fp32 (every request converts the bias).
    func fallbackSection(_ backend: CPUBackend) throws {
        print("\nmatched path vs fallback cast (deepseek-v3, bf16 input, 1 thread)")
        print(pad("tokens", 8) + pad("matched ns/req", 16) + pad("fallback ns/req", 17) + "fallback/matched")
        let matched = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: .bf16)!)
        let mismatched = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: .fp32)!)
        for tokens in [1, 64] {
            let m = Workload(layer: matched, dtype: .bf16, tokens: tokens).nsPerToken(backend, minTime: minTime) * Double(tokens)
            let f = Workload(layer: mismatched, dtype: .bf16, tokens: tokens).nsPerToken(backend, minTime: minTime) * Double(tokens)
            print(pad("\(tokens)", 8) + pad(fmt(m, 1), 16) + pad(fmt(f, 1), 17) + fmt(f / m, 3) + "x")
        }
        print("fallback casts counted on the fp32 layer: \(mismatched.fallbackCasts); on the bf16 layer: \(matched.fallbackCasts)")
    }

    func chosenKernel() throws -> CPUBackend.Kernel {
        switch kernel {
        case "best": return .best
        case "avx512", "generic":
            let k: CPUBackend.Kernel = kernel == "avx512" ? .avx512 : .generic
            guard k.isSupported else { throw ValidationError("kernel \(kernel) is not supported on this CPU") }
            return k
        default: throw ValidationError("unknown kernel \(kernel)")
        }
    }
}

/// One batch of random gaussian logits with its output buffers.
struct Workload {
    let layer: BuiltLayer
    let dtype: DType
    let tokens: Int
    let input: [UInt8]

    init(layer: BuiltLayer, dtype: DType, tokens: Int) {
        self.layer = layer
        self.dtype = dtype
        self.tokens = tokens
        var state: UInt64 = 0x1234_5678
        let values: [Float] = (0..<tokens * layer.spec.numExperts).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            // sum of 4 uniforms: roughly gaussian, scale ~1
            var s: Float = 0
            for shift in [0, 16, 32, 48] as [UInt64] { s += Float((state >> shift) & 0xffff) / 65536 }
            return (s - 2) * 1.7
        }
        switch dtype {
        case .fp32: input = values.withUnsafeBytes { Array($0) }
        default: input = values.map { dtype.narrow($0) }.withUnsafeBytes { Array($0) }
        }
    }

    /// Median over 5 rounds of (elapsed / tokens routed), each round at least minTime/5.
    func nsPerToken(_ backend: CPUBackend, minTime: Double) -> Double {
        let n = tokens * layer.spec.topK
        var weights = [Float](repeating: 0, count: n)
        var ids = [Int32](repeating: 0, count: n)
        var rounds: [Double] = []
        input.withUnsafeBytes { inp in
            weights.withUnsafeMutableBufferPointer { w in
                ids.withUnsafeMutableBufferPointer { i in
                    func once() { _ = try! backend.route(layer: layer, input: inp, dtype: dtype, tokens: tokens, weights: w, ids: i) }
                    once()
                    for _ in 0..<5 {
                        var iterations = 0
                        let start = now()
                        var elapsed = 0.0
                        repeat {
                            once()
                            iterations += 1
                            elapsed = now() - start
                        } while elapsed < minTime / 5
                        rounds.append(elapsed * 1e9 / Double(iterations * tokens))
                    }
                }
            }
        }
        return rounds.sorted()[rounds.count / 2]
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }

func fmt(_ v: Double, _ digits: Int) -> String {
    let p = pow(10.0, Double(digits))
    let r = (v * p).rounded() / p
    var s = "\(r)"
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
    }
    return s
}
