import Dispatch
import Glibc
import Synchronization
import Testing
@testable import MoERouting

/// The libraries scripts/build-rocm.sh writes, found from this file so the tests do not depend
/// on the working directory.
enum ROCmArtifacts {
    static let directory: String = {
        var path = "\(#filePath)"
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/build/rocm"
    }()
    static let hostEmulation = directory + "/libmoe_router_hip_host.so"
    static let device = directory + "/libmoe_router_hip.so"
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
    static let missing = "absent: run scripts/build-rocm.sh (.ci/run does) to build it"
}

/// The HIP kernels and the backend's host side, run through `ROCmBackend` on the host-emulation
/// build of rocm/moe_router_hip.cpp: every spec × input family × gate dtype × request dtype
/// against the CPU backend, ids and weights bit for bit.
@Suite(.enabled(if: ROCmArtifacts.exists(ROCmArtifacts.hostEmulation),
                "\(ROCmArtifacts.hostEmulation) \(ROCmArtifacts.missing)"))
struct ROCmHostLogicTests {
    let backend: ROCmBackend

    init() throws {
        backend = try ROCmBackend.open(library: ROCmArtifacts.hostEmulation)
    }

    @Test func opensAsAnEmulatedDevice() {
        #expect(backend.name == "rocm-host-emulation")
        #expect(backend.deviceName == "host-emulation")
        #expect(backend.deviceCount == 1)
    }

    @Test(arguments: allSpecs.map(\.name), InputKind.allCases)
    func kernelsMatchCPUBackend(specName: String, kind: InputKind) throws {
        let base = allSpecs.first { $0.name == specName }!
        // 67 tokens: nine blocks of eight 16-lane teams (the team kernel), the last partly idle.
        let tokens = 67
        let cpu = CPUBackend(kernel: .generic, threads: 1)
        for gate in DType.allCases {
            var spec = base
            spec.gateDType = gate
            let layer = try BuiltLayer(spec)
            try backend.prepare(layer)
            let values = kind.rows(tokens: tokens, experts: spec.numExperts, groups: spec.numExpertGroup,
                                   seed: UInt64(spec.numExperts * 977 + InputKind.allCases.firstIndex(of: kind)!))
            for dtype in DType.allCases {
                let (expected, cpuOutcome) = try route(layer, cpu, values, tokens: tokens, dtype: dtype)
                let (got, outcome) = try route(layer, backend, values, tokens: tokens, dtype: dtype)
                #expect(got == expected, "\(spec.name) gate=\(gate) input=\(dtype)")
                #expect(outcome == cpuOutcome)
            }
            backend.release(layer)
        }
        #expect(backend.deviceFailures == 0, "\(String(describing: backend.lastDeviceFailure))")
    }

    @Test func matchesTheScalarReference() throws {
        for spec in allSpecs where spec.numExperts <= 256 {
            let layer = try BuiltLayer(spec)
            let values = InputKind.gaussian.rows(tokens: 5, experts: spec.numExperts, groups: spec.numExpertGroup, seed: 11)
            for dtype in DType.allCases {
                let (got, _) = try route(layer, backend, values, tokens: 5, dtype: dtype)
                #expect(got == reference(layer, values, tokens: 5, dtype: dtype), "\(spec.name) input=\(dtype)")
            }
        }
    }

    /// Issue 17's schemes (deepseek-v4 presets, hash-routed layers, scoring none, renorm_epsilon)
    /// with padding masks and int32/int64 token ids: the team, hash and thread-per-token kernels
    /// against the CPU backend, outcome included.
    @Test(arguments: addedSchemeSpecs.map(\.name) + ["ssp-e512-g128-eps"])
    func addedSchemesMatchCPUBackend(specName: String) throws {
        let spec = specName == "ssp-e512-g128-eps"
            // more groups than a team keeps: the thread-per-token kernel
            ? LayerSpec(name: specName, method: .biasedGroupedTopK, numExperts: 512, topK: 8, numExpertGroup: 128,
                        topKGroup: 8, scoring: .sqrtSoftplus, renormalize: true, routedScalingFactor: 2.5,
                        bias: Presets.syntheticBias(count: 512), renormEpsilon: 1e-6)
            : addedSchemeSpecs.first { $0.name == specName }!
        let layer = try BuiltLayer(spec)
        let tokens = 41
        let values = sprinkledRows(tokens: tokens, experts: spec.numExperts, seed: UInt64(spec.numExperts) &* 31)
        let mask = (0..<tokens).map { UInt8($0 % 6 == 4 ? 1 : 0) }
        let cpu = CPUBackend(kernel: .generic, threads: 1)
        for dtype in DType.allCases {
            for extras in [TestExtras.defaults(layer, tokens: tokens), TestExtras.defaults(layer, tokens: tokens, mask: mask, idBytes: 8),
                           TestExtras.defaults(layer, tokens: tokens, mask: mask, idBytes: 4)] {
                let (expected, cpuOutcome) = try route(layer, cpu, values, tokens: tokens, dtype: dtype, extras: extras)
                let (got, outcome) = try route(layer, backend, values, tokens: tokens, dtype: dtype, extras: extras)
                #expect(got == expected, "\(specName) input=\(dtype) mask=\(extras.mask != nil) ids=\(extras.idBytes)")
                #expect(outcome == cpuOutcome)
            }
        }
        #expect(backend.deviceFailures == 0, "\(String(describing: backend.lastDeviceFailure))")
    }

