import CMoEKernels
import Glibc
import Testing
@testable import MoERouting

/// Sharded counters (moe_kernels.h): each thread adds to its own row, the last row is shared by
/// threads that found none free, and a thread's exit frees its row. However threads come and go,
/// no addition is lost.
@Suite struct ShardedCounterTests {
    /// Runs `body(i)` on `count` new threads, `batch` at a time (each batch exits before the next
    /// starts, so rows are handed back and taken again).
    static func onThreads(_ count: Int, batch: Int, _ body: @escaping @Sendable (Int) -> Void) {
        final class Job: @unchecked Sendable {
            let body: @Sendable (Int) -> Void
            let index: Int
            init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) { (self.body, self.index) = (body, index) }
        }
        var start = 0
        while start < count {
            let end = min(count, start + batch)
            var threads: [pthread_t] = []
            for i in start..<end {
                var t = pthread_t()
                let job = Unmanaged.passRetained(Job(body, i)).toOpaque()
                let rc = pthread_create(&t, nil, { raw in
                    let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
                    job.body(job.index)
                    return nil
                }, job)
                precondition(rc == 0, "pthread_create: \(rc)")
                threads.append(t)
            }
            for t in threads { pthread_join(t, nil) }
            start = end
        }
    }

    @Test func noAdditionIsLostWithMoreThreadsThanRows() {
        let counter = ShardedCounter()
        // 24 at once: more than the 15 rows of their own, so some share the last row.
        Self.onThreads(72, batch: 24) { i in
            for _ in 0..<20_000 { counter.add(1) }
            counter.add(UInt64(i))
        }
        #expect(counter.value == 72 * 20_000 + (0..<72).reduce(0, +))
    }

    @Test func expertCountsFromManyThreadsAddUp() {
        let E: Int32 = 40, k: Int32 = 4
        let counts = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(mrk_counts_size(E)))
        counts.initialize(repeating: 0, count: Int(mrk_counts_size(E)))
        defer { counts.deallocate() }
        let block = UInt(bitPattern: counts)
        // 2 tokens (n * 4 < E: the per-id path) and 16 tokens (the batched one), on each thread.
        Self.onThreads(40, batch: 20) { i in
            let c = UnsafeMutablePointer<UInt64>(bitPattern: block)!
            for tokens in [2, 16] {
                var ids = (0..<tokens * Int(k)).map { Int32(($0 + i) % Int(E)) }
                for _ in 0..<500 { mrk_place_and_count(&ids, Int64(tokens), k, 0, nil, nil, c, E) }
            }
        }
        var expected = [UInt64](repeating: 0, count: Int(E))
        for i in 0..<40 {
            for tokens in [2, 16] { for j in 0..<tokens * Int(k) { expected[(j + i) % Int(E)] += 500 } }
        }
        var got = [UInt64](repeating: 0, count: Int(E))
        mrk_counts_load(counts, &got, E)
        #expect(got == expected)
    }

    @Test func aThreadKeepsItsRowAndAnExitedThreadsRowIsReused() {
        // (The test runner's own threads may hold rows: only the hand-over is checked.)
        final class Rows: @unchecked Sendable { var first = -1, second = -1, again = -1 }
        let rows = Rows()
        Self.onThreads(1, batch: 1) { _ in
            rows.first = Int(mrk_thread_shard())
            rows.second = Int(mrk_thread_shard())
        }
        Self.onThreads(1, batch: 1) { _ in rows.again = Int(mrk_thread_shard()) }
        #expect(rows.first == rows.second)
        #expect(rows.first >= 0 && rows.first < Int(MRK_SHARDS))
        if rows.first < Int(MRK_SHARDS) - 1 { #expect(rows.again == rows.first, "the lowest free row is taken again") }
    }
}
