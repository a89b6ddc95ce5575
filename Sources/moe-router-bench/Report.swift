import Foundation
import MoERouting

struct ClosedRow {
    var result: LoadResult
    var echo: LoadResult?
    var kernelNs: Double?

    /// daemon p50 / echo p50.
    var overEcho: Double? { echo.map { result.percentileUs(50) / $0.percentileUs(50) } }
    /// daemon p50 / (kernel + echo p50).
    var overKernelEcho: Double? {
        guard let echo, let kernelNs else { return nil }
        return result.percentileUs(50) / (kernelNs / 1000 + echo.percentileUs(50))
    }
    /// daemon throughput / echo throughput.
    var throughputVsEcho: Double? { echo.map { result.requestsPerSecond / $0.requestsPerSecond } }
    /// The pipelined echo (`pipelineWindow` requests in flight per client), when measured.
    var pipelinedEcho: LoadResult?
    var pipelineWindow = 0
    /// daemon throughput / pipelined echo throughput.
    var throughputVsPipelined: Double? { pipelinedEcho.map { result.requestsPerSecond / $0.requestsPerSecond } }
}

struct OpenRow {
    var offered: Double
    var result: LoadResult
    var withinSLO: Bool
}

struct SoakRow {
    var result: LoadResult
    var samples: [DaemonSample]
    var offered: Double
    /// Whether the daemon kept up with the offered rate (achieved ≥ 95 % of it).
    var keptUp: Bool { result.requestsPerSecond >= 0.95 * offered }
    /// Flat within ±5% once warm (the first sample is the warm-up); nil when not sampled.
    var rssFlat: Bool? { isFlat(samples.dropFirst().map(\.rssKiB), tolerance: 0.05) }
    var fdsFlat: Bool? { isFlat(samples.dropFirst().map(\.fds), tolerance: 0.05) }
}

struct Report {
    var endpoint: String
    var layer: String
    var dtype: DType
    var closed: [ClosedRow] = []
    var open: [OpenRow] = []
    var knee: Double?
    /// The p90 bound the last open-loop step was judged by.
    var sloP90Us: Double?
    var soak: SoakRow?

    var totalErrors: Int {
        closed.map(\.result.errorCount).reduce(0, +) + open.map(\.result.errorCount).reduce(0, +)
            + (soak?.result.errorCount ?? 0)
    }

