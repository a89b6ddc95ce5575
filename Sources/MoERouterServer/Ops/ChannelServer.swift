import CMoERouterdOS
import Glibc
import Synchronization

/// One server thread's channels. It answers whichever of them has a request, spins while any
/// is within its spin budget of its last answer, and otherwise sleeps in one futex_waitv over
/// their doorbells and its own wake word (a channel added, shutdown).
final class ChannelServer: @unchecked Sendable {
    private let members: Mutex<[Channel]>
    /// Set when `members` changed; the thread rereads them.
    private let changed = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let exitWhenEmpty: Bool
    /// The futex word the thread also sleeps on; bumped to wake it.
    private let wakeWord = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)

    init(channels: [Channel], exitWhenEmpty: Bool) {
        members = Mutex(channels)
        self.exitWhenEmpty = exitWhenEmpty
        wakeWord.initialize(to: 0)
    }

    deinit { wakeWord.deallocate() }

    /// Channels served (the pool gives a new one to the server with the fewest).
    var load: Int { members.withLock { $0.count } }

    func add(_ channel: Channel) {
        members.withLock { $0.append(channel) }
        changed.store(true, ordering: .releasing)
        wake()
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        wake()
    }

    private func wake() {
        mro_add_u32(wakeWord, 1)
        _ = mro_futex_wake(wakeWord, 1)
    }

    /// The thread: until stopped (or, per channel, until its channel is gone). `retired` runs
    /// for each channel once the server let go of it.
    func run(core: RequestCore, registry: SegmentRegistry, retired: (Channel) -> Void) {
        mro_set_thread_name("moe-channel")
        var list = members.withLock { $0 }
        // The same channels unretained (`list` keeps them): the per-request loops below then do no
        // reference counting.
        var views = list.map { Unmanaged.passUnretained($0) }
        func reread() {
            list = members.withLock { $0 }
            views = list.map { Unmanaged.passUnretained($0) }
        }
        var words: [UnsafeMutablePointer<UInt32>?] = []
        var expected: [UInt32] = []
        var yieldEveryRound = false, quietSpins = 0
        /// A yield that took this long let another thread run.
        let switchNs: UInt64 = 1500
        /// The yield policy (see the spin below): a yield that switched keeps the yielding on;
        /// 16 answers in a row found without one turn it off.
        func noteYields(switched: Bool, answered: Bool) {
            if switched {
                (yieldEveryRound, quietSpins) = (true, 0)
            } else if answered && yieldEveryRound {
                quietSpins += 1
                if quietSpins >= 16 { yieldEveryRound = false }
            }
        }
        /// The time read just before this pass (after the yield that follows an answer, or in the
        /// spin that found the request; 0: none): the first request found takes it as the time
        /// it was seen, one clock read fewer.
        var passStart: UInt64 = 0
        /// The served layers as this thread last read them (dropped before it sleeps, so that a
        /// reload's replaced layers are not kept by an idle server).
        var layers = LayerSlot.Reader()
        func drop(_ gone: [Channel]) {
            guard !gone.isEmpty else { return }
            members.withLock { m in m.removeAll { c in gone.contains { $0 === c } } }
            for c in gone {
                c.close()
                retired(c)
            }
            reread()
        }
        while true {
            if changed.exchange(false, ordering: .acquiring) { reread() }
            if stopping.load(ordering: .relaxed) { drop(list) }
            if list.isEmpty && (exitWhenEmpty || stopping.load(ordering: .relaxed)) {
                // Under the lock: an `add` after this sees an exited server only in the pool,
                // which is stopping (shutdown) — a per-channel server is never added to.
                if members.withLock({ $0.isEmpty }) { break }
                reread()
                continue
            }
            var answeredAt: UInt64 = 0, anyStopping = false
            for v in views {
                v._withUnsafeGuaranteedRef { c in
                    if c.isStopping {
                        anyStopping = true
                    } else {
                        let done = c.answerIfPosted(core: core, layers: &layers, seenAt: answeredAt == 0 ? passStart : 0)
                        answeredAt = max(answeredAt, done)
                    }
                }
            }
            passStart = 0
            if anyStopping { drop(list.filter(\.isStopping)) }
            if answeredAt != 0 {
                // A client on this CPU waits for the CPU to read its answer: hand it over now,
                // before any of the bookkeeping below (its next request brings the CPU back).
                // (A client on another CPU gets nothing from it: 16 such yields in a row that
                // switched to no one end the yielding, as in the spin below. With several
                // channels the next pass may find another request at once: 8 clients x 64
                // tokens lost ~10 % of their requests/s to a yield here. Nor for a host that
                // calls back slowly: on a busy CPU a yield can cost a whole time slice, and
                // such a channel's server should be asleep by then.)
                if yieldEveryRound && views.count == 1 && views[0]._withUnsafeGuaranteedRef({ $0.callsBackSoon }) {
                    sched_yield()
                    passStart = mro_now_ns()
                    noteYields(switched: passStart &- answeredAt >= switchNs, answered: true)
                }
                continue
            }
            // The doorbells and the values they hold while nothing is posted: the spin and the
            // sleep below watch these (plain words, no reference counting per round).
            words.removeAll(keepingCapacity: true)
            expected.removeAll(keepingCapacity: true)
            var spinUntil: UInt64 = 0
            for v in views {
                v._withUnsafeGuaranteedRef { c in
                    let (word, last) = c.doorbell
                    words.append(word)
                    expected.append(last)
                    spinUntil = max(spinUntil, c.spinDeadline)
                }
            }
            // Spin while a channel is within its budget of its last answer, yielding the CPU: a
            // client sharing this CPU must get to run (without yields a same-CPU 1-token route
            // cost ~58 µs). Every 8 rounds at first; every round while yields switch to another
            // thread (a client on this CPU: 4.9 µs a route against 6.6 µs), until 16 spins in a
            // row found their request without one that did (a yield then only costs a system
            // call, ~0.2 µs of reaction time).
            var now = mro_now_ns()
            if now < spinUntil {
                var rounds = 0
                var switched = false
                var found = false
                spin: while now < spinUntil && !changed.load(ordering: .relaxed) {
                    for i in words.indices where mro_load_u32(words[i]!) != expected[i] {
                        found = true
                        passStart = now
                        break spin
                    }
                    rounds += 1
                    if yieldEveryRound || rounds & 7 == 0 {
                        sched_yield()
                        let after = mro_now_ns()
                        switched = switched || after &- now >= switchNs
                        now = after
                    } else {
                        mro_cpu_relax()
                        now = mro_now_ns()
                    }
                }
                noteYields(switched: switched, answered: found)
                continue
            }
            let gone = list.filter { $0.segment.faulted || !registry.isLive($0.segment) }
            if !gone.isEmpty {
                drop(gone)
                continue
            }
            if list.isEmpty && exitWhenEmpty { continue }
            layers.drop()
            for c in list { c.willSleep() }
            var posted = false
            for i in words.indices where mro_load_u32(words[i]!) != expected[i] { posted = true }
            let wakeValue = mro_load_u32(wakeWord)
            words.append(wakeWord)
            expected.append(wakeValue)
            if !posted && !changed.load(ordering: .acquiring) && !stopping.load(ordering: .relaxed) {
                _ = words.withUnsafeBufferPointer { w in
                    mro_futex_waitv(w.baseAddress, expected, Int32(w.count), ChannelTable.idleCheckNs)
                }
            }
            for c in list { c.woke() }
        }
    }
}
