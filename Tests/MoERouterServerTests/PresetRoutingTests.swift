import CMoERouterClient
import CMoERouterWire
import Foundation
import MoERouting
import Testing

/// Every preset through the real daemon from the C client, inline and via shared memory, in
/// every dtype, on both the I/O-thread path and the worker path: bit-identical to CPUBackend.
@Suite(.serialized) struct PresetRoutingTests {
    @Test func everyPresetMatchesTheRoutingLibrary() throws {
        let daemon = try DaemonProcess(arguments: Presets.names.flatMap { ["--preset", $0] })
        var client: OpaquePointer?
        #expect(moe_connect(daemon.endpoint, 10_000, &client) == 0)
        defer { moe_close(client) }
        let backend = CPUBackend()
        var rng = SystemRandomNumberGenerator()
        // Hash-routed presets need token ids (protocol 2): test_v2_schemes.py routes them.
        let scored = Presets.names.filter { Presets.spec(named: $0)?.hashTable == nil }
        for name in scored {
            var info = moe_layer_info()
            #expect(moe_find_layer(client, name, &info) == 0, "layer \(name)")
            let layer = try BuiltLayer(Presets.spec(named: name)!)
            for dtype in DType.allCases {
                for tokens in [1, 37, 700] {
                    let input = Self.randomInput(tokens * layer.spec.numExperts, dtype, &rng)
                    let n = tokens * layer.spec.topK
                    var expectW = [Float](repeating: 0, count: n), expectI = [Int32](repeating: 0, count: n)
                    let outcome = try input.withUnsafeBytes { inp in
                        try expectW.withUnsafeMutableBufferPointer { w in
                            try expectI.withUnsafeMutableBufferPointer { i in
                                try backend.route(layer: layer, input: inp, dtype: dtype, tokens: tokens, weights: w, ids: i)
                            }
                        }
                    }
                    // Inline.
                    var w = [Float](repeating: -1, count: n), ids = [Int32](repeating: -1, count: n)
                    var result = moe_route_result()
                    let st = input.withUnsafeBytes { inp in
                        moe_route(client, info.layer_id, moe_dtype(UInt32(dtype.rawValue)), UInt64(tokens), inp.baseAddress,
                                  inp.count, &w, &ids, n, &result)
                    }
                    #expect(st == 0, "\(name) \(dtype) \(tokens): \(String(cString: moe_last_error(client)))")
                    #expect(w.map(\.bitPattern) == expectW.map(\.bitPattern), "\(name) \(dtype) \(tokens) inline weights")
                    #expect(ids == expectI, "\(name) \(dtype) \(tokens) inline ids")
                    #expect(result.fallback_cast == (outcome.usedFallbackCast ? 1 : 0))
                    // Shared memory: input, weights and ids at distinct aligned offsets.
                    let inBytes = input.count, outBytes = n * 4
                    var seg = moe_segment()
                    #expect(moe_segment_create(client, UInt64(inBytes + 2 * outBytes + 64), &seg) == 0)
                    let base = seg.base!
                    input.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: inBytes) }
                    let wOff = (inBytes + 31) & ~31, iOff = wOff + outBytes
                    let st2 = moe_route_shm(client, info.layer_id, moe_dtype(UInt32(dtype.rawValue)), UInt64(tokens), &seg,
                                            &info, 0, UInt64(wOff), UInt64(iOff), &result)
                    #expect(st2 == 0, "\(name) \(dtype) \(tokens) shm: \(String(cString: moe_last_error(client)))")
                    let shmW = (0..<n).map { base.load(fromByteOffset: wOff + 4 * $0, as: UInt32.self) }
                    let shmI = (0..<n).map { base.load(fromByteOffset: iOff + 4 * $0, as: Int32.self) }
                    #expect(shmW == expectW.map(\.bitPattern), "\(name) \(dtype) \(tokens) shm weights")
                    #expect(shmI == expectI, "\(name) \(dtype) \(tokens) shm ids")
                    #expect(moe_segment_destroy(client, &seg) == 0)
                }
            }
        }
        var stats = moe_stats_resp()
        #expect(moe_stats(client, &stats) == 0)
        // every segment is gone; the client's own channel (its inline routes) holds one
        #expect(stats.registrations == (moe_last_route_path(client) == 1 ? 1 : 0))
        #expect(stats.routes == UInt64(scored.count * 3 * 3 * 2))
        #expect(daemon.terminate() == 0)
    }

    /// Random logits of realistic magnitude, with ties and a few extremes.
    static func randomInput(_ count: Int, _ dtype: DType, _ rng: inout SystemRandomNumberGenerator) -> [UInt8] {
        let values: [Float] = (0..<count).map { i in
            i % 97 == 5 ? 0.5 : Float.random(in: -6...6, using: &rng)
        }
        switch dtype {
        case .fp32: return values.withUnsafeBytes { Array($0) }
        case .bf16, .fp16: return values.map { dtype.narrow($0) }.withUnsafeBytes { Array($0) }
        }
    }
}