    /// The post-pass after the device: the layer's load counters and its placement, as the CPU
    /// backend applies them.
    @Test func placementAndLoadCountingAfterTheDevice() throws {
        for name in ["deepseek-v4", "deepseek-v4-hash"] {
            var spec = Presets.spec(named: name, gateDType: .fp32)!
            spec.placement = try PlaceAndCountTests.placement(numExperts: spec.numExperts)
            let onDevice = try BuiltLayer(spec), onCPU = try BuiltLayer(spec)
            let tokens = 70
            let values = InputKind.gaussian.rows(tokens: tokens, experts: spec.numExperts, groups: 1, seed: 6)
            let extras = TestExtras.defaults(onDevice, tokens: tokens, mask: (0..<tokens).map { UInt8($0 % 9 == 0 ? 1 : 0) })
            let (got, outcome) = try route(onDevice, backend, values, tokens: tokens, dtype: .fp32, extras: extras)
            let (expected, cpuOutcome) = try route(onCPU, CPUBackend(), values, tokens: tokens, dtype: .fp32, extras: extras)
            #expect(got == expected && outcome == cpuOutcome && outcome.placementEpoch == 1 && outcome.maskedTokens == 8)
            #expect(onDevice.expertLoad.totals() == onCPU.expertLoad.totals())
            #expect(onDevice.expertLoad.totals().reduce(0, +) == UInt64((tokens - 8) * spec.topK))
        }
    }

