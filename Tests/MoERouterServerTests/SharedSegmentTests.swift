import CMoERouterdOS
import Glibc
import MoERouting
import Synchronization
import Testing
@testable import MoERouterServer

/// A device backend as the registry sees one: it accepts every mapping and records which it holds.
private final class RecordingBackend: RoutingBackend {
    /// Bytes held, by address.
    let held = Mutex<[Int: Int]>([:])
    var name: String { "recording" }
    func route(_ job: RouteJob, on layer: BuiltLayer) throws(RouteError) -> RouteOutcome {
        RouteOutcome(nonFiniteInputs: 0, usedFallbackCast: false)
    }
    func hostMemoryMapped(_ base: UnsafeMutableRawPointer, bytes: Int) -> Bool {
        held.withLock { $0[Int(bitPattern: base)] = bytes }
        return true
    }
    func hostMemoryReleased(_ base: UnsafeMutableRawPointer) {
        held.withLock { h in
            precondition(h.removeValue(forKey: Int(bitPattern: base)) != nil, "released a mapping the backend does not hold")
        }
    }
    var count: Int { held.withLock { $0.count } }
}

/// The SIGBUS guard and the registry's reference counting, on real POSIX shm objects.
@Suite(.serialized) struct SharedSegmentTests {
    static let me = ClientKey(transport: .ipc, routingID: [1, 2, 3])
    static let peer = PeerCredentials(uid: getuid(), gid: getgid(), pid: getpid())

    func makeObject(_ size: Int, mode: mode_t = 0o600) -> (String, Int32) {
        let name = "/moe-router-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, mode)
        precondition(fd >= 0)
        fchmod(fd, mode)
        ftruncate(fd, off_t(size))
        return (name, fd)
    }

    @Test func truncatedSegmentFaultsAreAbsorbedAndReported() throws {
        #expect(mro_guard_install() == 0)
        let registry = SegmentRegistry(limits: .init(maxPerClient: 4, maxSegmentBytes: 1 << 30))
        let (name, fd) = makeObject(3 * 4096)
        defer { shm_unlink(name); close(fd) }
        let seg = try registry.register(client: Self.me, peer: Self.peer, connectionFD: -1, name: name, size: 3 * 4096)
        #expect(!seg.faulted)
        ftruncate(fd, 0)  // the client shrinks its object behind the daemon's back
        #expect(!seg.faulted, "nothing is noticed until a byte that is gone is touched")
        // Touch every page as a kernel would: without the guard this is SIGBUS.
        var sum = 0
        for off in stride(from: 0, to: seg.size, by: 512) { sum += Int(seg.base.load(fromByteOffset: off, as: UInt8.self)) }
        seg.base.storeBytes(of: 7, toByteOffset: 100, as: UInt8.self)
        #expect(sum == 0)
        #expect(seg.faulted)
        registry.drop(handle: seg.handle)
        #expect(registry.snapshot.registrations == 0)
    }

    @Test func unregisterDuringUseIsDeferred() throws {
        let registry = SegmentRegistry(limits: .init(maxPerClient: 4, maxSegmentBytes: 1 << 30))
        let (name, fd) = makeObject(4096)
        defer { shm_unlink(name); close(fd) }
        let seg = try registry.register(client: Self.me, peer: Self.peer, connectionFD: -1, name: name, size: 4096)
        let inUse = try registry.checkout(client: Self.me, handle: seg.handle)
        #expect(try registry.unregister(client: Self.me, handle: seg.handle) == true)
        #expect(!inUse.released)
        inUse.base.storeBytes(of: 1, as: UInt8.self)  // still mapped
        registry.checkin(inUse)
        #expect(inUse.released)
        #expect(throws: RequestFailure.self) { try registry.checkout(client: Self.me, handle: seg.handle) }
    }

    /// What shutdown does after its channels and workers are gone (RouterServer.run):
    /// `releaseAll` hands every device registration back before it unmaps.
    @Test func shutdownUnregistersEveryMappingFromTheDevice() throws {
        let backend = RecordingBackend()
        let registry = SegmentRegistry(limits: .init(maxPerClient: 4, maxSegmentBytes: 1 << 30), backend: backend)
        let other = ClientKey(transport: .ipc, routingID: [7])
        let objects = [makeObject(4096), makeObject(3 * 4096)]
        defer { for (name, fd) in objects { shm_unlink(name); close(fd) } }
        let a = try registry.register(client: Self.me, peer: Self.peer, connectionFD: 5, name: objects[0].0, size: 4096)
        let b = try registry.register(client: other, peer: Self.peer, connectionFD: 6, name: objects[1].0, size: 3 * 4096)
        #expect(backend.held.withLock { $0 } == [Int(bitPattern: a.base): 4096, Int(bitPattern: b.base): 3 * 4096])
        // one released the ordinary way first: the backend lets go of it once, not twice
        #expect(try registry.unregister(client: other, handle: b.handle) == false, "released now, not deferred")
        #expect(b.released && backend.count == 1)
        registry.releaseAll()
        #expect(backend.count == 0)
        #expect(a.released && b.released)
        #expect(registry.snapshot.registrations == 0)
    }

    @Test func registrationsArePerClientAndChecked() throws {
        let registry = SegmentRegistry(limits: .init(maxPerClient: 1, maxSegmentBytes: 1 << 30))
        let other = ClientKey(transport: .ipc, routingID: [9])
        let (name, fd) = makeObject(4096)
        defer { shm_unlink(name); close(fd) }
        let seg = try registry.register(client: Self.me, peer: Self.peer, connectionFD: 5, name: name, size: 4096)
        #expect(throws: RequestFailure.self) { try registry.checkout(client: other, handle: seg.handle) }
        #expect(throws: RequestFailure.self) { try registry.unregister(client: other, handle: seg.handle) }
        #expect(throws: RequestFailure.self) {  // limit of 1 per client
            try registry.register(client: Self.me, peer: Self.peer, connectionFD: 5, name: name, size: 4096)
        }
        let stranger = PeerCredentials(uid: getuid() &+ 1, gid: 0, pid: 1)
        #expect(throws: RequestFailure.self) {
            try registry.register(client: other, peer: stranger, connectionFD: 6, name: name, size: 4096)
        }
        #expect(registry.connectionClosed(fd: 5, transport: .ipc) == 1)
        #expect(seg.released)
        let (open, fd2) = makeObject(4096, mode: 0o666)
        defer { shm_unlink(open); close(fd2) }
        do {
            _ = try registry.register(client: other, peer: Self.peer, connectionFD: 6, name: open, size: 4096)
            Issue.record("world-writable segment accepted")
        } catch {
            #expect(error.status == .shmPermissions)
        }
    }
}
