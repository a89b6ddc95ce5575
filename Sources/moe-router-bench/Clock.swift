import Glibc

/// Monotonic nanoseconds.
@inline(__always) func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Sleeps until the monotonic clock reaches `deadline` (ns).
func sleepUntil(_ deadline: UInt64) {
    let now = nowNs()
    guard deadline > now else { return }
    let d = deadline - now
    var ts = timespec(tv_sec: Int(d / 1_000_000_000), tv_nsec: Int(d % 1_000_000_000))
    var rest = timespec()
    while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
}

/// Runs `count` bodies on their own threads and waits for all of them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    var threads = [pthread_t]()
    final class Box: @unchecked Sendable {
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ b: @escaping @Sendable (Int) -> Void, _ i: Int) { body = b; index = i }
    }
    for i in 0..<count {
        var t = pthread_t()
        let box = Unmanaged.passRetained(Box(body, i)).toOpaque()
        pthread_create(&t, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body(b.index)
            return nil
        }, box)
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
}

/// A progress line on standard error.
func progressLine(_ s: String) {
    var line = s
    if !line.hasSuffix("\n") { line += "\n" }
    _ = line.withCString { write(2, $0, strlen($0)) }
}