    @Test func fallbackIsCountedAndMatchedPathCopiesNothing() throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: .bf16)!)
        let values = InputKind.wide.rows(tokens: 8, experts: 256, groups: 8, seed: 4)
        let (_, matched) = try route(layer, backend, values, tokens: 8, dtype: .bf16)
        #expect(!matched.usedFallbackCast)
        #expect(layer.fallbackCasts == 0 && layer.biasCopies == 0)
        let (_, mismatched) = try route(layer, backend, values, tokens: 8, dtype: .fp32)
        #expect(mismatched.usedFallbackCast)
        #expect(layer.fallbackCasts == 1)
    }

    @Test func rejectPolicyNamesFirstTokenAndWritesNothing() throws {
        var spec = Presets.spec(named: "kimi-k2", gateDType: .fp32)!
        spec.nonFinite = .reject
        let layer = try BuiltLayer(spec)
        var values = InputKind.gaussian.rows(tokens: 4, experts: 384, groups: 1, seed: 2)
        values[2 * 384 + 5] = .nan
        values[3 * 384] = .infinity
        var w = [Float](repeating: -7, count: 4 * 8)
        var ids = [Int32](repeating: -7, count: 4 * 8)
        let bytes = encode(values, as: .fp32)
        #expect(throws: RouteError.nonFiniteInput(firstToken: 2, count: 2)) {
            try bytes.withUnsafeBytes { input in
                try w.withUnsafeMutableBufferPointer { wp in
                    try ids.withUnsafeMutableBufferPointer { ip in
                        try backend.route(layer: layer, input: input, dtype: .fp32, tokens: 4, weights: wp, ids: ip)
                    }
                }
            }
        }
        #expect(w.allSatisfy { $0 == -7 } && ids.allSatisfy { $0 == -7 })
    }

    @Test func emptyBatchAndBadShapes() throws {
        let layer = try BuiltLayer(Presets.spec(named: "qwen3-moe", gateDType: .bf16)!)
        let (got, outcome) = try route(layer, backend, [], tokens: 0, dtype: .bf16)
        #expect(got.ids.isEmpty && outcome.nonFiniteInputs == 0)
        #expect(throws: RouteError.self) {
            try route(layer, backend, [Float](repeating: 0, count: 100), tokens: 1, dtype: .bf16)
        }
    }

    @Test func deviceFailureIsAnsweredByCPUAndCounted() throws {
        typealias FailNext = @convention(c) (Int32) -> Void
        let handle = dlopen(ROCmArtifacts.hostEmulation, RTLD_NOW | RTLD_NOLOAD)
        let symbol = try #require(dlsym(handle, "mrh_emulation_fail_next"))
        let layer = try BuiltLayer(Presets.spec(named: "glm-4.5", gateDType: .bf16)!)
        let values = InputKind.gaussian.rows(tokens: 6, experts: 160, groups: 1, seed: 8)
        let (expected, _) = try route(layer, CPUBackend(kernel: .generic), values, tokens: 6, dtype: .fp16)
        unsafeBitCast(symbol, to: FailNext.self)(2) // hipErrorOutOfMemory, on this thread's next route
        let (got, outcome) = try route(layer, backend, values, tokens: 6, dtype: .fp16)
        #expect(got == expected)
        #expect(outcome.usedFallbackCast && layer.fallbackCasts == 2) // the CPU run above, then this one
        #expect(backend.deviceFailures == 1)
        guard case .deviceFailure("route", 2, let text) = backend.lastDeviceFailure else {
            Issue.record("lastDeviceFailure: \(String(describing: backend.lastDeviceFailure))")
            return
        }
        #expect(text.contains("hipErrorOutOfMemory"))
        _ = try route(layer, backend, values, tokens: 6, dtype: .bf16)
        #expect(backend.deviceFailures == 1)

        // the CPU answer of a failed request carries the extras too (mrk_route_ex)
        let hash = try BuiltLayer(Presets.spec(named: "deepseek-v4-hash", gateDType: .fp32)!)
        let rows = InputKind.gaussian.rows(tokens: 9, experts: 384, groups: 1, seed: 5)
        let extras = TestExtras.defaults(hash, tokens: 9, mask: [0, 1, 0, 0, 0, 0, 0, 1, 0], idBytes: 8)
        let (hashExpected, hashOutcome) = try route(hash, CPUBackend(kernel: .generic), rows, tokens: 9, dtype: .fp32, extras: extras)
        unsafeBitCast(symbol, to: FailNext.self)(2)
        let (hashGot, outcome2) = try route(hash, backend, rows, tokens: 9, dtype: .fp32, extras: extras)
        #expect(hashGot == hashExpected && outcome2 == hashOutcome)
        #expect(backend.deviceFailures == 2)
    }

    @Test func concurrentCallersEachGetAStream() throws {
        let layer = try BuiltLayer(Presets.spec(named: "deepseek-v3", gateDType: .bf16)!)
        let tokens = 33
        let inputs = (0..<8).map { InputKind.gaussian.rows(tokens: tokens, experts: 256, groups: 8, seed: UInt64(100 + $0)) }
        let expected = try inputs.map { try route(layer, CPUBackend(kernel: .generic), $0, tokens: tokens, dtype: .bf16).0 }
        let results = Mutex<[Int: Routed]>([:])
        let shared = UnsafeSendable((backend, layer, inputs))
        DispatchQueue.concurrentPerform(iterations: 32) { i in
            let (backend, layer, inputs) = shared.value
            let got = try! route(layer, backend, inputs[i % 8], tokens: tokens, dtype: .bf16).0
            results.withLock { $0[i] = got }
        }
        for (i, got) in results.withLock({ $0 }) { #expect(got == expected[i % 8]) }
    }
}

