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

/// Zero copy through the host-emulation library: registration is bookkeeping there (the device
/// address is the host address) but the range checks are the library's own. Serialized: the
/// library's table of registrations is one per process, and the leak check reads it.
@Suite(.serialized, .enabled(if: ROCmArtifacts.exists(ROCmArtifacts.hostEmulation),
                             "\(ROCmArtifacts.hostEmulation) \(ROCmArtifacts.missing)"))
struct ROCmZeroCopyTests {
    /// A client's segment: MAP_SHARED memory that requests' buffers are carved from.
    final class Mapping {
        let base: UnsafeMutableRawPointer
        let bytes: Int
        var used = 0
        init(bytes: Int) {
            self.bytes = bytes
            base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)!
        }
        deinit { munmap(base, bytes) }
        /// `count` bytes (64-aligned) holding `contents`.
        func take(_ contents: [UInt8]) -> UnsafeMutableRawPointer {
            let p = base + used
            contents.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            used += (contents.count + 63) & ~63
            precondition(used <= bytes)
            return p
        }
    }

    /// `route`'s request with every buffer in `mapping`.
    static func routeIn(_ mapping: Mapping, _ layer: BuiltLayer, _ backend: ROCmBackend, _ values: [Float], tokens: Int,
                        dtype: DType, extras: TestExtras) throws -> (Routed, RouteOutcome) {
        let n = tokens * layer.spec.topK
        let input = mapping.take(encode(values, as: dtype))
        let w = mapping.take([UInt8](repeating: 0xee, count: n * 4)).assumingMemoryBound(to: Float.self)
        let ids = mapping.take([UInt8](repeating: 0xee, count: n * 4)).assumingMemoryBound(to: Int32.self)
        var job = RouteJob(try RouteShape(layer: layer, dtype: dtype, tokens: tokens), input: input, weights: w, ids: ids)
        if let mask = extras.mask { job.extras.mask = UnsafePointer(mapping.take(mask).assumingMemoryBound(to: UInt8.self)) }
        if let tokenIds = extras.tokenIds {
            let raw = extras.idBytes == 8 ? tokenIds.withUnsafeBytes { Array($0) }
                : tokenIds.map { Int32($0) }.withUnsafeBytes { Array($0) }
            job.extras.tokenIds = UnsafeRawPointer(mapping.take(raw))
            job.extras.tokenIdBytes = extras.idBytes
        }
        let outcome = try backend.route(job, on: layer)
        return (Routed(weights: Array(UnsafeBufferPointer(start: w, count: n)), ids: Array(UnsafeBufferPointer(start: ids, count: n)),
                       nonFinite: outcome.nonFiniteInputs), outcome)
    }

    @Test func registeredMappingsAreRoutedInPlace() throws {
        let backend = try ROCmBackend.open(library: ROCmArtifacts.hostEmulation)
        #expect(backend.supportsZeroCopy)
        let mapping = Mapping(bytes: 1 << 22)
        #expect(backend.hostMemoryMapped(mapping.base, bytes: mapping.bytes))
        #expect(!backend.hostMemoryMapped(mapping.base + 4096, bytes: 4096), "an overlapping registration is refused")
        var t = backend.transfers
        #expect(t.registrations == 1 && t.registeredBytes == mapping.bytes && t.registrationFailures == 1)
        #expect(backend.libraryRegistrations! == (1, mapping.bytes))
        let tokens = 37
        var zeroCopy: UInt64 = 0, staged: UInt64 = 0
        for name in ["deepseek-v3", "deepseek-v4", "deepseek-v4-hash", "mixtral-8x7b", "gpt-oss-120b"] {
            let layer = try BuiltLayer(Presets.spec(named: name)!)
            let values = InputKind.nonFinite.rows(tokens: tokens, experts: layer.spec.numExperts,
                                                  groups: layer.spec.numExpertGroup, seed: 5)
            for (dtype, mask, idBytes) in [(DType.fp32, nil, Int32(8)), (.bf16, (0..<tokens).map { UInt8($0 % 4 == 1 ? 1 : 0) }, 4),
                                           (.fp16, (0..<tokens).map { UInt8($0 % 3 == 0 ? 1 : 0) }, 8)] {
                let extras = TestExtras.defaults(layer, tokens: tokens, mask: mask, idBytes: idBytes)
                let (expected, cpuOutcome) = try route(layer, CPUBackend(kernel: .generic), values, tokens: tokens, dtype: dtype,
                                                       extras: extras)
                mapping.used = 0
                let (got, outcome) = try Self.routeIn(mapping, layer, backend, values, tokens: tokens, dtype: dtype, extras: extras)
                zeroCopy += 1
                #expect(got == expected && outcome == cpuOutcome, "\(name) \(dtype) in place")
                #expect(backend.transfers.zeroCopyRoutes == zeroCopy && backend.transfers.stagedRoutes == staged)
                // outputs in process memory: the staged path, same answer
                let (stagedGot, _) = try route(layer, backend, values, tokens: tokens, dtype: dtype, extras: extras)
                staged += 1
                #expect(stagedGot == expected, "\(name) \(dtype) staged")
                #expect(backend.transfers.zeroCopyRoutes == zeroCopy && backend.transfers.stagedRoutes == staged)
            }
        }
        #expect(backend.deviceFailures == 0, "\(String(describing: backend.lastDeviceFailure))")
        backend.hostMemoryReleased(mapping.base)
        backend.hostMemoryReleased(mapping.base)  // a second release is a no-op
        t = backend.transfers
        #expect(t.registrations == 0 && t.registeredBytes == 0)
        #expect(backend.libraryRegistrations! == (0, 0), "nothing left registered in the library")
        // released: the same request is staged now
        let layer = try BuiltLayer(Presets.spec(named: "mixtral-8x7b")!)
        mapping.used = 0
        _ = try Self.routeIn(mapping, layer, backend, [Float](repeating: 0.5, count: 8 * 3), tokens: 3, dtype: .fp32, extras: .none)
        #expect(backend.transfers.stagedRoutes == staged + 1 && backend.transfers.zeroCopyRoutes == zeroCopy)
    }

    /// A request whose input lies past the end of a registration is staged (and correct).
    @Test func buffersStraddlingARegistrationAreStaged() throws {
        let backend = try ROCmBackend.open(library: ROCmArtifacts.hostEmulation)
        let mapping = Mapping(bytes: 1 << 16)
        #expect(backend.hostMemoryMapped(mapping.base, bytes: 4096))
        defer { backend.hostMemoryReleased(mapping.base) }
        let layer = try BuiltLayer(Presets.spec(named: "qwen3-moe")!)
        let tokens = 20  // 20 x 128 x 4 bytes of input: past the first 4096
        let values = InputKind.gaussian.rows(tokens: tokens, experts: 128, groups: 1, seed: 9)
        let (expected, _) = try route(layer, CPUBackend(kernel: .generic), values, tokens: tokens, dtype: .fp32)
        let (got, _) = try Self.routeIn(mapping, layer, backend, values, tokens: tokens, dtype: .fp32, extras: .none)
        #expect(got == expected)
        #expect(backend.transfers.zeroCopyRoutes == 0 && backend.transfers.stagedRoutes == 1)
    }

    /// A backend that goes away unregisters what it still holds.
    @Test func aBackendReleasesItsRegistrationsWhenItGoes() throws {
        let mapping = Mapping(bytes: 1 << 16)
        do {
            let backend = try ROCmBackend.open(library: ROCmArtifacts.hostEmulation)
            #expect(backend.hostMemoryMapped(mapping.base, bytes: mapping.bytes))
            #expect(backend.libraryRegistrations! == (1, mapping.bytes))
        }
        let probe = try ROCmBackend.open(library: ROCmArtifacts.hostEmulation)
        #expect(probe.libraryRegistrations! == (0, 0))
    }

    /// The CPU backend registers nothing and reports no transfers.
    @Test func theCPUBackendRegistersNothing() {
        let cpu = CPUBackend()
        var byte: UInt8 = 0
        #expect(!cpu.hostMemoryMapped(&byte, bytes: 1))
        #expect(cpu.transfers == BackendTransfers())
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

    /// --backend cuda: the CUDA build's library, named as such when absent; auto tries ROCm, then
    /// CUDA, then the CPU, and says why each GPU build was skipped.
    @Test func cudaIsAFirstClassChoice() throws {
        let noHIP = "/nonexistent/libmoe_router_hip.so", noCUDA = "/nonexistent/libmoe_router_cuda.so"
        #expect(BackendKind(rawValue: "cuda") == .cuda)
        do {
            _ = try BackendKind.cuda.select(cudaLibrary: noCUDA)
            Issue.record("--backend cuda without a library selected something")
        } catch {
            #expect(error == .libraryNotFound(searched: [noCUDA]))
            #expect(error.description == "CUDA backend library not found (looked at \(noCUDA)); "
                        + "build it with scripts/build-cuda.sh or set MOE_ROUTER_CUDA_LIB")
        }
        let paths = ROCmBackend.searchPaths(for: .cuda)
        #expect(paths.last == "build/cuda/libmoe_router_cuda.so" && paths.allSatisfy { $0.hasSuffix("/libmoe_router_cuda.so") })
        #expect(paths.contains { $0.hasSuffix("/lib/libmoe_router_cuda.so") }, "the install's lib directory")

        let cpu = try BackendKind.auto.select(rocmLibrary: noHIP, cudaLibrary: noCUDA)
        #expect(cpu.backend is CPUBackend)
        #expect(cpu.reason.contains("(auto): ROCm unavailable: ROCm backend library not found (looked at \(noHIP))"))
        #expect(cpu.reason.contains("; CUDA unavailable: CUDA backend library not found (looked at \(noCUDA))"))
        guard ROCmArtifacts.exists(ROCmArtifacts.hostEmulation) else { return }
        // a library in the CUDA slot is taken when the ROCm one is absent
        let second = try BackendKind.auto.select(rocmLibrary: noHIP, cudaLibrary: ROCmArtifacts.hostEmulation)
        #expect(second.backend.name == "rocm-host-emulation")
        #expect(second.reason.contains("(ROCm unavailable: ROCm backend library not found"))
        let cuda = try BackendKind.cuda.select(cudaLibrary: ROCmArtifacts.hostEmulation)
        #expect(cuda.reason.contains("requested with --backend cuda"))
        #expect(cuda.backend.runtime == "host-emulation" && cuda.backend.deviceName == "host-emulation")
        #expect(CPUBackend().runtime == "cpu" && !CPUBackend().deviceName.isEmpty)
    }

    /// The CUDA build's errors speak of CUDA (by the library's file name or runtime).
    @Test func cudaErrorsNameCUDA() {
        let load = BackendError.libraryLoadFailed(path: "/x/libmoe_router_cuda.so", reason: "libcuda.so.1: cannot open")
        #expect(load.description.hasPrefix("no CUDA runtime: cannot load /x/libmoe_router_cuda.so"))
        #expect(load.description.contains("NVIDIA driver"))
        let none = BackendError.noDevice(runtime: "cuda", status: 100, error: "cudaErrorNoDevice: no CUDA-capable device is detected")
        #expect(none.description.hasPrefix("no CUDA device: the cuda runtime reports cudaErrorNoDevice"))
        #expect(BackendError.noDevice(runtime: "hip", status: 100, error: "x").description.hasPrefix("no ROCm device"))
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
