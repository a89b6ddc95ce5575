import CMoERouterWire
import Glibc
@testable import MoERouterServer
import MoERouting
import Testing

/// Protocol version 2 through the request core: HELLO's limits, ROUTE's token ids and masks,
/// SET_PLACEMENT and EXPERT_LOAD, and every refusal a client can provoke with them.
@Suite struct ProtocolV2Tests {
    func answer(_ core: RequestCore, _ frames: [[UInt8]], uid: UInt32 = getuid()) -> Reply {
        let incoming = TestRequest(frames, uid: uid)
        switch core.decode(incoming, from: incoming) {
        case .refused(let reply): return reply
        case .request(let r): return core.answer(r)
        }
    }

    static func ref(_ length: Int) -> moe_buffer_ref { WireRequest.inlineRef(length) }

    /// A version-2 ROUTE with inline buffers; token ids and mask only when given.
    static func route(layer: UInt32 = 0, tokens: Int, experts: Int, topK: Int, logits: [Float], tokenIds: [UInt8]? = nil,
                      idBytes: UInt32 = 4, mask: [UInt8]? = nil) -> [[UInt8]] {
        var q = moe_route_req_v2()
        q.base.layer_id = layer
        q.base.dtype = DType.fp32.rawValue
        q.base.tokens = UInt64(tokens)
        q.base.input = ref(tokens * experts * 4)
        q.base.weights = ref(tokens * topK * 4)
        q.base.ids = ref(tokens * topK * 4)
        q.token_ids.kind = MOE_BUF_NONE.rawValue
        q.mask.kind = MOE_BUF_NONE.rawValue
        var frames = [WireRequest.frame(.route, q, version: 2), WireRequest.logits(logits)]
        if let tokenIds {
            q.token_ids = ref(tokenIds.count)
            q.token_id_bytes = idBytes
            frames.append(tokenIds)
        }
        if let mask {
            q.mask = ref(mask.count)
            frames.append(mask)
        }
        frames[0] = WireRequest.frame(.route, q, version: 2)
        return frames
    }

    static func logits(_ tokens: Int, _ experts: Int, seed: Int = 1) -> [Float] {
        (0..<tokens * experts).map { Float((($0 + seed) * 7919) % 1000) / 250 - 2 }
    }

    func routeBody(_ r: Reply) -> moe_route_resp_v2? {
        guard case .route(let result) = r.body, result.version == 2 else { return nil }
        return result.wireV2
    }

