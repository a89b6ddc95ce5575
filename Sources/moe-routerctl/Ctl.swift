import ArgumentParser
import CMoERouterClient
import CMoERouterWire
import Foundation
import Glibc
import MoERouterModels
import MoERouting

/// moe-routerctl: operate a running moe-routerd.
///
/// Exit status: 0 success; 64 bad usage; 69 daemon unreachable; 65 the daemon refused the
/// request (its status name and message are printed); 66 an input file is unreadable or
/// malformed; 73 the output file cannot be written; 75 drain timed out.
@main
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-routerctl",
        abstract: "Operate a running moe-routerd.",
        discussion: "Exit status: 0 ok, 64 usage, 65 refused by the daemon, 66 bad input file, 69 daemon unreachable, 73 cannot write the output, 75 drain timed out.",
        subcommands: [Status.self, Layers.self, Stats.self, Route.self, Placement.self, Load.self, Drain.self, Inspect.self,
                      Keygen.self])
}

struct Connection: ParsableArguments {
    @Option(help: "Daemon endpoint (default: $MOE_ROUTER_ENDPOINT, else the runtime directory's socket).")
    var endpoint: String?
    @Option(help: "Milliseconds to wait for an answer.")
    var timeoutMs: Int32 = 5000
    @Option(help: "CURVE over tcp: the daemon's public key file (its NAME.pub).")
    var curveServerKey: String?
    @Option(help: "CURVE over tcp: this client's key file (NAME.key from moe-routerctl keygen).")
    var curveKey: String?

    func connect() throws -> OpaquePointer {
        var client: OpaquePointer?
        var rc: Int32
        if curveServerKey != nil || curveKey != nil {
            guard let curveServerKey, let curveKey else {
                printError("CURVE needs both --curve-server-key and --curve-key")
                throw ExitCode(64)
            }
            let server = try curveKeys(in: curveServerKey).public
            let mine = try curveKeys(in: curveKey)
            guard let secret = mine.secret else {
                printError("\(curveKey) holds no secret-key line")
                throw ExitCode(66)
            }
            rc = moe_connect_curve(endpoint, timeoutMs, server, mine.public, secret, &client)
        } else {
            rc = moe_connect(endpoint, timeoutMs, &client)
        }
        guard rc == 0, let client else {
            var ep = [CChar](repeating: 0, count: 512)
            _ = moe_default_endpoint(&ep, ep.count)
            let fallback = String(decoding: ep.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            printError("cannot reach moe-routerd at \(endpoint ?? fallback): \(String(cString: moe_status_message(rc)))")
            throw ExitCode(69)
        }
        return client
    }
}

func printError(_ s: String) { _ = (s + "\n").withCString { write(2, $0, strlen($0)) } }

/// Fails with 65 and the daemon's words when `rc` is not MOE_OK.
func check(_ rc: Int32, _ client: OpaquePointer, _ what: String) throws {
    guard rc == 0 else {
        printError("\(what): \(String(cString: moe_status_name(rc))): \(String(cString: moe_last_error(client)))")
        throw ExitCode(65)
    }
}

func text<T>(_ tuple: T) -> String {
    withUnsafeBytes(of: tuple) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
}

let methodNames = ["softmax_topk", "topk_softmax", "grouped_topk", "biased_grouped_topk", "biased_topk", "llama4_top1"]

/// The layer named `layer` (a name, or a layer id).
func findLayer(_ c: OpaquePointer, _ layer: String) throws -> moe_layer_info {
    var info = moe_layer_info()
    if let id = UInt32(layer) {
        var count: UInt32 = 0
        try check(moe_list_layers(c, nil, 0, &count), c, "list layers")
        var infos = [moe_layer_info](repeating: moe_layer_info(), count: Int(count))
        try check(moe_list_layers(c, &infos, count, &count), c, "list layers")
        guard let found = infos.first(where: { $0.layer_id == id }) else {
            printError("no layer with id \(id)")
            throw ExitCode(65)
        }
        info = found
    } else {
        try check(moe_find_layer(c, layer, &info), c, "layer '\(layer)'")
    }
    return info
}
let dtypeNames = ["fp32", "bf16", "fp16"]

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Versions, backend, limits and liveness.")
    @OptionGroup var connection: Connection

