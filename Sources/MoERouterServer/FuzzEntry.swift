import CMoERouterdOS
import Glibc
import MoERouting

/// Entry points for the fuzz targets (`Sources/moe-router-fuzz`, scripts/fuzz.sh): the request
/// core and the configuration loader on arbitrary bytes, exactly as the daemon runs them. Not
/// used by the daemon itself.
public enum FuzzEntry {
    /// A core over three presets (the third hash-routed) on the CPU backend: no registrations,
    /// no sockets.
    private static let core: RequestCore = {
        var config = ServerConfig(endpoint: "ipc:///nonexistent")
        config.layers = ["deepseek-v3", "mixtral-8x7b", "deepseek-v4-hash"].map { Presets.spec(named: $0, gateDType: .bf16)! }
        config.maxTokens = 4096
        let state = DaemonState(config: config, catalog: try! LayerCatalog(config.layers), backend: CPUBackend(threads: 1),
                                metrics: nil)
        return RequestCore(state: state)
    }()

    /// Builds what the targets share before the first input (so its allocations are not
    /// counted against an input by the leak check).
    public static func prepare() {
        _ = core
        _ = try? ConfigFile.parse("workers: 1\n", path: "warm-up.yaml")
    }

    /// One request made of `data`: byte 0 picks the transport (ipc, or tcp) and
    /// the frame count (1...4), then each frame is a 2-byte little-endian length and its bytes
    /// (the last frame takes whatever is left). Decoded, answered and encoded as the daemon does.
    /// Returns the answer's status name.
    @discardableResult
    public static func request(_ data: UnsafeRawBufferPointer) -> String {
        guard let first = data.first else { return "-" }
        var frames: [[UInt8]] = []
        var at = 1
        let count = Int(first & 3) + 1
        for i in 0..<count {
            if i == count - 1 || at + 2 > data.count {
                frames.append(Array(data[min(at, data.count)...]))
                break
            }
            let n = Int(data[at]) | Int(data[at + 1]) << 8
            at += 2
            let end = min(at + n, data.count)
            frames.append(Array(data[at..<end]))
            at = end
        }
        let request = FuzzRequest(frames, transport: first & 4 == 0 ? .ipc : .tcp)
        let reply: Reply
        switch core.decode(request, from: request) {
        case .request(let r): reply = core.answer(r)
        case .refused(let refusal): reply = refusal
        }
        _ = reply.encode()
        return reply.status.name
    }

    /// A configuration file's text: parsed, its layers specified and built as a start-up would.
    public static func config(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        guard let file = try? ConfigFile.parse(text, path: "fuzz.yaml"),
              let specs = try? file.layerSpecs(baseDirectory: "/nonexistent") else { return }
        for spec in specs.prefix(4) { _ = try? BuiltLayer(spec) }
    }
}

/// A request's frames, each in its own allocation (as libzmq hands them over).
private final class FuzzRequest: RequestOrigin, RequestFrames, @unchecked Sendable {
    let transport: ClientKey.Transport
    let client = ClientKey(transport: .ipc, routingID: [1], connection: 1)
    let peer: PeerCredentials?
    let connectionFD: Int32 = -1
    let receivedNs = mro_now_ns()
    private let frames: [UnsafeMutableRawBufferPointer]

    init(_ frames: [[UInt8]], transport: ClientKey.Transport) {
        self.frames = frames.map { bytes in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
            b.copyBytes(from: bytes)
            return b
        }
        self.transport = transport
        // REGISTER_SHM is refused (typed, no peer) instead of opening the fuzzer's names in
        // /dev/shm; the control ops (SET_PLACEMENT, EXPERT_LOAD) come from the daemon's own uid
        // so that their paths run.
        let op = frames.first.flatMap { $0.count >= 8 ? UInt16($0[6]) | UInt16($0[7]) << 8 : nil }
        let control = op == WireOp.setPlacement.rawValue || op == WireOp.expertLoad.rawValue
        peer = control && transport == .ipc ? PeerCredentials(uid: geteuid(), gid: getegid(), pid: getpid()) : nil
    }

    deinit { frames.forEach { $0.deallocate() } }

    var frameCount: Int { frames.count }
    func frame(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(frames[i]) }
}
