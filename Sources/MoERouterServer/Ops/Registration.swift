import CMoERouterWire

/// REGISTER_SHM and UNREGISTER_SHM: a connection's shared-memory segments.
struct RegistrationHandler: Sendable {
    let registry: SegmentRegistry

    func register(_ q: RegisterRequest, _ r: InboundRequest) -> Reply {
        let origin = r.origin
        guard origin.transport == .ipc, let peer = origin.peer else {
            return r.refused(RequestFailure(.shmRefused, "shared memory is only available to ipc peers on this host"))
        }
        do {
            let seg = try registry.register(client: origin.client, peer: peer, connectionFD: origin.connectionFD,
                                            name: q.name, size: q.size)
            var resp = moe_register_resp()
            resp.handle = seg.handle
            resp.size = UInt64(seg.size)
            return Reply(answering: r, message: "registered \(q.name)", body: .registered(resp))
        } catch {
            return r.refused(error)
        }
    }

    func unregister(handle: UInt64, _ r: InboundRequest) -> Reply {
        do {
            let deferred = try registry.unregister(client: r.origin.client, handle: handle)
            var resp = moe_unregister_resp()
            resp.deferred = deferred ? 1 : 0
            return Reply(answering: r, message: deferred ? "release deferred until the running request ends" : "unregistered",
                         body: .unregistered(resp))
        } catch {
            return r.refused(error)
        }
    }
}
