import CMoERouterClient
import CMoERouterWire
import Histogram
import MoERouting
import Synchronization

/// One load configuration: who sends what, how.
struct LoadConfig: Sendable {
    var clients: Int
    /// (tokens, weight) pairs; each request draws its size from them.
    var batches: [(tokens: Int, weight: Double)]
    var shm: Bool
    /// ROUTE over the client library's shared-memory channel (else over ZeroMQ).
    var channel: Bool = false
    var dtype: DType
    /// Closed loop when nil; otherwise the offered rate in requests/s across all clients.
    var rate: Double?
    var seconds: Double
    var maxRequests: Int?

    var pathLabel: String { channel ? "channel" : "zmq" }
    var buffersLabel: String { shm ? "shm" : "inline" }

    var batchLabel: String {
        batches.count == 1 ? "\(batches[0].tokens)" : batches.map { "\($0.tokens):\($0.weight)" }.joined(separator: ",")
    }
    var maxTokens: Int { batches.map(\.tokens).max() ?? 1 }
}

/// What one configuration measured.
struct LoadResult {
    var config: LoadConfig
    var latency = Histogram<UInt64>(highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
    var requests = 0
    var tokens = 0
    var errors: [String: Int] = [:]
    var elapsedNs: UInt64 = 0
    /// Successful routes a channel run had served over ZeroMQ instead (the library could not
    /// use a channel): its figures are then not the channel's.
    var overZeroMQ = 0

    var requestsPerSecond: Double { Double(requests) / (Double(elapsedNs) / 1e9) }
    var tokensPerSecond: Double { Double(tokens) / (Double(elapsedNs) / 1e9) }
    func percentileUs(_ p: Double) -> Double { Double(latency.valueAtPercentile(p)) / 1000 }
    var maxUs: Double { Double(latency.max) / 1000 }
    var errorCount: Int { errors.values.reduce(0, +) }

    /// Several runs of one configuration as one: histograms merged, counts and times summed.
    static func merged(_ runs: [LoadResult]) -> LoadResult {
        var total = runs[0]
        for r in runs.dropFirst() {
            total.latency.add(r.latency)
            total.requests += r.requests
            total.tokens += r.tokens
            total.errors.merge(r.errors, uniquingKeysWith: +)
            total.elapsedNs += r.elapsedNs
            total.overZeroMQ += r.overZeroMQ
        }
        return total
    }
}

/// A failure to set a client up (not a request error: those are counted).
struct SetupError: Error, CustomStringConvertible { let description: String }

/// Drives the daemon with `config.clients` connections, each on its own thread with its own
/// shm segment (when `shm`), and merges their histograms.
func runLoad(endpoint: String, layer: String, config: LoadConfig, progress: Bool) throws -> LoadResult {
    let results = Mutex<[LoadResult]>([])
    let setupFailure = Mutex<String?>(nil)
    let perClientCap = config.maxRequests.map { max(1, $0 / config.clients) }
    let interval = config.rate.map { UInt64(1e9 * Double(config.clients) / $0) }
    let done = Atomic<Int>(0)
    let ticker = progress ? ProgressTicker(total: config.seconds) : nil
    // The clock starts once every client is connected and has its segment and input (for big
    // batches that setup can take longer than a short run).
    let startLine = StartLine(parties: config.clients + (ticker == nil ? 0 : 1))
    runThreads(config.clients + (ticker == nil ? 0 : 1)) { index in
        if index == config.clients {
            guard let start = startLine.arrive() else { return }
            ticker?.run(until: start + UInt64(config.seconds * 1e9)) { done.load(ordering: .relaxed) }
            return
        }
        do {
            let r = try clientLoop(endpoint: endpoint, layer: layer, config: config, index: index, startLine: startLine,
                                   cap: perClientCap, interval: interval, done: done)
            results.withLock { $0.append(r) }
        } catch {
            startLine.abandon()
            setupFailure.withLock { $0 = "\(error)" }
        }
    }
    if let f = setupFailure.withLock({ $0 }) { throw SetupError(description: f) }
    var merged = LoadResult(config: config)
    for r in results.withLock({ $0 }) {
        merged.latency.add(r.latency)
        merged.requests += r.requests
        merged.tokens += r.tokens
        merged.errors.merge(r.errors, uniquingKeysWith: +)
        merged.elapsedNs = max(merged.elapsedNs, r.elapsedNs)
        merged.overZeroMQ += r.overZeroMQ
    }
    return merged
}

private func clientLoop(endpoint: String, layer: String, config: LoadConfig, index: Int, startLine: StartLine,
                        cap: Int?, interval: UInt64?, done: borrowing Atomic<Int>) throws -> LoadResult {
    var client: OpaquePointer?
    let rc = moe_connect(endpoint, 10_000, &client)
    guard rc == 0, let client else { throw SetupError(description: "connect \(endpoint): \(String(cString: moe_status_name(rc)))") }
    defer { moe_close(client) }
    _ = moe_set_channel(client, config.channel ? 1 : 0)
    var info = moe_layer_info()
    guard moe_find_layer(client, layer, &info) == 0 else {
        throw SetupError(description: "layer '\(layer)': \(String(cString: moe_last_error(client)))")
    }
    let E = Int(info.num_experts), k = Int(info.top_k)
    let maxT = config.maxTokens
    let inBytes = maxT * E * config.dtype.byteSize
    let input = randomLogits(count: maxT * E, dtype: config.dtype, seed: UInt64(index + 1))
    var weights = [Float](repeating: 0, count: maxT * k)
    var ids = [Int32](repeating: 0, count: maxT * k)
    var segment = moe_segment()
    if config.shm {
        let size = UInt64(inBytes + maxT * k * 8)
        let src = moe_segment_create(client, size, &segment)
        guard src == 0 else { throw SetupError(description: "segment: \(String(cString: moe_last_error(client)))") }
        input.withUnsafeBytes { segment.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
    defer { if config.shm { moe_segment_destroy(client, &segment) } }

    var result = LoadResult(config: config)
    var rng = UInt64(index + 17) &* 0x9E37_79B9_7F4A_7C15
    let totalWeight = config.batches.map(\.weight).reduce(0, +)
    guard let start = startLine.arrive() else { return result }  // another client's setup failed
    let end = start + UInt64(config.seconds * 1e9)
    var scheduled = start + (interval.map { $0 * UInt64(index) / UInt64(config.clients) } ?? 0)
    while nowNs() < end, cap.map({ result.requests < $0 }) ?? true {
        rng = rng &* 6364136223846793005 &+ 1442695040888963407
        var pick = Double(rng >> 11) / Double(1 << 53) * totalWeight
        var tokens = config.batches[0].tokens
        for b in config.batches {
            pick -= b.weight
            if pick < 0 { tokens = b.tokens; break }
        }
        if let interval {
            sleepUntil(scheduled)
        }
        let sent = interval == nil ? nowNs() : scheduled
        var out = moe_route_result()
        let status: Int32
        if config.shm {
            status = moe_route_shm(client, info.layer_id, moe_dtype(UInt32(config.dtype.rawValue)), UInt64(tokens),
                                   &segment, &info, 0, UInt64(inBytes), UInt64(inBytes + maxT * k * 4), &out)
        } else {
            status = input.withUnsafeBytes { inp in
                weights.withUnsafeMutableBufferPointer { w in
                    ids.withUnsafeMutableBufferPointer { i in
                        moe_route(client, info.layer_id, moe_dtype(UInt32(config.dtype.rawValue)), UInt64(tokens),
                                  inp.baseAddress, tokens * E * config.dtype.byteSize, w.baseAddress, i.baseAddress,
                                  tokens * k, &out)
                    }
                }
            }
        }
        let finished = nowNs()
        if status == 0 {
            _ = result.latency.record(finished - sent)
            result.requests += 1
            result.tokens += tokens
            if config.channel && moe_last_route_path(client) != MOE_ROUTE_PATH_CHANNEL { result.overZeroMQ += 1 }
        } else {
            result.errors[String(cString: moe_status_name(status)), default: 0] += 1
        }
        done.add(1, ordering: .relaxed)
        if let interval { scheduled += interval }
    }
    result.elapsedNs = nowNs() - start
    return result
}

/// Lets every client finish its setup (connection, segment, input) before the clock starts:
/// `arrive()` waits until all `parties` have arrived and returns their common start time, or
/// nil once one of them gave up (`abandon()`).
final class StartLine: Sendable {
    private let parties: Int
    private let state = Mutex<(arrived: Int, start: UInt64?, abandoned: Bool)>((0, nil, false))

    init(parties: Int) { self.parties = parties }

    func arrive() -> UInt64? {
        state.withLock { s in
            s.arrived += 1
            if s.arrived == parties { s.start = nowNs() }
        }
        while true {
            let (start, abandoned) = state.withLock { ($0.start, $0.abandoned) }
            if abandoned { return nil }
            if let start { return start }
            usleep(200)
        }
    }

    func abandon() { state.withLock { $0.abandoned = true } }
}

/// Random logits, gaussian-like, in `dtype`'s bytes.
func randomLogits(count: Int, dtype: DType, seed: UInt64) -> [UInt8] {
    var s = seed &* 0x2545_F491_4F6C_DD1D
    let values: [Float] = (0..<count).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        var v: Float = 0
        for shift: UInt64 in [0, 16, 32, 48] { v += Float((s >> shift) & 0xffff) / 65536 }
        return (v - 2) * 1.7
    }
    switch dtype {
    case .fp32: return values.withUnsafeBytes { Array($0) }
    default: return values.map { dtype.narrow($0) }.withUnsafeBytes { Array($0) }
    }
}

/// Prints completed requests once a second on long runs.
final class ProgressTicker: Sendable {
    let total: Double
    init(total: Double) { self.total = total }
    func run(until end: UInt64, count: () -> Int) {
        let start = nowNs()
        var next = start + 1_000_000_000
        while next < end {
            sleepUntil(next)
            let t = Double(nowNs() - start) / 1e9
            let line = "  ... \(Int(t))s / \(Int(total))s, \(count()) requests\n"
            progressLine(line)
            next += 1_000_000_000
        }
    }
}

import Glibc