/// What a machine without an AMD GPU sees: the clear error, and `auto` falling back to the CPU.
@Suite struct ROCmNoDeviceTests {
    @Test func missingLibraryIsNamed() {
        let path = "/nonexistent/libmoe_router_hip.so"
        #expect(throws: BackendError.libraryNotFound(searched: [path])) {
            try ROCmBackend.open(library: path)
        }
        let message = BackendError.libraryNotFound(searched: [path]).description
        #expect(message.contains(path) && message.contains("scripts/build-rocm.sh"))
    }

    /// The device library on this machine: hipErrorNoDevice when the HIP runtime is installed,
    /// a load failure naming the runtime when it is not. On a machine with an AMD GPU it opens,
    /// and the kernels must then match the CPU backend on the real device.
    @Test(.enabled(if: ROCmArtifacts.exists(ROCmArtifacts.device),
                   "\(ROCmArtifacts.device) \(ROCmArtifacts.missing)"))
    func deviceLibraryReportsNoDeviceClearly() throws {
        do {
            let backend = try ROCmBackend.open(library: ROCmArtifacts.device)
            try expectMatchesCPU(backend)
        } catch let error as BackendError {
            switch error {
            case .noDevice(let runtime, let status, let text):
                #expect(runtime == "hip")
                #expect(status == 100, "expected hipErrorNoDevice, got \(text)")
                #expect(error.description.hasPrefix("no ROCm device: "))
                #expect(error.description.contains("hipErrorNoDevice"))
            case .libraryLoadFailed:
                #expect(error.description.hasPrefix("no ROCm runtime: "))
            default:
                Issue.record("unexpected error: \(error)")
            }
            print("ROCm device library on this machine: \(error)")
        }
    }

    /// A machine without the HIP runtime: the device library with its libamdhip64.so.5
    /// dependency renamed (same length) so that dlopen cannot resolve it.
    @Test(.enabled(if: ROCmArtifacts.exists(ROCmArtifacts.device),
                   "\(ROCmArtifacts.device) \(ROCmArtifacts.missing)"))
    func missingRuntimeIsNamed() throws {
        var bytes = try #require(readFile(ROCmArtifacts.device))
        let from = Array("libamdhip64.so.5".utf8), to = Array("libamdhipXX.so.5".utf8)
        var replaced = 0
        var i = 0
        while i + from.count <= bytes.count {
            if bytes[i] == from[0] && Array(bytes[i..<i + from.count]) == from {
                bytes.replaceSubrange(i..<i + from.count, with: to)
                replaced += 1
            }
            i += 1
        }
        try #require(replaced > 0, "libamdhip64.so.5 not named in \(ROCmArtifacts.device)")
        let path = "/tmp/moe-router-test-\(getpid())-no-runtime.so"
        defer { unlink(path) }
        try #require(writeFile(path, bytes))
        do {
            _ = try ROCmBackend.open(library: path)
            Issue.record("opened a library whose runtime is missing")
        } catch {
            guard case .libraryLoadFailed(_, let reason) = error else {
                Issue.record("unexpected error: \(error)")
                return
            }
            #expect(reason.contains("libamdhipXX.so.5"))
            #expect(error.description.hasPrefix("no ROCm runtime: cannot load \(path)"))
            print(error)
        }
    }

    @Test func choiceResolvesWithReasons() throws {
        let cpu = try BackendKind.cpu.select()
        #expect(cpu.backend is CPUBackend && cpu.reason.contains("--backend cpu"))

        let absent = "/nonexistent/libmoe_router_hip.so"
        let auto = try BackendKind.auto.select(rocmLibrary: absent)
        #expect(auto.backend is CPUBackend)
        #expect(auto.reason.contains("(auto): ROCm unavailable: ROCm backend library not found"))
        #expect(throws: BackendError.self) { try BackendKind.rocm.select(rocmLibrary: absent) }
        #expect(BackendKind(rawValue: "auto") == .auto && BackendKind(rawValue: "gpu") == nil)
    }

    @Test(.enabled(if: ROCmArtifacts.exists(ROCmArtifacts.device),
                   "\(ROCmArtifacts.device) \(ROCmArtifacts.missing)"))
    func autoPicksCPUWithoutADevice() throws {
        let auto = try BackendKind.auto.select(rocmLibrary: ROCmArtifacts.device)
        if auto.backend is ROCmBackend { return } // this machine has a device
        #expect(auto.reason.contains("ROCm unavailable: no ROCm"))
        print(auto.reason)
    }

    @Test(.enabled(if: ROCmArtifacts.exists(ROCmArtifacts.hostEmulation),
                   "\(ROCmArtifacts.hostEmulation) \(ROCmArtifacts.missing)"))
    func autoPicksAPresentDevice() throws {
        let auto = try BackendKind.auto.select(rocmLibrary: ROCmArtifacts.hostEmulation)
        #expect(auto.backend.name == "rocm-host-emulation")
        #expect(auto.reason.contains("device 0 of 1 (host-emulation)"))
    }

    private func expectMatchesCPU(_ backend: ROCmBackend) throws {
        for spec in allSpecs {
            let layer = try BuiltLayer(spec)
            let values = InputKind.gaussian.rows(tokens: 257, experts: spec.numExperts, groups: spec.numExpertGroup, seed: 3)
            for dtype in DType.allCases {
                let (expected, _) = try route(layer, CPUBackend(), values, tokens: 257, dtype: dtype)
                let (got, _) = try route(layer, backend, values, tokens: 257, dtype: dtype)
                #expect(got == expected, "\(spec.name) input=\(dtype) on \(backend.deviceName)")
            }
        }
        #expect(backend.deviceFailures == 0, "\(String(describing: backend.lastDeviceFailure))")
    }
}

func readFile(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return out
}

func writeFile(_ path: String, _ bytes: [UInt8]) -> Bool {
    guard let f = fopen(path, "wb") else { return false }
    defer { fclose(f) }
    return fwrite(bytes, 1, bytes.count, f) == bytes.count
}
