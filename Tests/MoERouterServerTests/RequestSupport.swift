import CMoERouterWire
import CMoERouterdOS
import Glibc
@testable import MoERouterServer
import MoERouting

/// Request frames built in memory, as a transport would hand them to the core.
final class TestRequest: RequestOrigin, RequestFrames, @unchecked Sendable {
    let transport: ClientKey.Transport
    let client: ClientKey
    let peer: PeerCredentials?
    let connectionFD: Int32 = -1
    let receivedNs = mro_now_ns()
    /// Each frame in its own allocation (as libzmq hands them over), freed with the request.
    private let frames: [UnsafeMutableRawBufferPointer]

    init(_ frames: [[UInt8]], transport: ClientKey.Transport = .ipc, uid: UInt32 = getuid()) {
        self.frames = frames.map { bytes in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
            b.copyBytes(from: bytes)
            return b
        }
        self.transport = transport
        client = ClientKey(transport: transport, routingID: [1, 2, 3])
        peer = transport == .ipc ? PeerCredentials(uid: uid, gid: getgid(), pid: getpid()) : nil
    }

    deinit { frames.forEach { $0.deallocate() } }

    var frameCount: Int { frames.count }
    func frame(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(frames[i]) }
}

/// Wire bytes of requests.
enum WireRequest {
    /// A header of protocol `version` (default 1: the suites written for version 1 keep testing it).
    static func header(_ op: UInt16, bodySize: Int, id: UInt64 = 42, deadlineMs: UInt32 = 0, version: UInt16 = 1) -> moe_req_header {
        var h = moe_req_header()
        h.magic = MOE_PROTOCOL_MAGIC
        h.version = version
        h.op = op
        h.request_id = id
        h.body_size = UInt32(bodySize)
        h.deadline_ms = deadlineMs
        return h
    }

    static func frame<Body>(_ op: WireOp, _ body: Body, id: UInt64 = 42, deadlineMs: UInt32 = 0, version: UInt16? = nil) -> [UInt8] {
        WireBytes.bytes(of: header(op.rawValue, bodySize: MemoryLayout<Body>.size, id: id, deadlineMs: deadlineMs,
                                   version: version ?? op.sinceVersion)) + WireBytes.bytes(of: body)
    }

    static func empty(_ op: WireOp, id: UInt64 = 42, version: UInt16 = 1) -> [UInt8] {
        WireBytes.bytes(of: header(op.rawValue, bodySize: 0, id: id, version: version))
    }

    static func inlineRef(_ length: Int) -> moe_buffer_ref {
        var r = moe_buffer_ref()
        r.kind = MOE_BUF_INLINE.rawValue
        r.length = UInt64(length)
        return r
    }

    /// A ROUTE with every buffer inline: frame 0 and the input frame.
    static func inlineRoute(layer: UInt32 = 0, dtype: DType = .fp32, tokens: Int, experts: Int, topK: Int,
                            input: [UInt8]? = nil, id: UInt64 = 42, deadlineMs: UInt32 = 0) -> [[UInt8]] {
        var q = moe_route_req()
        q.layer_id = layer
        q.dtype = dtype.rawValue
        q.tokens = UInt64(tokens)
        let inputBytes = tokens * experts * dtype.byteSize
        q.input = inlineRef(inputBytes)
        q.weights = inlineRef(tokens * topK * 4)
        q.ids = inlineRef(tokens * topK * 4)
        return [frame(.route, q, id: id, deadlineMs: deadlineMs), input ?? [UInt8](repeating: 0, count: inputBytes)]
    }

    static func logits(_ values: [Float]) -> [UInt8] { values.withUnsafeBytes(Array.init) }
}

extension Reply {
    var routeResult: RouteResult? { if case .route(let r) = body { r } else { nil } }
}

/// A request core over real layers and the CPU backend.
func makeCore(_ presets: [String] = ["deepseek-v3"], configure: (inout ServerConfig) -> Void = { _ in })
    throws -> (RequestCore, DaemonState) {
    var config = ServerConfig(endpoint: "ipc:///nonexistent")
    config.layers = presets.map { Presets.spec(named: $0, gateDType: .fp32)! }
    configure(&config)
    let state = DaemonState(config: config, catalog: try LayerCatalog(config.layers), backend: CPUBackend(threads: 1),
                            metrics: nil)
    return (RequestCore(state: state), state)
}