    func printTables() {
        print("moe-router-bench: layer \(layer), \(dtype) input, endpoint \(endpoint)")
        print("\nclosed loop (latency in µs; echo = bare ZeroMQ DEALER/ROUTER with the same frame sizes; kernel = in-process CPU backend)")
        let pipelined = closed.contains { $0.pipelinedEcho != nil }
        if pipelined {
            print("(pipe = the same echo with \(closed.map(\.pipelineWindow).max() ?? 0) requests in flight per client: the transport's rate when nobody waits)")
        }
        let head = ["clients", "batch", "bufs", "path", "req/s", "Mtok/s", "p50", "p90", "p99", "p99.9", "max", "errors",
                    "echo p50", "echo req/s", "kernel", "d/echo", "d/(k+echo)", "tput/echo"]
            + (pipelined ? ["pipe req/s", "tput/pipe"] : [])
        var rows: [[String]] = []
        for r in closed {
            let x = r.result
            let pipe = pipelined ? [r.pipelinedEcho.map { f($0.requestsPerSecond, 0) } ?? "-",
                                    r.throughputVsPipelined.map { f($0, 2) } ?? "-"] : []
            rows.append([
                "\(x.config.clients)", x.config.batchLabel, x.config.buffersLabel,
                x.config.pathLabel + (x.overZeroMQ > 0 ? "*" : ""),
                f(x.requestsPerSecond, 0), f(x.tokensPerSecond / 1e6, 3), f(x.percentileUs(50), 1), f(x.percentileUs(90), 1),
                f(x.percentileUs(99), 1), f(x.percentileUs(99.9), 1), f(x.maxUs, 1), "\(x.errorCount)",
                r.echo.map { f($0.percentileUs(50), 1) } ?? "-", r.echo.map { f($0.requestsPerSecond, 0) } ?? "-",
                r.kernelNs.map { f($0 / 1000, 1) } ?? "-", r.overEcho.map { f($0, 2) } ?? "-",
                r.overKernelEcho.map { f($0, 2) } ?? "-", r.throughputVsEcho.map { f($0, 2) } ?? "-",
            ] + pipe)
        }
        table(head, rows)
        if closed.contains(where: { $0.result.overZeroMQ > 0 }) {
            print("* some of these routes were served over ZeroMQ: the client library could not use a channel (tcp, an old daemon, a refused channel)")
        }
        let pairs = channelPairs
        if !pairs.isEmpty {
            print("\nchannel vs ZeroMQ (same configuration, alternating blocks of one run)")
            table(["clients", "batch", "bufs", "zmq req/s", "channel req/s", "tput channel/zmq", "zmq p50", "channel p50",
                   "channel - kernel p50"],
                  pairs.map { z, c in
                      [ "\(z.result.config.clients)", z.result.config.batchLabel, z.result.config.buffersLabel,
                        f(z.result.requestsPerSecond, 0), f(c.result.requestsPerSecond, 0),
                        f(c.result.requestsPerSecond / z.result.requestsPerSecond, 2), f(z.result.percentileUs(50), 1),
                        f(c.result.percentileUs(50), 1), c.kernelNs.map { f(c.result.percentileUs(50) - $0 / 1000, 1) } ?? "-" ]
                  })
        }
        if !open.isEmpty {
            print("\nopen loop (offered rate, latency from the scheduled send time, µs)")
            table(["offered", "achieved", "p50", "p90", "p99", "p99.9", "max", "errors", "within SLO"],
                  open.map { o in
                      let x = o.result
                      return [f(o.offered, 0), f(x.requestsPerSecond, 0), f(x.percentileUs(50), 1), f(x.percentileUs(90), 1),
                              f(x.percentileUs(99), 1), f(x.percentileUs(99.9), 1), f(x.maxUs, 1), "\(x.errorCount)",
                              o.withinSLO ? "yes" : "no"]
                  })
            print("knee: " + (knee.map { "\(f($0, 0)) req/s" } ?? "below the first step")
                  + (sloP90Us.map { " (a step is within the SLO when it achieves ≥ 95 % of the offered rate with p90 ≤ \(f($0, 0)) µs)" } ?? ""))
        }
        if let soak {
            let x = soak.result
            print("\nsoak at 80% of the knee: offered \(f(soak.offered, 0)) req/s, achieved \(f(x.requestsPerSecond, 0)) req/s\(soak.keptUp ? "" : " (FELL BEHIND: the knee was optimistic)"), p99 \(f(x.percentileUs(99), 1)) µs, errors \(x.errorCount)")
            if let rss = soak.rssFlat, let fds = soak.fdsFlat, let a = soak.samples.dropFirst().first, let b = soak.samples.last {
                print("daemon RSS \(a.rssKiB) -> \(b.rssKiB) KiB (flat ±5%: \(rss ? "yes" : "NO")), fds \(a.fds) -> \(b.fds) (flat: \(fds ? "yes" : "NO"))")
            } else {
                print("daemon RSS/fds: not sampled (pass --daemon-pid; a soak of at least 3 s)")
            }
        }
        let all = closed.map(\.result) + open.map(\.result) + (soak.map { [$0.result] } ?? [])
        let errs = all.flatMap(\.errors).reduce(into: [String: Int]()) { $0[$1.key, default: 0] += $1.value }
        if !errs.isEmpty { print("\nerrors by status (every section): " + errs.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")) }
    }

    /// The ZeroMQ and channel rows of each configuration measured both ways.
    var channelPairs: [(zmq: ClosedRow, channel: ClosedRow)] {
        func key(_ r: ClosedRow) -> String { "\(r.result.config.clients)/\(r.result.config.batchLabel)/\(r.result.config.shm)" }
        let channels = Dictionary(closed.filter(\.result.config.channel).map { (key($0), $0) }, uniquingKeysWith: { a, _ in a })
        return closed.filter { !$0.result.config.channel }.compactMap { z in channels[key(z)].map { (z, $0) } }
    }

    var json: [String: Any] {
        func res(_ x: LoadResult) -> [String: Any] {
            ["requests": x.requests, "tokens": x.tokens, "elapsed_s": Double(x.elapsedNs) / 1e9,
             "requests_per_s": x.requestsPerSecond,
             "tokens_per_s": x.tokensPerSecond, "errors": x.errors,
             "latency_us": ["p50": x.percentileUs(50), "p90": x.percentileUs(90), "p99": x.percentileUs(99),
                            "p99.9": x.percentileUs(99.9), "max": x.maxUs]]
        }
        var out: [String: Any] = ["endpoint": endpoint, "layer": layer, "dtype": "\(dtype)", "total_errors": totalErrors]
        out["closed_loop"] = closed.map { r -> [String: Any] in
            var d = res(r.result)
            d["clients"] = r.result.config.clients
            d["batch"] = r.result.config.batchLabel
            d["transport"] = r.result.config.pathLabel
            d["buffers"] = r.result.config.buffersLabel
            d["served_over_zmq"] = r.result.overZeroMQ
            if let e = r.echo { d["echo"] = res(e) }
            if let k = r.kernelNs { d["kernel_us"] = k / 1000 }
            if let v = r.overEcho { d["daemon_over_echo_p50"] = v }
            if let v = r.overKernelEcho { d["daemon_over_kernel_plus_echo_p50"] = v }
            if let v = r.throughputVsEcho { d["throughput_over_echo"] = v }
            if let p = r.pipelinedEcho, let v = r.throughputVsPipelined {
                d["pipelined_echo"] = res(p)
                d["pipelined_echo_window"] = r.pipelineWindow
                d["throughput_over_pipelined_echo"] = v
            }
            return d
        }
        out["channel_vs_zmq"] = channelPairs.map { z, c -> [String: Any] in
            var d: [String: Any] = ["clients": z.result.config.clients, "batch": z.result.config.batchLabel,
                                    "buffers": z.result.config.buffersLabel,
                                    "throughput_channel_over_zmq": c.result.requestsPerSecond / z.result.requestsPerSecond,
                                    "p50_channel_over_zmq": c.result.percentileUs(50) / z.result.percentileUs(50)]
            if let k = c.kernelNs { d["channel_p50_minus_kernel_us"] = c.result.percentileUs(50) - k / 1000 }
            return d
        }
        out["open_loop"] = open.map { o -> [String: Any] in
            var d = res(o.result)
            d["offered_per_s"] = o.offered
            d["within_slo"] = o.withinSLO
            return d
        }
        if let knee { out["knee_per_s"] = knee }
        if let sloP90Us { out["slo_p90_us"] = sloP90Us }
        if let soak {
            var d = res(soak.result)
            d["samples"] = soak.samples.map { ["s": $0.seconds, "rss_kib": $0.rssKiB, "fds": $0.fds] }
            d["offered_per_s"] = soak.offered
            d["kept_up"] = soak.keptUp
            d["rss_flat"] = soak.rssFlat.map { $0 as Any } ?? NSNull()  // null: not sampled
            d["fds_flat"] = soak.fdsFlat.map { $0 as Any } ?? NSNull()
            out["soak"] = d
        }
        return out
    }

    var charts: [LineChart] {
        var list: [LineChart] = []
        if !open.isEmpty {
            list.append(LineChart(
                title: "\(layer): latency vs offered load", xLabel: "offered requests/s", yLabel: "latency (µs)", logX: true,
                series: [50.0, 99, 99.9].map { p in ("p\(p == 99.9 ? "99.9" : String(Int(p)))",
                                                    open.map { ($0.offered, $0.result.percentileUs(p)) }) },
                dashed: { $0 > 0 }))
        }
        let single = closed.filter { $0.result.config.batches.count == 1 }
        if !single.isEmpty {
            var series: [(name: String, points: [(x: Double, y: Double)])] = []
            let groups = Dictionary(grouping: single) {
                "\($0.result.config.clients) cl, \($0.result.config.buffersLabel), \($0.result.config.pathLabel)"
            }
            for key in groups.keys.sorted() {
                let rows = groups[key]!.sorted { $0.result.config.maxTokens < $1.result.config.maxTokens }
                series.append(("p50 " + key, rows.map { (Double($0.result.config.maxTokens), $0.result.percentileUs(50)) }))
                series.append(("p99 " + key, rows.map { (Double($0.result.config.maxTokens), $0.result.percentileUs(99)) }))
            }
            list.append(LineChart(title: "\(layer): latency vs batch size (p50 solid, p99 dashed)",
                                  xLabel: "tokens per request", yLabel: "latency (µs)", logX: true, series: series,
                                  colorOf: { $0 / 2 }, dashed: { $0 % 2 == 1 }))
        }
        return list
    }
}

func f(_ v: Double, _ digits: Int) -> String {
    guard v.isFinite else { return "-" }
    return String(format: "%.\(digits)f", v)
}

func table(_ head: [String], _ rows: [[String]]) {
    let widths = head.indices.map { i in max(head[i].count, rows.map { $0[i].count }.max() ?? 0) }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    print(line(head))
    for r in rows { print(line(r)) }
}
