import ArgumentParser
import MoERouting

/// moe-routerd: holds built MoE routing layers and serves top-k routing over ZeroMQ, with bulk
/// tensors in POSIX shared memory. Protocol: docs/PROTOCOL.md; wire structs: Include/moe_router.h.
@main
struct RouterDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-routerd",
        abstract: "Serve MoE top-k routing over ZeroMQ (ipc, optional tcp) with shared-memory tensors.",
        discussion: """
        Layers come from --config (YAML), --model (repeatable) and --preset (repeatable), in that \
        order; their ids are their positions. Presets: \(Presets.names.joined(separator: ", ")). A biased preset uses \
        the deterministic synthetic bias of Presets.syntheticBias (uniform in [-0.1, 0.1)).
        Default endpoint: ipc://$RUNTIME_DIRECTORY/routerd.sock, else \
        ipc://$XDG_RUNTIME_DIR/moe-router/routerd.sock, else ipc:///tmp/moe-router-$UID/routerd.sock.
        """)

    @Option(name: .customLong("preset"), help: "Serve a built-in model layer (repeatable).")
    var presets: [String] = []

    @Option(name: .customLong("model"), help: "Serve every MoE layer of a Hugging Face checkpoint directory (config.json + safetensors; repeatable). Layers are named MODEL/INDEX, MODEL being the directory's name.")
    var models: [String] = []

    @Option(help: "Gate dtype of --model layers: auto (the checkpoint's torch_dtype), fp32, bf16, fp16.")
    var modelGateDtype: String = "auto"

    @Option(help: "YAML configuration file (endpoints, limits, layers).")
    var config: String?

    @Option(help: "The ipc endpoint, ipc://PATH (socket file mode 0660).")
    var endpoint: String?

    @Option(help: "Also bind this tcp endpoint (tcp://HOST:PORT). Shared memory is refused there. A non-loopback address needs CURVE (--tcp-curve-key, --tcp-curve-allow) or --tcp-allow-insecure.")
    var tcp: String?

    @Option(help: "The daemon's CURVE key file for --tcp (moe-routerctl keygen NAME writes NAME.key; mode 0600).")
    var tcpCurveKey: String?

    @Option(help: "The client public keys --tcp admits, one Z85 key per line.")
    var tcpCurveAllow: String?

    @Flag(help: "Serve a non-loopback --tcp address without CURVE: any peer that reaches it may route, list layers and read stats.")
    var tcpAllowInsecure = false

    @Option(help: "Routing backend: \(BackendKind.names.joined(separator: ", ")) (auto: the first of ROCm, CUDA that finds a device, else cpu).")
    var backend: String?

    @Option(help: "GPU device ordinal for --backend rocm|cuda|auto.")
    var device: Int = 0

    @Option(help: "Serve Prometheus metrics, /healthz and /readyz on HOST:PORT (loopback only unless --metrics-allow-remote).")
    var metrics: String?

    @Flag(help: "Allow --metrics on a non-loopback address (the endpoint has no authentication).")
    var metricsAllowRemote = false

    @Option(help: "Log format: auto (journal when stderr is the journal), journal (<N> priority prefixes), plain.")
    var logFormat: String = "auto"

    @Option(help: "Gate dtype of --preset layers: fp32, bf16, fp16 (default: the model's, bf16; fp32 for deepseek-v4*).")
    var gateDtype: String?

    @Option(help: "A uid allowed control operations (SET_PLACEMENT, resetting expert-load windows) besides root and the daemon's own (repeatable).")
    var controlUid: [UInt32] = []

    @Flag(help: "Leave the per-expert load histograms out of /metrics (one series per expert and layer).")
    var noExpertLoadMetrics = false

    @Option(help: "Non-finite policy of --preset layers: clamp or reject.")
    var nonfinite: String = "clamp"

    @Option(help: "Worker threads for large requests (default: online cores).")
    var workers: Int?

    @Option(help: "Queued large requests before BUSY.")
    var queueDepth: Int?

    @Option(help: "Threads serving shared-memory channels: a pool of n shared by all (default: online cores); 0 gives each channel its own.")
    var channelThreads: Int?

    @Option(help: "ROUTEs up to this many tokens run on the I/O thread.")
    var inlineTokens: Int?

    @Option(help: "Largest request in bytes answered with a typed error.")
    var maxMessageBytes: Int?

    @Option(help: "Largest token count per ROUTE.")
    var maxTokens: Int?

    @Option(help: "Default per-request deadline in milliseconds.")
    var deadlineMs: UInt32?

    @Option(help: "Shared-memory registrations per client.")
    var maxRegistrations: Int?

    @Option(help: "Shared-memory registrations per peer uid, over all its connections (default 1024).")
    var maxRegistrationsPerUid: Int?

    @Option(help: "Bytes of shared memory mapped per peer uid (default 1 TiB).")
    var maxMappedBytesPerUid: Int?

    @Option(help: "Bytes of inline answers one connection may leave unread before its ROUTEs get BUSY (default 64 MiB).")
    var maxQueuedReplyBytes: Int?

    @Option(help: "The same bound for all connections together (default 1 GiB).")
    var maxQueuedReplyBytesTotal: Int?

    @Option(help: "Write and lock a pidfile.")
    var pidfile: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    mutating func run() throws {
        try Daemon(command: self).run()
    }
}
