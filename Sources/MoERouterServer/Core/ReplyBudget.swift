import Synchronization

/// Bounds the memory that answers waiting for their readers may hold. A client that sends ROUTEs
/// with inline outputs and never reads would otherwise make libzmq queue every answer for it
/// (the probe pinned 240 MB with 60 requests). Output frames of at least `countedBytes` are
/// counted from the moment they are allocated until libzmq frees them (written to the socket,
/// or dropped); a ROUTE whose outputs would take a connection past `perConnection`, or the
/// daemon past `total`, is answered BUSY before anything is computed. One answer is always
/// allowed when nothing is outstanding, so a single large request is never refused for size.
final class ReplyBudget: Sendable {
    /// Smaller frames are not counted: the socket's high-water mark (messages) bounds them.
    static let countedBytes = 4096

    let perConnection: Int
    let total: Int
    private let outstanding = Mutex<(byClient: [ClientKey: Int], total: Int)>(([:], 0))

    init(perConnection: Int, total: Int) {
        self.perConnection = perConnection
        self.total = total
    }

    /// Reserves `bytes` for `client`; nil on success, else why not.
    func reserve(_ bytes: Int, for client: ClientKey) -> String? {
        outstanding.withLock { o in
            let mine = o.byClient[client, default: 0]
            if mine > 0 && mine + bytes > perConnection {
                return "\(mine) bytes of earlier answers to this connection are still unread (max_queued_reply_bytes = \(perConnection)); read them, or put outputs in shared memory"
            }
            if o.total > 0 && o.total + bytes > total {
                return "answers holding \(o.total) bytes wait for their readers (max_queued_reply_bytes_total = \(total)); retry later"
            }
            o.byClient[client] = mine + bytes
            o.total += bytes
            return nil
        }
    }

    func release(_ bytes: Int, for client: ClientKey) {
        outstanding.withLock { o in
            let left = o.byClient[client, default: 0] - bytes
            o.byClient[client] = left > 0 ? left : nil
            o.total -= bytes
        }
    }

    /// Bytes reserved now (all connections).
    var reserved: Int { outstanding.withLock { $0.total } }
}