    func run() throws {
        let c = try connection.connect()
        defer { moe_close(c) }
        var h = moe_hello_resp()
        try check(moe_hello(c, &h), c, "hello")
        let t0 = Date()
        try check(moe_ping(c), c, "ping")
        let rtt = Date().timeIntervalSince(t0) * 1e6
        print("""
            \(text(h.daemon_version)), protocol \(h.protocol_version) (min \(h.min_protocol_version))
            backend \(text(h.backend)), \(h.workers) workers, queue depth \(h.queue_depth)
            \(String(cString: moe_backend_device(c)))
            layers \(h.layer_count); limits: \(h.max_tokens) tokens, \(h.max_message_bytes) bytes per message, \(h.max_registrations) segments per client, deadline \(h.default_deadline_ms) ms
            shared memory on this connection: \(h.shm_allowed != 0 ? "yes" : "no"); ping \(String(format: "%.0f", rtt)) µs
            """)
        var e = moe_hello_ext()
        guard moe_protocol_version(c) >= 2, moe_limits(c, &e) == 0 else { return }
        print("""
            per uid: \(e.max_registrations_per_uid) segments, \(e.max_mapped_bytes_per_uid) bytes mapped; segments up to \(e.max_segment_bytes) bytes
            unread answers: \(e.max_queued_reply_bytes) bytes per connection, \(e.max_queued_reply_bytes_total) in all; heartbeat \(e.heartbeat_ivl_ms) ms, peers dropped after \(e.heartbeat_timeout_ms) ms
            control operations on this connection: \(e.control_allowed != 0 ? "yes" : "no")
            """)
    }
}

