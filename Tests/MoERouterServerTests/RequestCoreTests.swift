import CMoERouterWire
import Glibc
@testable import MoERouterServer
import MoERouting
import Testing

/// The core without a transport: decode, answer, record. ROUTE results are checked against the
/// backend called directly; counters against what was recorded.
@Suite struct RequestCoreTests {
    func answer(_ core: RequestCore, _ frames: [[UInt8]], transport: ClientKey.Transport = .ipc) -> (Reply, InboundRequest?) {
        let incoming = TestRequest(frames, transport: transport)
        switch core.decode(incoming, from: incoming) {
        case .refused(let reply): return (reply, nil)
        case .request(let r): return (core.answer(r), r)
        }
    }

    @Test func inlineRouteMatchesTheBackendAndIsCountedOnce() throws {
        let (core, state) = try makeCore()
        let layer = state.layers.current.layers[0]
        let tokens = 3, e = layer.spec.numExperts, k = layer.spec.topK
        let logits = (0..<tokens * e).map { Float(($0 * 7919) % 1000) / 250 - 2 }
        let (reply, request) = answer(core, WireRequest.inlineRoute(tokens: tokens, experts: e, topK: k, input: WireRequest.logits(logits)))
        #expect(reply.status == .ok)
        #expect(reply.frames.count == 2)
        var weights = [Float](repeating: 0, count: tokens * k), ids = [Int32](repeating: 0, count: tokens * k)
        _ = try logits.withUnsafeBytes { inp in
            try weights.withUnsafeMutableBufferPointer { w in
                try ids.withUnsafeMutableBufferPointer { i in
                    try CPUBackend(threads: 1).route(layer: layer, input: inp, dtype: .fp32, tokens: tokens, weights: w, ids: i)
                }
            }
        }
        #expect(Array(reply.frames[0].bytes) == weights.withUnsafeBytes(Array.init))
        #expect(Array(reply.frames[1].bytes) == ids.withUnsafeBytes(Array.init))
        let result = try #require(reply.routeResult)
        #expect(result.tokens == 3 && result.topK == k && result.layerName == "deepseek-v3" && !result.viaSharedMemory)
        #expect(state.stats.requests.value == 0, "answering counts nothing")
        core.record(reply, from: request!.origin)
        #expect(state.stats.requests.value == 1)
        #expect(state.stats.routes.value == 1)
        #expect(state.stats.tokens.value == 3)
        #expect(state.stats.errors.value == 0)
    }

    @Test func routeRefusalsNameTheField() throws {
        let (core, state) = try makeCore()
        let (unknown, _) = answer(core, WireRequest.inlineRoute(layer: 5, tokens: 1, experts: 256, topK: 8))
        #expect(unknown.status == .unknownLayer && unknown.message.contains("layer_id = 5"))
        #expect(unknown.routeResult?.layerName == "")
        // the outputs claimed for another top_k
        let (size, _) = answer(core, WireRequest.inlineRoute(tokens: 1, experts: 256, topK: 4))
        #expect(size.status == .sizeMismatch && size.message.contains("weights.length = 16"))
        #expect(size.routeResult?.layerName == "deepseek-v3")
        core.record(size, from: TestRequest([]))
        #expect(state.stats.errors.value == 1 && state.stats.routes.value == 0)
    }

    @Test func sharedMemoryIsRefusedOverTCPAndUnknownHandlesOverIPC() throws {
        let (core, _) = try makeCore()
        var q = moe_route_req()
        q.tokens = 1
        q.input = moe_buffer_ref(kind: MOE_BUF_SHM.rawValue, reserved: 0, handle: 77, offset: 0, length: 1024)
        q.weights = WireRequest.inlineRef(32)
        q.ids = WireRequest.inlineRef(32)
        let frames = [WireRequest.frame(.route, q)]
        #expect(answer(core, frames, transport: .tcp).0.status == .shmRefused)
        let (ipc, _) = answer(core, frames)
        #expect(ipc.status == .unknownHandle && ipc.routeResult?.viaSharedMemory == true)
    }

    @Test func aRequestPastItsDeadlineIsNotRun() throws {
        let (core, state) = try makeCore()
        let incoming = TestRequest(WireRequest.inlineRoute(tokens: 1, experts: 256, topK: 8, deadlineMs: 1))
        guard case .request(let r) = core.decode(incoming, from: incoming) else { Issue.record("refused"); return }
        usleep(20_000)
        let reply = core.answer(r)
        #expect(reply.status == .deadline && reply.routeResult?.computeNs == 0)
        core.record(reply, from: r.origin)
        #expect(state.stats.deadlineMisses.value == 1)
    }

    @Test func largeRoutesAreMarkedForWorkers() throws {
        let (core, _) = try makeCore { $0.inlineTokens = 4 }
        for (tokens, large) in [(4, false), (5, true)] {
            let incoming = TestRequest(WireRequest.inlineRoute(tokens: tokens, experts: 256, topK: 8))
            guard case .request(let r) = core.decode(incoming, from: incoming) else { Issue.record("refused"); continue }
            #expect(core.isLarge(r) == large)
        }
        let ping = TestRequest([WireRequest.empty(.ping)])
        guard case .request(let p) = core.decode(ping, from: ping) else { Issue.record("refused"); return }
        #expect(!core.isLarge(p))
    }

    @Test func helloStatsAndLayersAnswerFromTheState() throws {
        let (core, _) = try makeCore(["deepseek-v3", "mixtral-8x7b"])
        var hello = moe_hello_req()
        hello.min_version = 1
        hello.max_version = 1
        let (h, _) = answer(core, [WireRequest.frame(.hello, hello)])
        guard case .hello(let resp, let ext) = h.body else { Issue.record("no hello body"); return }
        #expect(resp.layer_count == 2 && resp.shm_allowed == 1 && resp.protocol_version == 1 && ext == nil)
        hello.min_version = 3
        hello.max_version = 4
        #expect(answer(core, [WireRequest.frame(.hello, hello)]).0.status == .badVersion)
        #expect(answer(core, [WireRequest.frame(.hello, hello)], transport: .tcp).0.status == .badVersion)
        let (list, _) = answer(core, [WireRequest.empty(.listLayers)])
        guard case .layers(let head, let infos, nil) = list.body else { Issue.record("no version-1 list body"); return }
        #expect(head.count == 2 && infos.map(\.num_experts) == [256, 8])
        #expect(list.frames.count == 1 && list.frames[0].count == 256 * 4, "deepseek-v3's bias, mixtral has none")
        let (stats, _) = answer(core, [WireRequest.empty(.stats)])
        guard case .stats = stats.body else { Issue.record("no stats body"); return }
        #expect(answer(core, [WireRequest.empty(.ping)]).0.message == "pong")
    }
}
