import CMoERouterdOS
import MoERouterZMQ
import CZMQ
import Logging

/// The ZAP handler (RFC 27) at inproc://zeromq.zap.01. libzmq asks it about every new
/// connection on a socket with a ZAP domain. It admits everyone (the ipc socket file's mode
/// 0660 is the access control) and sets the connection's User-Id, which every message from that
/// connection then carries: "ipc:CONNECTION:UID:GID:PID" for ipc peers — a number this handler
/// gives each new connection (random start, never reused in a run), then the kernel's
/// SO_PEERCRED —, "tcp:ADDRESS" for tcp peers. Registrations belong to (routing id, connection):
/// a peer chooses its routing id, never its connection number.
final class ZAPHandler: @unchecked Sendable {
    static let endpoint = "inproc://zeromq.zap.01"
    static let ipcDomain = "moe-router-ipc"
    static let tcpDomain = "moe-router-tcp"

    private let socket: ZMQSocket
    private let logger: Logger
    /// With CURVE on tcp: the client public keys admitted (raw 32 bytes).
    private let allowedCurveKeys: Set<[UInt8]>?
    private var nextConnection = UInt64.random(in: 1...(UInt64.max >> 1))

    /// New connections are refused while more than this share of the fd limit is in use.
    static let fdHighWater = 0.75
    private var shedCount = 0

    /// Why a new connection must be refused now, or nil: more than `fdHighWater` of the fd limit
    /// in use (the limit is read each time: it can be lowered from outside).
    private func shedding() -> String? {
        let limit = mro_fd_limit()
        guard limit > 0 else { return nil }
        let open = mro_open_fds()
        guard open >= 0, Double(open) > Double(limit) * Self.fdHighWater else { return nil }
        shedCount += 1
        if shedCount.nonzeroBitCount == 1 {  // 1, 2, 4, ...: logged, never a flood of lines
            logger.warning("refused \(shedCount) new connection(s) so far: \(open) of \(limit) file descriptors in use")
        }
        return "the daemon is short of file descriptors"
    }

    /// Binds on the calling thread (before any socket with a ZAP domain binds).
    init(context: ZMQContext, allowedCurveKeys: Set<[UInt8]>?, logger: Logger) throws(ZMQError) {
        socket = try ZMQSocket(context, type: ZMQ_REP)
        try socket.bind(Self.endpoint)
        self.logger = logger
        self.allowedCurveKeys = allowedCurveKeys
    }

    /// Answers requests until the context shuts down. Run on its own thread.
    func serve() {
        while true {
            let frames: [ZMQMessage]
            do { frames = try socket.receiveMultipart() } catch {
                if error.isTerminated { break }
                logger.warning("zap: \(error)")
                continue
            }
            let text = frames.map { String(decoding: $0.bytes, as: UTF8.self) }
            let requestID = frames.count > 1 ? frames[1].array : []
            var status = "200", reason = "OK", user = ""
            if frames.count < 6 || text[0] != "1.0" {
                status = "400"
                reason = "malformed ZAP request"
            } else if let shed = shedding() {
                // libzmq 4.3.5 aborts when accept() meets EMFILE (ipc_listener.cpp): while the
                // fds left are few, new connections are refused (closed at once), never accepted
                // into a crash. Existing connections are served as before.
                status = "300"
                reason = shed
            } else if text[2] == Self.ipcDomain {
                if let creds = PeerCredentials(text[3]) {
                    nextConnection &+= 1
                    user = "ipc:\(nextConnection):\(creds.uid):\(creds.gid):\(creds.pid)"
                } else {
                    user = "ipc:"
                }
            } else if let allowed = allowedCurveKeys {
                // CURVE: frame 6 is the client's long-term public key, proven by the handshake.
                let key = frames.count > 6 ? frames[6].array : []
                if text[5] == "CURVE", key.count == 32, allowed.contains(key) {
                    var z85 = [CChar](repeating: 0, count: 41)
                    _ = zmq_z85_encode(&z85, key, 32)
                    user = "tcp:curve:\(String(cString: z85))"
                } else {
                    status = "400"
                    reason = "client key not on the allow-list"
                    logger.warning("tcp: refused a \(text[5]) peer from \(text[3]): its public key is not on the allow-list")
                }
            } else {
                user = "tcp:\(text[3])"
            }
            let reply: [ZMQMessage] = [
                ZMQMessage.copying(Array("1.0".utf8)), ZMQMessage.copying(requestID), ZMQMessage.copying(Array(status.utf8)),
                ZMQMessage.copying(Array(reason.utf8)), ZMQMessage.copying(Array(user.utf8)), ZMQMessage.copying([]),
            ]
            do { try socket.sendMultipart(reply) } catch {
                if error.isTerminated { break }
            }
        }
        socket.close()
    }
}