struct Layers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The layers the daemon serves, with their full specs.")
    @OptionGroup var connection: Connection
    @Flag(help: "JSON instead of a table.") var json = false

    func run() throws {
        let c = try connection.connect()
        defer { moe_close(c) }
        var count: UInt32 = 0
        try check(moe_list_layers(c, nil, 0, &count), c, "list layers")
        var infos = [moe_layer_info](repeating: moe_layer_info(), count: Int(count))
        try check(moe_list_layers(c, &infos, count, &count), c, "list layers")
        let scoringNames = ["softmax", "sigmoid", "sqrtsoftplus", "none"]
        let rows: [[String: Any]] = try infos.map { l in
            var row: [String: Any] = [
                "id": l.layer_id, "name": text(l.name), "method": methodNames[Int(l.method)], "num_experts": l.num_experts,
                "top_k": l.top_k, "num_expert_group": l.num_expert_group, "topk_group": l.topk_group,
                "scoring": Int(l.scoring) < scoringNames.count ? scoringNames[Int(l.scoring)] : "\(l.scoring)",
                "renormalize": l.renormalize != 0, "routed_scaling_factor": Double(l.routed_scaling_factor),
                "gate_dtype": dtypeNames[Int(l.gate_dtype)], "nonfinite": l.nonfinite == 1 ? "reject" : "clamp",
                "bias": l.has_bias != 0,
            ]
            if moe_protocol_version(c) >= 2 {
                var v2 = moe_layer_info_v2()
                try check(moe_layer_v2(c, l.layer_id, &v2), c, "layer \(l.layer_id)")
                row["hash_vocab"] = v2.ext.hash_vocab
                row["placement_epoch"] = v2.ext.placement_epoch
                row["num_physical"] = v2.ext.num_physical
                row["renorm_epsilon"] = Double(v2.ext.renorm_epsilon)
            }
            return row
        }
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
            return
        }
        for r in rows {
            var line = "\(r["id"]!)  \(r["name"]!)  \(r["method"]!)  E=\(r["num_experts"]!) k=\(r["top_k"]!) G=\(r["num_expert_group"]!) Gk=\(r["topk_group"]!) \(r["scoring"]!) renorm=\(r["renormalize"]!) rsf=\(r["routed_scaling_factor"]!) gate=\(r["gate_dtype"]!) nonfinite=\(r["nonfinite"]!) bias=\(r["bias"]!)"
            if let v = r["hash_vocab"] as? UInt64, v > 0 { line += " hash=tid2eid[\(v)]" }
            if let e = r["placement_epoch"] as? UInt64, e > 0 { line += " placement=\(r["num_physical"]!) physical (epoch \(e))" }
            if let eps = r["renorm_epsilon"] as? Double, eps > 0 { line += " eps=\(eps)" }
            print(line)
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Request, token, error and shared-memory counters.")
    @OptionGroup var connection: Connection
    @Flag(help: "JSON instead of lines.") var json = false

    func run() throws {
        let c = try connection.connect()
        defer { moe_close(c) }
        var s = moe_stats_resp()
        try check(moe_stats(c, &s), c, "stats")
        let fields: [(String, Any)] = [
            ("backend", text(s.backend)), ("uptime_s", Double(s.uptime_ns) / 1e9), ("requests", s.requests),
            ("errors", s.errors), ("routes", s.routes), ("tokens", s.tokens), ("shm_routes", s.shm_routes),
            ("busy_rejections", s.busy_rejections), ("deadline_misses", s.deadline_misses),
            ("nonfinite_inputs", s.nonfinite_inputs), ("fallback_casts", s.fallback_casts),
            ("registrations", s.registrations), ("clients", s.clients), ("mapped_bytes", s.mapped_bytes),
            ("queued", s.queued), ("clients_released", s.clients_released), ("compute_s", Double(s.compute_ns) / 1e9),
        ]
        if json {
            let d = Dictionary(uniqueKeysWithValues: fields)
            print(String(decoding: try JSONSerialization.data(withJSONObject: d, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
        } else {
            for (k, v) in fields { print("\(k): \(v)") }
        }
    }
}

struct Route: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Route a [tokens, experts] .npy through a layer; write weights and ids to an .npz.",
        discussion: "Input dtypes: float32 (<f4), float16 (<f2), and bf16 as uint16 (<u2) with --bf16.")
    @OptionGroup var connection: Connection
    @Option(help: "Layer name or id.") var layer: String
    @Option(help: "Input .npy file.") var input: String
    @Option(help: "Output .npz file (arrays 'weights' float32 and 'ids' int32, [tokens, top_k]).") var output: String
    @Flag(help: "The input is uint16 bit patterns of bf16.") var bf16 = false

    func run() throws {
        let array: NpyArray
        do { array = try NpyArray.read(path: input) } catch {
            printError("\(error)")
            throw ExitCode(66)
        }
        let dtype: moe_dtype
        switch (array.descr, bf16) {
        case ("<f4", false): dtype = MOE_DTYPE_FP32
        case ("<f2", false): dtype = MOE_DTYPE_FP16
        case ("<u2", true): dtype = MOE_DTYPE_BF16
        default:
            printError("\(input): dtype \(array.descr) is not float32, float16, or uint16 with --bf16")
            throw ExitCode(66)
        }
        guard array.shape.count == 2 else {
            printError("\(input): shape \(array.shape) is not [tokens, experts]")
            throw ExitCode(66)
        }
        let c = try connection.connect()
        defer { moe_close(c) }
        let info = try findLayer(c, layer)
        let tokens = array.shape[0], k = Int(info.top_k)
        var weights = [Float](repeating: 0, count: tokens * k)
        var ids = [Int32](repeating: 0, count: tokens * k)
        var result = moe_route_result()
        let rc = array.data.withUnsafeBytes { inp in
            moe_route(c, info.layer_id, dtype, UInt64(tokens), inp.baseAddress, inp.count, &weights, &ids, tokens * k, &result)
        }
        try check(rc, c, "route")
        do {
            try writeNpz(path: output, [
                ("weights", NpyArray(descr: "<f4", shape: [tokens, k], data: weights.withUnsafeBytes { Data($0) })),
                ("ids", NpyArray(descr: "<i4", shape: [tokens, k], data: ids.withUnsafeBytes { Data($0) })),
            ])
        } catch {
            let reason = ((error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError)?.localizedDescription
                ?? (error as NSError).localizedDescription
            printError("cannot write \(output): \(reason)")
            throw ExitCode(73)
        }
        print("routed \(tokens) tokens through '\(text(info.name))' (k=\(k)) -> \(output); non-finite inputs \(result.nonfinite_count), fallback cast \(result.fallback_cast != 0 ? "yes" : "no")")
    }
}

struct Drain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Gracefully stop the daemon: no new requests, in-flight ones finish, then it exits.",
        discussion: "Sends SIGTERM to the pid given or read from --pidfile and waits for the process to exit.")
    @Option(help: "The daemon's pid.") var pid: Int32?
    @Option(help: "The daemon's pidfile (moe-routerd --pidfile).") var pidfile: String?
    @Option(help: "Seconds to wait for the exit.") var timeout: Double = 30

    func run() throws {
        var target = pid
        if target == nil, let pidfile {
            guard let t = try? String(contentsOfFile: pidfile, encoding: .utf8), let p = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                printError("cannot read a pid from \(pidfile)")
                throw ExitCode(66)
            }
            target = p
        }
        guard let target else { throw ValidationError("give --pid or --pidfile") }
        guard kill(target, SIGTERM) == 0 else {
            printError("cannot signal \(target): \(String(cString: strerror(errno)))")
            throw ExitCode(69)
        }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !isRunning(target) {
                print("moe-routerd \(target) drained and exited")
                return
            }
            usleep(50_000)
        }
        printError("moe-routerd \(target) still running after \(timeout) s")
        throw ExitCode(75)
    }
}

