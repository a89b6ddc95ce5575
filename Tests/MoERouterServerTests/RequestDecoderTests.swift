import CMoERouterWire
@testable import MoERouterServer
import MoERouting
import Testing

/// The decoder alone: every framing and field check, each on its own, with the status and the
/// op/id echo a client relies on.
@Suite struct RequestDecoderTests {
    let decoder = RequestDecoder(defaultDeadlineMs: 5000, maxMessageBytes: 1 << 20, maxTokens: 1024)

    func decode(_ frames: [[UInt8]], transport: ClientKey.Transport = .ipc) -> Decoded {
        let r = TestRequest(frames, transport: transport)
        return decoder.decode(r, from: r)
    }

    func refusal(_ frames: [[UInt8]]) -> Reply? {
        if case .refused(let reply) = decode(frames) { return reply }
        return nil
    }

    @Test func inlineRouteDecodesOnce() throws {
        let input = WireRequest.logits((0..<256).map(Float.init))
        guard case .request(let r) = decode(WireRequest.inlineRoute(tokens: 1, experts: 256, topK: 8, input: input, id: 7, deadlineMs: 20)) else {
            Issue.record("refused")
            return
        }
        #expect(r.op == .route && r.id == 7)
        #expect(r.deadlineNs == r.origin.receivedNs + 20_000_000)
        guard case .route(let q) = r.request else { Issue.record("not a route"); return }
        #expect(q == RouteRequest(layerID: 0, dtype: .fp32, tokens: 1, input: .inline(length: 1024),
                                  weights: .inline(length: 32), ids: .inline(length: 32)))
        #expect(!q.usesSharedMemory)
        #expect(Array(r.inlineInput) == input)
    }

    @Test func defaultDeadlineApplies() throws {
        guard case .request(let r) = decode([WireRequest.empty(.ping)]) else { Issue.record("refused"); return }
        #expect(r.request.op == .ping)
        #expect(r.deadlineNs == r.origin.receivedNs + 5_000_000_000)
    }

    @Test func framingErrorsEchoOpAndID() throws {
        #expect(refusal([[1, 2, 3]])?.status == .malformed)
        #expect(refusal([])?.status == .malformed)
        var h = WireRequest.header(WireOp.ping.rawValue, bodySize: 0, id: 9)
        h.magic = 1
        let bad = refusal([WireBytes.bytes(of: h)])
        #expect(bad?.status == .badMagic && bad?.requestID == 9 && bad?.op == WireOp.ping.rawValue)
        h = WireRequest.header(WireOp.ping.rawValue, bodySize: 0)
        h.version = 9
        #expect(refusal([WireBytes.bytes(of: h)])?.status == .badVersion)
        let unknown = refusal([WireBytes.bytes(of: WireRequest.header(99, bodySize: 0))])
        #expect(unknown?.status == .unknownOp && unknown?.op == 99)
        h = WireRequest.header(WireOp.ping.rawValue, bodySize: 0)
        h.reserved = 1
        #expect(refusal([WireBytes.bytes(of: h)])?.status == .badField)
        // body_size disagrees with the frame, or with the op's body
        #expect(refusal([WireBytes.bytes(of: WireRequest.header(WireOp.ping.rawValue, bodySize: 4))])?.status == .malformed)
        #expect(refusal([WireBytes.bytes(of: WireRequest.header(WireOp.ping.rawValue, bodySize: 4)) + [0, 0, 0, 0]])?.status == .malformed)
        // a second frame on an op that takes one
        #expect(refusal([WireRequest.empty(.stats), [1]])?.status == .malformed)
        // over max_message_bytes, counted over every frame
        #expect(refusal([WireRequest.empty(.ping), [UInt8](repeating: 0, count: 1 << 20)])?.status == .tooLarge)
    }

    @Test func routeFieldErrorsCarryTheRouteBody() throws {
        func routeRefusal(_ edit: (inout moe_route_req) -> Void, frames extra: [[UInt8]]? = nil) -> Reply? {
            var q = moe_route_req()
            q.tokens = 2
            q.input = WireRequest.inlineRef(2 * 256 * 4)
            q.weights = WireRequest.inlineRef(64)
            q.ids = WireRequest.inlineRef(64)
            edit(&q)
            let frames = [WireRequest.frame(.route, q)] + (extra ?? [[UInt8](repeating: 0, count: Int(q.input.length))])
            return refusal(frames)
        }
        for (edit, status) in [
            ({ (q: inout moe_route_req) in q.dtype = 3 }, WireStatus.badDType),
            ({ $0.reserved0.1 = 1 }, .badField),
            ({ $0.tokens = 1025 }, .tooLarge),
            ({ $0.weights.kind = 7 }, .badField),
            ({ $0.ids.reserved = 1 }, .badField),
            ({ $0.weights.handle = 3 }, .badField),  // inline with a handle
        ] as [((inout moe_route_req) -> Void, WireStatus)] {
            let reply = routeRefusal(edit)
            #expect(reply?.status == status)
            #expect(reply?.routeResult != nil, "a ROUTE refusal carries moe_route_resp")
        }
        #expect(routeRefusal({ _ in }, frames: [])?.status == .malformed)            // inline input frame missing
        #expect(routeRefusal({ _ in }, frames: [[0, 0, 0, 0]])?.status == .sizeMismatch)  // frame != input.length
        let shmInput = routeRefusal({ $0.input = moe_buffer_ref(kind: MOE_BUF_SHM.rawValue, reserved: 0, handle: 1, offset: 0, length: 2048) })
        #expect(shmInput?.status == .malformed, "shm input takes one frame")
    }

    @Test func helloAndRegisterFields() throws {
        var hello = moe_hello_req()
        hello.min_version = 1
        hello.max_version = 3
        WireBytes.setFixed(&hello.client_name, "host")
        guard case .request(let r) = decode([WireRequest.frame(.hello, hello)]), case .hello(let q) = r.request else {
            Issue.record("hello refused")
            return
        }
        #expect(q == HelloRequest(versions: 1...3, clientName: "host"))
        withUnsafeMutableBytes(of: &hello.client_name) { $0.initializeMemory(as: UInt8.self, repeating: 0x41) }
        #expect(refusal([WireRequest.frame(.hello, hello)])?.status == .badField)
        hello = moe_hello_req()
        hello.min_version = 3
        hello.max_version = 1
        #expect(refusal([WireRequest.frame(.hello, hello)])?.status == .badVersion)

        var reg = moe_register_req()
        WireBytes.setFixed(&reg.name, "/seg")
        reg.size = 4096
        guard case .request(let rr) = decode([WireRequest.frame(.registerShm, reg)]), case .registerShm(let q2) = rr.request else {
            Issue.record("register refused")
            return
        }
        #expect(q2 == RegisterRequest(name: "/seg", size: 4096))
        withUnsafeMutableBytes(of: &reg.name) { $0.initializeMemory(as: UInt8.self, repeating: 0x41) }
        #expect(refusal([WireRequest.frame(.registerShm, reg)])?.status == .shmName)
    }

    /// A channel's descriptor (no header, no frames) passes the very checks a version-2 ROUTE
    /// frame's body does: the same request when valid, the same status and message when not.
    @Test func aDescriptorDecodesAsTheSameBodyInAFrame() throws {
        func shm(_ offset: UInt64, _ length: UInt64, kind: UInt32 = MOE_BUF_SHM.rawValue) -> moe_buffer_ref {
            var r = moe_buffer_ref()
            r.kind = kind
            r.handle = 5
            r.offset = offset
            r.length = length
            return r
        }
        func none() -> moe_buffer_ref {
            var r = moe_buffer_ref()
            r.kind = MOE_BUF_NONE.rawValue
            return r
        }
        func body(_ change: (inout moe_route_req_v2) -> Void = { _ in }) -> moe_route_req_v2 {
            var q = moe_route_req_v2()
            q.base.layer_id = 3
            q.base.dtype = DType.bf16.rawValue
            q.base.tokens = 2
            q.base.input = shm(0, 1024)
            q.base.weights = shm(1024, 64)
            q.base.ids = shm(1088, 64)
            q.token_ids = none()
            q.mask = none()
            change(&q)
            return q
        }
        let cases: [moe_route_req_v2] = [
            body(),
            body { $0.token_ids = shm(2048, 16); $0.token_id_bytes = 8; $0.mask = shm(4096, 2) },
            body { $0.base.dtype = 9 },                                  // BAD_DTYPE
            body { $0.base.tokens = 4096 },                              // TOO_LARGE
            body { $0.reserved = 1 },                                    // BAD_FIELD
            body { $0.base.weights.kind = 7 },                           // BAD_FIELD
            body { $0.token_ids = shm(2048, 16); $0.token_id_bytes = 3 }, // BAD_FIELD
            body { $0.token_id_bytes = 4 },                              // BAD_FIELD (no token ids)
            body { $0.mask.length = 1 },                                 // BAD_FIELD (absent, not zero)
        ]
        var refused = 0
        for q in cases {
            let viaDescriptor = Result { () throws(RequestFailure) in try decoder.route(q) }
            let viaFrame = decode([WireRequest.frame(.route, q, id: 77, version: 2)])
            switch (viaDescriptor, viaFrame) {
            case let (.success(qa), .request(b)):
                guard case .route(let qb) = b.request else { Issue.record("not a route"); continue }
                #expect(qa == qb)
            case let (.failure(a), .refused(b)):
                refused += 1
                #expect(a.status == b.status && a.message == b.message)
            default:
                Issue.record("descriptor and frame disagree on \(q)")
            }
        }
        #expect(refused == cases.count - 2)
    }
}
