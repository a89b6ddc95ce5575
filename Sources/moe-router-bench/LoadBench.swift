import ArgumentParser
import CMoERouterClient
import Foundation
import MoERouterEcho
import MoERouting

/// moe-router-bench: how much can the daemon take, and what does it cost over the bare
/// transport? Closed loop (N clients, one request in flight each) over clients × batches ×
/// transports, optionally an open-loop rate sweep that finds the knee and a soak at 80% of it.
/// Every configuration is compared with a bare ZeroMQ echo of the same frame sizes and with the
/// in-process kernel, measured in the same run.
@main
struct LoadBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-router-bench",
        abstract: "Load-test a running moe-routerd: latency percentiles, throughput, baselines.",
        discussion: "Exit status: 0 when every request succeeded, 3 when some failed (counted by status), 1 on setup errors.")

    @Option(help: "Daemon endpoint (default: the client library's default endpoint).")
    var endpoint: String?
    @Option(help: "Layer name (a preset name when the daemon serves presets).")
    var layer = "deepseek-v3"
    @Option(help: "Input dtype: fp32, bf16, fp16.")
    var dtype = "bf16"
    @Option(help: "Closed loop: comma-separated client counts.")
    var clients = "1,8"
    @Option(help: "Closed loop: comma-separated batch sizes (tokens), one configuration each.")
    var batches = "1,64,4096"
    @Option(help: "A batch-size mix for one configuration instead, e.g. 1:0.9,64:0.09,4096:0.01.")
    var mix: String?
    @Option(help: "How ROUTE travels: zmq (ZeroMQ messages), channel (the client library's shared-memory channel), or both, measured in alternating blocks. (inline and shm, this option's old values, mean --buffers inline|shm over zmq.)")
    var transport = "both"
    @Option(help: "Where the tensors travel: inline (in the request; on a channel, copied into the channel's data area), shm (a registered segment), or both.")
    var buffers = "both"
    @Option(help: "Seconds per configuration.")
    var seconds = 2.0
    @Option(help: "Stop a configuration (a closed-loop row, an open-loop step) after this many requests (across its clients).")
    var requests: Int?
    @Option(help: "Closed loop: split each configuration into this many blocks, alternating with blocks of its echo baseline, so both see the same spells of a shared machine (totals over the blocks).")
    var blocks = 1
    @Option(help: "Closed loop: also measure a pipelined echo, each client keeping this many requests in flight (the transport's rate when nobody waits), and print the daemon's throughput against it (0: off).")
    var pipelinedEcho = 0
    @Flag(help: "Run the open-loop rate sweep (finds the knee).")
    var openLoop = false
    @Option(help: "Open loop: clients, batch size, transport.")
    var openClients = 8
    @Option var openBatch = 64
    @Option(help: "Open loop: buffers (inline or shm).")
    var openTransport = "shm"
    @Option(help: "Open loop: path (zmq or channel).")
    var openPath = "zmq"
    @Option(help: "Open loop: first offered rate (req/s), growth factor, last rate.")
    var rateStart = 500.0
    @Option var rateFactor = 2.0
    @Option var rateMax = 1_000_000.0
    @Option(help: "Open loop: p90 latency (µs) above which a rate is past the knee (default: 5× the lowest p90 of the steps so far, at least 2000). p90, not p99: on a shared machine one short stall decides the p99 of a 2-second step.")
    var sloP90Us: Double?
    @Option(help: "After the sweep, run this many seconds at 80% of the knee and watch the daemon's RSS and fds.")
    var soakSeconds = 0.0
    @Option(help: "The daemon's pid, for RSS and fd sampling.")
    var daemonPid: Int32?
    @Flag(help: "Skip the echo and kernel baselines.")
    var noBaselines = false
    @Flag(help: "Print JSON instead of tables.")
    var json = false
    @Option(help: "Write latency charts (vs offered load, vs batch size) to this SVG file.")
    var svg: String?
    @Flag(help: "No progress lines on stderr.")
    var quiet = false

    mutating func run() throws {
        guard let dt = DType(name: dtype) else { throw ValidationError("unknown dtype \(dtype)") }
        guard blocks >= 1 else { throw ValidationError("--blocks must be at least 1") }
        guard pipelinedEcho >= 0 else { throw ValidationError("--pipelined-echo must be 0 (off) or a window of at least 1") }
        guard seconds > 0, seconds.isFinite else { throw ValidationError("--seconds must be positive") }
        if let requests, requests < 1 { throw ValidationError("--requests must be at least 1") }
        guard soakSeconds >= 0, soakSeconds.isFinite else { throw ValidationError("--soak-seconds must be 0 or more") }
        if openLoop {
            guard openClients >= 1 else { throw ValidationError("--open-clients must be at least 1") }
            guard openBatch >= 1 else { throw ValidationError("--open-batch must be at least 1 token") }
            guard ["inline", "shm"].contains(openTransport) else { throw ValidationError("--open-transport must be inline or shm") }
            guard ["zmq", "channel"].contains(openPath) else { throw ValidationError("--open-path must be zmq or channel") }
            guard rateStart > 0, rateStart.isFinite else { throw ValidationError("--rate-start must be a positive rate") }
            guard rateFactor > 1, rateFactor.isFinite else { throw ValidationError("--rate-factor must be above 1 (each step offers more)") }
            guard rateMax >= rateStart else { throw ValidationError("--rate-max must be at least --rate-start") }
            if let sloP90Us, !(sloP90Us > 0) { throw ValidationError("--slo-p90-us must be positive") }
        }
        let ep = endpoint ?? defaultEndpoint()
        var bufferKind = buffers
        let paths: [Bool]
        switch transport {
        case "zmq": paths = [false]
        case "channel": paths = [true]
        case "both": paths = [false, true]
        case "inline", "shm":
            // The option's meaning before channels existed: buffers, over ZeroMQ (old commands
            // measure what they measured).
            bufferKind = transport
            paths = [false]
        default: throw ValidationError("--transport must be zmq, channel or both")
        }
        let transports: [Bool] = switch bufferKind {
        case "inline": [false]
        case "shm": [true]
        case "both": [false, true]
        default: throw ValidationError("--buffers must be inline, shm or both")
        }
        let clientCounts = try ints(clients, "clients")
        let batchSets: [[(tokens: Int, weight: Double)]] = try mix.map { [try parseMix($0)] }
            ?? ints(batches, "batches").map { [($0, 1.0)] }
        let local = try localLayer(endpoint: ep, name: layer)
        // The bare transport: frames of a ROUTE request's sizes, answered with a ROUTE answer's.
        let echo = noBaselines ? nil : try EchoServer(endpoint: "ipc:///tmp/moe-bench-echo-\(getpid()).sock", answer: .sized)
        echo?.start()
        defer { echo?.stop() }
        var report = Report(endpoint: ep, layer: layer, dtype: dt)

        for shm in transports {
            for set in batchSets {
                for n in clientCounts {
                    let blockSeconds = seconds / Double(blocks)
                    let configs = paths.map { channel in
                        LoadConfig(clients: n, batches: set, shm: shm, channel: channel, dtype: dt, rate: nil,
                                   seconds: blockSeconds, maxRequests: requests.map { max(1, $0 / blocks) })
                    }
                    if !quiet {
                        progressLine("closed loop: \(n) clients, batch \(configs[0].batchLabel), \(configs[0].buffersLabel), over \(configs.map(\.pathLabel).joined(separator: " and "))\n")
                    }
                    let shape = echo != nil && set.count == 1
                        ? ExchangeShape(tokens: set[0].tokens, experts: local.spec.numExperts, topK: local.spec.topK,
                                        dtype: dt, shm: shm) : nil
                    var daemonRuns = [[LoadResult]](repeating: [], count: configs.count)
                    var echoRuns: [LoadResult] = [], pipelinedRuns: [LoadResult] = []
                    for _ in 0..<blocks {
                        // The paths alternate block by block, so both see the same spells.
                        for (i, config) in configs.enumerated() {
                            daemonRuns[i].append(try runLoad(endpoint: ep, layer: layer, config: config,
                                                             progress: !quiet && blockSeconds >= 5))
                        }
                        if let echo, let shape {
                            echoRuns.append(runEcho(server: echo, shape: shape, clients: n,
                                                    seconds: min(blockSeconds, 2)))
                            if pipelinedEcho > 0 {
                                pipelinedRuns.append(runEcho(server: echo, shape: shape, clients: n,
                                                             seconds: min(blockSeconds, 2), window: pipelinedEcho))
                            }
                        }
                    }
                    let kernelNs = shape.map { _ in kernelTimeNs(layer: local, dtype: dt, tokens: set[0].tokens) }
                    for runs in daemonRuns {
                        var row = ClosedRow(result: LoadResult.merged(runs))
                        if shape != nil {
                            row.echo = LoadResult.merged(echoRuns)
                            if !pipelinedRuns.isEmpty {
                                row.pipelinedEcho = LoadResult.merged(pipelinedRuns)
                                row.pipelineWindow = pipelinedEcho
                            }
                            row.kernelNs = kernelNs
                        }
                        report.closed.append(row)
                    }
                }
            }
        }
        if openLoop { try runOpenLoop(ep, dt, &report) }
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: report.json, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
        } else {
            report.printTables()
        }
        if let svg { try svgDocument(report.charts).write(toFile: svg, atomically: true, encoding: .utf8) }
        if report.totalErrors > 0 { throw ExitCode(3) }
    }

    func runOpenLoop(_ ep: String, _ dt: DType, _ report: inout Report) throws {
        let shm = openTransport == "shm", channel = openPath == "channel"
        var rate = rateStart
        var lowestP90 = Double.infinity
        var retried = false
        while rate <= rateMax {
            let config = LoadConfig(clients: openClients, batches: [(openBatch, 1)], shm: shm, channel: channel, dtype: dt,
                                    rate: rate, seconds: seconds, maxRequests: requests)
            if !quiet { progressLine("open loop: offered \(Int(rate)) req/s\n") }
            let r = try runLoad(endpoint: ep, layer: layer, config: config, progress: false)
            lowestP90 = min(lowestP90, r.percentileUs(90))
            let limit = sloP90Us ?? max(2000, 5 * lowestP90)
            let ok = r.errorCount == 0 && r.requestsPerSecond >= 0.95 * rate && r.percentileUs(90) <= limit
            report.open.append(OpenRow(offered: rate, result: r, withinSLO: ok))
            report.sloP90Us = limit
            if !ok {
                // One more try at the same rate before concluding: on a shared machine a single
                // stall of the neighbours can sink one step (rows for both tries are reported).
                if !retried && r.errorCount == 0 { retried = true; continue }
                break
            }
            retried = false
            report.knee = rate
            rate *= rateFactor
        }
        guard soakSeconds > 0, let knee = report.knee else { return }
        let config = LoadConfig(clients: openClients, batches: [(openBatch, 1)], shm: shm, channel: channel, dtype: dt,
                                rate: 0.8 * knee, seconds: soakSeconds)
        if !quiet { progressLine("soak: \(Int(soakSeconds))s at \(Int(0.8 * knee)) req/s\n") }
        let pid = daemonPid
        let start = Date()
        let samples = SampleLog()
        let sampler = Thread {
            while Date().timeIntervalSince(start) < config.seconds {
                if let pid, let s = sampleDaemon(pid: pid, at: Date().timeIntervalSince(start)) {
                    samples.append(s)
                }
                Thread.sleep(forTimeInterval: 1)
            }
        }
        sampler.start()
        let r = try runLoad(endpoint: ep, layer: layer, config: config, progress: !quiet)
        Thread.sleep(forTimeInterval: 0.2)
        report.soak = SoakRow(result: r, samples: samples.all, offered: 0.8 * knee)
    }

    func ints(_ s: String, _ what: String) throws -> [Int] {
        let v = s.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.allSatisfy({ $0 > 0 }) else { throw ValidationError("--\(what): positive integers, comma-separated") }
        return v
    }

    func parseMix(_ s: String) throws -> [(tokens: Int, weight: Double)] {
        try s.split(separator: ",").map { part in
            let kv = part.split(separator: ":")
            guard kv.count == 2, let t = Int(kv[0]), let w = Double(kv[1]), t > 0, w > 0 else {
                throw ValidationError("--mix: TOKENS:WEIGHT pairs, e.g. 1:0.9,64:0.1")
            }
            return (t, w)
        }
    }
}

func defaultEndpoint() -> String {
    var buf = [CChar](repeating: 0, count: 512)
    _ = moe_default_endpoint(&buf, buf.count)
    return String(cString: buf)
}

import Synchronization