/// Alive and not a zombie (an exited child its parent has not reaped yet).
func isRunning(_ pid: Int32) -> Bool {
    if kill(pid, 0) != 0 && errno == ESRCH { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return true }
    let state = stat[stat.index(close, offsetBy: 2)...].first
    return state != "Z" && state != "X"
}

struct Placement: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set (or --clear) a layer's expert placement from a JSON file (EPLB).",
        discussion: """
            FILE: {"num_physical_experts": N, "replicas": [[physical ids of logical expert 0], ...]} or just the list \
            of lists (N = the largest id + 1). Token t routed to logical expert e gets replicas[e][t mod len]. The swap \
            is atomic; requests already running finish on the old placement. A control operation: run as the \
            daemon's user, root or a --control-uid.
            """)
    @OptionGroup var connection: Connection
    @Argument(help: "Layer name or id.") var layer: String
    @Argument(help: "Placement JSON file.") var file: String?
    @Flag(help: "Remove the placement: answers carry logical expert ids again.") var clear = false

    func run() throws {
        guard clear != (file != nil) else {
            printError("give a placement FILE or --clear")
            throw ExitCode(64)
        }
        var placement: ExpertPlacement?
        if let file {
            do { placement = try PlacementFile.load(path: file) } catch {
                printError("\(file): expected \(error.description)")
                throw ExitCode(66)
            }
        }
        let c = try connection.connect()
        defer { moe_close(c) }
        let info = try findLayer(c, layer)
        var epoch: UInt64 = 0
        if let p = placement {
            let counts = (0..<p.numLogical).map { p.offsets[$0 + 1] - p.offsets[$0] }
            try check(moe_set_placement(c, info.layer_id, UInt32(p.numPhysical), UInt32(p.numLogical), counts, p.flat,
                                        UInt32(p.flat.count), &epoch), c, "placement")
            print("layer \(text(info.name)): \(p.summary), epoch \(epoch)")
        } else {
            try check(moe_clear_placement(c, info.layer_id, &epoch), c, "placement")
            print("layer \(text(info.name)): placement removed, epoch \(epoch)")
        }
    }
}

struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tokens routed to each logical expert of a layer, since start and in the current window.",
        discussion: "--reset starts a new window after reading (a control operation, for a rebalancer).")
    @OptionGroup var connection: Connection
    @Argument(help: "Layer name or id.") var layer: String
    @Flag(help: "Start a new window after this read.") var reset = false
    @Flag(help: "JSON instead of lines.") var json = false

    func run() throws {
        let c = try connection.connect()
        defer { moe_close(c) }
        let info = try findLayer(c, layer)
        let e = Int(info.num_experts)
        var totals = [UInt64](repeating: 0, count: e), window = [UInt64](repeating: 0, count: e)
        var out = moe_load_resp()
        try check(moe_expert_load(c, info.layer_id, reset ? 1 : 0, &totals, &window, UInt32(e), &out), c, "expert load")
        if json {
            let d: [String: Any] = [
                "layer": text(info.name), "num_experts": e, "totals": totals, "window": window,
                "since_start_s": Double(out.since_start_ns) / 1e9, "window_s": Double(out.window_ns) / 1e9,
                "window_reset": out.window_reset != 0,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        print("layer \(text(info.name)): \(out.total_assignments) assignments in \(String(format: "%.1f", Double(out.since_start_ns) / 1e9)) s, "
              + "\(out.window_assignments) in the window of \(String(format: "%.1f", Double(out.window_ns) / 1e9)) s\(reset ? " (window reset)" : "")")
        print("expert  total  window")
        for i in 0..<e { print("\(i)  \(totals[i])  \(window[i])") }
    }
}
