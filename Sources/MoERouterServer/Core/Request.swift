import CMoERouterWire
import MoERouting

/// One request, decoded once from the wire: the operation and its validated fields. Nothing
/// after the decoder reads the request's bytes again.
enum Request: Sendable {
    case hello(HelloRequest)
    case listLayers
    case registerShm(RegisterRequest)
    case unregisterShm(handle: UInt64)
    case route(RouteRequest)
    case stats
    case ping
    case setPlacement(PlacementRequest)
    case expertLoad(layerID: UInt32, resetWindow: Bool)
    case openChannel(moe_channel_open_req)
    case closeChannel(id: UInt64)

    var op: WireOp {
        switch self {
        case .hello: .hello
        case .listLayers: .listLayers
        case .registerShm: .registerShm
        case .unregisterShm: .unregisterShm
        case .route: .route
        case .stats: .stats
        case .ping: .ping
        case .setPlacement: .setPlacement
        case .expertLoad: .expertLoad
        case .openChannel: .openChannel
        case .closeChannel: .closeChannel
        }
    }
}

/// SET_PLACEMENT: the new placement of a layer as the client sent it (nil counts: remove).
struct PlacementRequest: Sendable, Equatable {
    let layerID: UInt32
    let numPhysical: Int
    /// Replica count per logical expert, then the physical ids in order; empty: remove.
    let counts: [Int32]
    let physical: [Int32]
}

struct HelloRequest: Sendable, Equatable {
    /// The client speaks `versions`.
    let versions: ClosedRange<UInt16>
    let clientName: String
}

struct RegisterRequest: Sendable, Equatable {
    let name: String
    let size: UInt64
}

/// ROUTE: which layer, the input's dtype and token count, and where the buffers live.
struct RouteRequest: Sendable, Equatable {
    let layerID: UInt32
    let dtype: DType
    let tokens: Int
    let input: BufferRef
    let weights: BufferRef
    let ids: BufferRef
    /// Version 2: token ids ([tokens] of `tokenIdBytes`) and the padding mask ([tokens] bytes).
    var tokenIds: BufferRef? = nil
    var tokenIdBytes = 0
    var mask: BufferRef? = nil
    /// Whether any buffer lives in a registered segment.
    var usesSharedMemory: Bool {
        input.segment != nil || weights.segment != nil || ids.segment != nil || tokenIds?.segment != nil || mask?.segment != nil
    }
}

/// Where a ROUTE buffer lives, as the client claimed it (checked against the layer and the
/// segment by the route handler).
enum BufferRef: Sendable, Equatable {
    /// In the request (the input) or the reply (an output); `length` is the claimed byte count.
    case inline(length: UInt64)
    /// In registered segment `handle`, at `offset`.
    case shm(handle: UInt64, offset: UInt64, length: UInt64)

    var length: UInt64 {
        switch self {
        case .inline(let length), .shm(_, _, let length): length
        }
    }

    var segment: UInt64? { if case .shm(let handle, _, _) = self { handle } else { nil } }
}

/// Who sent a request, as the transport that received it knows them.
protocol RequestOrigin: AnyObject, Sendable {
    var transport: ClientKey.Transport { get }
    /// The connection the request arrived on; registrations belong to it.
    var client: ClientKey { get }
    /// The kernel's credentials of an ipc peer (nil over tcp).
    var peer: PeerCredentials? { get }
    /// The connection's file descriptor, for disconnect events (-1 when unknown).
    var connectionFD: Int32 { get }
    /// When the transport received it (monotonic ns).
    var receivedNs: UInt64 { get }
}

/// The frames of a request as a transport received them: frame 0 holds the header and the op
/// body, frame 1 (ROUTE with inline input) the input. Valid while the value lives.
protocol RequestFrames {
    var frameCount: Int { get }
    func frame(_ index: Int) -> UnsafeRawBufferPointer
}

/// A decoded request with what every op needs besides its fields: its id, its deadline and
/// where it came from. Handed from the I/O thread to at most one worker.
struct InboundRequest: @unchecked Sendable {
    let request: Request
    /// `request.op`, read once (reading it from `request` copied the whole request each time).
    let op: WireOp
    /// The protocol version of the request's header; its answer's bodies are this version's.
    var version: UInt16 = 1
    let id: UInt64
    let deadlineNs: UInt64
    let origin: any RequestOrigin
    /// ROUTE's inline input bytes (empty otherwise); they belong to `origin`, which this value
    /// keeps alive.
    let inlineInput: UnsafeRawBufferPointer
    /// Version 2 ROUTE: inline token ids and mask (empty when absent or in shared memory).
    var inlineTokenIds = UnsafeRawBufferPointer(start: nil, count: 0)
    var inlineMask = UnsafeRawBufferPointer(start: nil, count: 0)

    init(request: Request, version: UInt16, id: UInt64, deadlineNs: UInt64, origin: any RequestOrigin,
         inlineInput: UnsafeRawBufferPointer) {
        self.request = request
        op = request.op
        self.version = version
        self.id = id
        self.deadlineNs = deadlineNs
        self.origin = origin
        self.inlineInput = inlineInput
    }

    /// The reply that refuses this request with `failure` (a ROUTE's carries its response body).
    func refused(_ failure: RequestFailure) -> Reply {
        if case .route(let q) = request {
            return Reply(refusing: self, failure, body: .route(RouteResult(tokens: UInt64(q.tokens), layerID: q.layerID, version: version)))
        }
        return Reply(refusing: self, failure)
    }
}

/// What decoding made of a request's frames.
enum Decoded {
    case request(InboundRequest)
    /// The reply refusing frames that are not a valid request.
    case refused(Reply)
}