    func outputs(_ r: Reply) -> (weights: [Float], ids: [Int32]) {
        (r.frames[0].bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) },
         r.frames[1].bytes.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) })
    }

    @Test func helloNegotiatesAndReportsTheLimits() throws {
        let (core, _) = try makeCore { $0.maxRegistrationsPerUID = 77 }
        var hello = moe_hello_req()
        hello.min_version = 1
        hello.max_version = 2
        let h = answer(core, [WireRequest.frame(.hello, hello)])
        guard case .hello(let resp, let ext?) = h.body else { Issue.record("no version-2 hello"); return }
        #expect(resp.protocol_version == 2 && resp.min_protocol_version == 1)
        #expect(ext.max_registrations_per_uid == 77 && ext.max_segment_bytes == 1 << 34)
        #expect(ext.heartbeat_ivl_ms == 1000 && ext.heartbeat_timeout_ms == 3000 && ext.control_allowed == 1)
        #expect(ext.features == UInt32(MOE_FEATURE_MASK | MOE_FEATURE_TOKEN_IDS | MOE_FEATURE_PLACEMENT | MOE_FEATURE_EXPERT_LOAD
                                       | MOE_FEATURE_CHANNELS))
        h.body.withBytes { #expect($0.count == 120 + 56) }
        #expect(h.version == 1, "HELLO is answered in its header's version")
        let other = answer(core, [WireRequest.frame(.hello, hello)], uid: 54_321)
        guard case .hello(_, let e2?) = other.body else { Issue.record("no hello"); return }
        #expect(e2.control_allowed == 0)
    }

    @Test func maskedRowsAreSkippedAndTheRestMatchAnUnmaskedRoute() throws {
        let (core, state) = try makeCore()
        let e = 256, k = 8, tokens = 5
        let x = Self.logits(tokens, e)
        let plain = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x))
        let masked = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x, mask: [0, 1, 0, 1, 1]))
        #expect(plain.status == .ok && masked.status == .ok && masked.version == 2)
        #expect(routeBody(masked)?.masked_tokens == 3 && routeBody(plain)?.masked_tokens == 0)
        let (pw, pi) = outputs(plain), (mw, mi) = outputs(masked)
        for t in 0..<tokens {
            let row = t * k..<(t + 1) * k
            if [1, 3, 4].contains(t) {
                #expect(mi[row].allSatisfy { $0 == -1 } && mw[row].allSatisfy { $0 == 0 })
            } else {
                #expect(Array(mi[row]) == Array(pi[row]) && Array(mw[row]) == Array(pw[row]))
            }
        }
        let bad = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x, mask: [0, 0, 2, 0, 0]))
        #expect(bad.status == .badMask && routeBody(bad)?.first_bad_token == 2 && bad.message.contains("mask[2] = 2"))
        let short = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x, mask: [0, 0]))
        #expect(short.status == .sizeMismatch && short.message.contains("mask.length = 2"))
        // the load counters saw only the unmasked rows: 5 + 2 tokens of k experts
        #expect(state.layers.current.layers[0].expertLoad.totals().reduce(0, +) == UInt64((5 + 2) * k))
    }

    @Test func hashLayersTakeTheirExpertsFromTheTable() throws {
        let (core, state) = try makeCore(["deepseek-v4-hash"])
        let layer = state.layers.current.layers[0]
        let table = try #require(layer.spec.hashTable)
        let e = 384, k = 6, tokens = 3
        let x = Self.logits(tokens, e)
        let tids: [Int64] = [0, 129_279, 4242]
        for width in [4, 8] {
            let bytes = width == 8 ? tids.withUnsafeBytes(Array.init) : tids.map(Int32.init).withUnsafeBytes(Array.init)
            let r = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x, tokenIds: bytes, idBytes: UInt32(width)))
            #expect(r.status == .ok && routeBody(r)?.hash_routed == 1)
            let (w, ids) = outputs(r)
            for (t, tid) in tids.enumerated() {
                #expect(Array(ids[t * k..<(t + 1) * k]) == Array(table.ids[Int(tid) * k..<(Int(tid) + 1) * k]))
                let sum = w[t * k..<(t + 1) * k].reduce(0, +)
                #expect(abs(sum - 2.5) < 1e-5, "renormalized x rsf")
            }
        }
        let past = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x,
                                           tokenIds: [Int32(1), 129_280, 2].withUnsafeBytes(Array.init)))
        #expect(past.status == .tokenID && routeBody(past)?.first_bad_token == 1 && past.message.contains("129280"))
        let negative = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x,
                                               tokenIds: [Int64(1), 2, -7].withUnsafeBytes(Array.init), idBytes: 8))
        #expect(negative.status == .tokenID && routeBody(negative)?.first_bad_token == 2)
        // a masked row's token id is never read
        let maskedBad = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x,
                                                tokenIds: [Int32(1), -1, 2].withUnsafeBytes(Array.init), mask: [0, 1, 0]))
        #expect(maskedBad.status == .ok)
        let missing = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x))
        #expect(missing.status == .tokenID && missing.message.contains("token_ids"))
        let v1 = answer(core, WireRequest.inlineRoute(tokens: 1, experts: e, topK: k))
        #expect(v1.status == .tokenID && v1.message.contains("protocol version 2") && v1.version == 1)
        let width3 = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x, tokenIds: [UInt8](repeating: 0, count: 9), idBytes: 3))
        #expect(width3.status == .badField && width3.message.contains("token_id_bytes = 3"))
        let wrongLength = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x, tokenIds: [UInt8](repeating: 0, count: 8)))
        #expect(wrongLength.status == .sizeMismatch && wrongLength.message.contains("token_ids.length = 8"))
    }

    @Test func absentBuffersMustBeAllZero() throws {
        let (core, _) = try makeCore()
        var frames = Self.route(tokens: 1, experts: 256, topK: 8, logits: Self.logits(1, 256))
        var q = frames[0].withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 32, as: moe_route_req_v2.self) }
        q.mask.handle = 9
        frames[0] = WireRequest.frame(.route, q, version: 2)
        let r = answer(core, frames)
        #expect(r.status == .badField && r.message.contains("mask is absent"))
        q.mask.handle = 0
        q.mask.kind = 7
        frames[0] = WireRequest.frame(.route, q, version: 2)
        #expect(answer(core, frames).status == .badField)
        q.mask.kind = MOE_BUF_NONE.rawValue
        q.base.input.kind = MOE_BUF_NONE.rawValue
        frames[0] = WireRequest.frame(.route, q, version: 2)
        let noInput = answer(core, frames)
        #expect(noInput.status == .badField && noInput.message.contains("input.kind = 2"))
        // a version-1 body under a version-2 header
        var v1 = WireRequest.inlineRoute(tokens: 1, experts: 256, topK: 8)
        v1[0].withUnsafeMutableBytes { $0.storeBytes(of: UInt16(2), toByteOffset: 4, as: UInt16.self) }
        let r1 = answer(core, v1)
        #expect(r1.status == .malformed && r1.message.contains("192-byte body"))
    }

    static func placement(_ layer: UInt32, physical: UInt32, counts: [Int32], ids: [Int32], version: UInt16 = 2) -> [[UInt8]] {
        var q = moe_placement_req()
        q.layer_id = layer
        q.num_physical = physical
        q.num_logical = UInt32(counts.count)
        q.total_replicas = UInt32(ids.count)
        let head = WireRequest.frame(.setPlacement, q, version: version)
        return counts.isEmpty ? [head] : [head, (counts + ids).withUnsafeBytes(Array.init)]
    }

    @Test func placementsMapIdsPerTokenAndSwapWhole() throws {
        let (core, state) = try makeCore(["mixtral-8x7b"])
        let e = 8, k = 2, tokens = 6
        // expert 0 has three replicas, expert 1 two, the others one each: 13 physical experts
        let counts: [Int32] = [3, 2, 1, 1, 1, 1, 1, 1]
        let ids: [Int32] = [10, 11, 12, 8, 9, 0, 1, 2, 3, 4, 5]
        let set = answer(core, Self.placement(0, physical: 13, counts: counts, ids: ids))
        guard case .placement(let p) = set.body else { Issue.record("no placement body: \(set.message)"); return }
        #expect(set.status == .ok && p.epoch == 1 && p.num_physical == 13 && p.total_replicas == 11)
        let x = Self.logits(tokens, e, seed: 3)
        let routed = answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x))
        #expect(routeBody(routed)?.placement_epoch == 1)
        let (_, physical) = outputs(routed)
        // the logical answer, from the backend
        _ = answer(core, Self.placement(0, physical: 0, counts: [], ids: []))
        let logical = outputs(answer(core, Self.route(tokens: tokens, experts: e, topK: k, logits: x))).ids
        let offsets = counts.reduce(into: [0]) { $0.append($0.last! + Int($1)) }
        for t in 0..<tokens {
            for j in 0..<k {
                let le = Int(logical[t * k + j])
                let reps = ids[offsets[le]..<offsets[le + 1]]
                #expect(physical[t * k + j] == reps[reps.startIndex + t % reps.count], "token \(t) column \(j)")
            }
        }
        #expect(state.layers.current.layers[0].placements.snapshot().epoch == 0, "no placement: logical ids, epoch 0")
        #expect(state.layers.current.layers[0].placements.changes == 2)
        // invalid placements leave the layer as it was
        let cases: [([Int32], [Int32], UInt32, String)] = [
            ([3, 2, 1, 1, 1, 1, 1, 1], [10, 11, 12, 8, 9, 0, 1, 2, 3, 4, 13], 13, "physical id 13 is not in 0..<13"),
            ([3, 2, 1, 1, 1, 1, 1, 1], [10, 11, 12, 8, 9, 0, 1, 2, 3, 4, 4], 13, "physical id 4 is given to logical experts 6 and 7"),
            ([3, 2, 1, 1, 1, 1, 1, 0], [10, 11, 12, 8, 9, 0, 1, 2, 3, 4], 13, "logical expert 7 has no replica"),
            ([3, 2, 1, 1, 1, 1, 1, 1], [10, 11, 12, 8, 9, 0, 1, 2, 3, 4], 13, "add up to 11 but 10"),
            ([1, 1, 1, 1], [0, 1, 2, 3], 4, "places 4 logical experts"),
        ]
        for (c, i, n, text) in cases {
            let r = answer(core, Self.placement(0, physical: n, counts: c, ids: i))
            #expect(r.status == .badPlacement && r.message.contains(text), "\(r.message)")
        }
        #expect(state.layers.current.layers[0].placements.changes == 2)
        var wrongFrame = Self.placement(0, physical: 13, counts: counts, ids: ids)
        wrongFrame[1].removeLast(4)
        #expect(answer(core, wrongFrame).status == .sizeMismatch)
        #expect(answer(core, [Self.placement(0, physical: 13, counts: counts, ids: ids)[0]]).status == .malformed)
        #expect(answer(core, Self.placement(0, physical: 13, counts: counts, ids: ids, version: 1)).status == .badVersion)
        #expect(answer(core, Self.placement(9, physical: 13, counts: counts, ids: ids)).status == .unknownLayer)
        let stranger = answer(core, Self.placement(0, physical: 13, counts: counts, ids: ids), uid: 54_321)
        #expect(stranger.status == .notPermitted && stranger.message.contains("uid 54321"))
        let tcp = TestRequest(Self.placement(0, physical: 13, counts: counts, ids: ids), transport: .tcp)
        guard case .request(let tr) = core.decode(tcp, from: tcp) else { Issue.record("refused"); return }
        #expect(core.answer(tr).status == .notPermitted)
    }

    @Test func expertLoadCountsLogicalExpertsAndWindows() throws {
        let (core, _) = try makeCore(["mixtral-8x7b"])
        let e = 8, k = 2
        var recount = [UInt64](repeating: 0, count: e)
        for seed in 0..<4 {
            let r = answer(core, Self.route(tokens: 5, experts: e, topK: k, logits: Self.logits(5, e, seed: seed)))
            for id in outputs(r).ids { recount[Int(id)] += 1 }
        }
        func load(reset: Bool, uid: UInt32 = getuid()) -> (Reply, [UInt64], [UInt64]) {
            var q = moe_load_req()
            q.flags = reset ? UInt32(MOE_LOAD_RESET_WINDOW) : 0
            let r = answer(core, [WireRequest.frame(.expertLoad, q)], uid: uid)
            guard r.status == .ok else { return (r, [], []) }
            let all = r.frames[0].bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt64.self)) }
            return (r, Array(all[..<e]), Array(all[e...]))
        }
        let (first, totals, window) = load(reset: true)
        guard case .load(let body) = first.body else { Issue.record("no load body"); return }
        #expect(totals == recount && window == recount && body.num_experts == 8 && body.total_assignments == 40)
        _ = answer(core, Self.route(tokens: 1, experts: e, topK: k, logits: Self.logits(1, e)))
        let (_, totals2, window2) = load(reset: false)
        #expect(totals2.reduce(0, +) == 42 && window2.reduce(0, +) == 2)
        #expect(load(reset: false, uid: 54_321).0.status == .ok, "anyone may read")
        #expect(load(reset: true, uid: 54_321).0.status == .notPermitted)
        var q = moe_load_req()
        q.flags = 6
        #expect(answer(core, [WireRequest.frame(.expertLoad, q)]).status == .badField)
        #expect(answer(core, [WireRequest.frame(.expertLoad, moe_load_req(), version: 1)]).status == .badVersion)
    }

    @Test func listAndStatsCarryTheVersion2Fields() throws {
        let (core, _) = try makeCore(["deepseek-v3", "deepseek-v4-hash"])
        let list = answer(core, [WireRequest.empty(.listLayers, version: 2)])
        guard case .layers(_, let infos, let ext?) = list.body else { Issue.record("no version-2 list"); return }
        #expect(infos.count == 2 && ext.map(\.hash_vocab) == [0, 129_280])
        #expect(infos[1].scoring == ScoringFunction.sqrtSoftplus.rawValue && infos[1].has_bias == 0)
        list.body.withBytes { #expect($0.count == 8 + 2 * 136) }
        let stats = answer(core, [WireRequest.empty(.stats, version: 2)])
        guard case .stats(_, let se?) = stats.body else { Issue.record("no version-2 stats"); return }
        #expect(se.max_registrations_per_uid == 1024)
        stats.body.withBytes { #expect($0.count == 224) }
    }
}
