import Foundation
import MoERouterModels
import MoERouterServer
import MoERouting

/// Start-up: the command line and the configuration file merged into one `ServerConfig`
/// (flags win), every value checked. Run again on SIGHUP to reload.
extension RouterDaemon {
    /// `loaded` hears one line per checkpoint read (Checkpoint.summary and the time it took).
    func serverConfig(loaded: (String) -> Void = { _ in }) throws(ConfigError) -> ServerConfig {
        var file = ConfigFile()
        var specs: [LayerSpec] = []
        guard let modelGate = GateDTypeChoice(name: modelGateDtype) else {
            throw .invalid(key: "--model-gate-dtype", value: modelGateDtype, expected: "auto, fp32, bf16 or fp16")
        }
        func load(_ directory: String, name: String? = nil, gate: GateDTypeChoice) throws(ConfigError) {
            let started = ContinuousClock.now
            do {
                let model = try Checkpoint(directory: directory, name: name, gate: gate)
                specs += model.layers
                let ms = (ContinuousClock.now - started) / .microseconds(1) / 1000
                loaded("\(model.summary) in \(String(format: "%.1f", ms)) ms from \(directory)")
            } catch {
                throw .checkpoint(error.description)
            }
        }
        var fileBase = "."
        if let config {
            file = try ConfigFile.load(path: config)
            let base = URL(fileURLWithPath: config).deletingLastPathComponent().path
            fileBase = base
            specs = try file.layerSpecs(baseDirectory: base)
            for (i, m) in (file.models ?? []).enumerated() {
                let key = "models[\(i)].gate_dtype"
                guard let gate = m.gate_dtype.map(GateDTypeChoice.init(name:)) ?? modelGate else {
                    throw .invalid(key: key, value: m.gate_dtype ?? "", expected: "auto, fp32, bf16 or fp16", at: file.position(key))
                }
                try load(m.path.hasPrefix("/") ? m.path : base + "/" + m.path, name: m.name, gate: gate)
            }
        }
        for directory in models { try load(directory, gate: modelGate) }
        let gate = try gateDtype.map { (name) throws(ConfigError) -> DType in
            guard let d = DType(name: name) else { throw .invalid(key: "--gate-dtype", value: name, expected: "fp32, bf16 or fp16") }
            return d
        }
        guard let policy = NonFinitePolicy(name: nonfinite) else {
            throw .invalid(key: "--nonfinite", value: nonfinite, expected: "clamp or reject")
        }
        for name in presets {
            guard var spec = Presets.spec(named: name, gateDType: gate ?? Presets.naturalGateDType(name)) else {
                throw .invalid(key: "--preset", value: name, expected: "one of \(Presets.names.joined(separator: ", "))")
            }
            spec.nonFinite = policy
            specs.append(spec)
        }
        var c = ServerConfig(endpoint: endpoint ?? file.endpoint ?? ServerConfig.defaultEndpoint())
        c.controlUIDs = Set(controlUid + (file.control_uids ?? []))
        c.expertLoadMetrics = !noExpertLoadMetrics && file.expert_load_metrics != false
        c.tcpEndpoint = tcp ?? file.tcp
        c.tcpAllowInsecure = tcpAllowInsecure || file.tcp_allow_insecure == true
        let keyFile = tcpCurveKey ?? file.tcp_curve_key.map { $0.hasPrefix("/") ? $0 : fileBase + "/" + $0 }
        let allowFile = tcpCurveAllow ?? file.tcp_curve_allow.map { $0.hasPrefix("/") ? $0 : fileBase + "/" + $0 }
        switch (keyFile, allowFile) {
        case let (key?, allow?): c.tcpCurve = try CurveKeys.load(keyFile: key, allowFile: allow)
        case (nil, nil): break
        default: throw .missing(key: keyFile == nil ? "tcp_curve_key (--tcp-curve-key)" : "tcp_curve_allow (--tcp-curve-allow)")
        }
        if let name = backend ?? file.backend {
            guard let kind = BackendKind(rawValue: name) else {
                throw .invalid(key: backend != nil ? "--backend" : "backend", value: name,
                               expected: "one of \(BackendKind.names.joined(separator: ", "))",
                               at: backend != nil ? nil : file.position("backend"))
            }
            c.backend = kind
        }
        c.device = device
        // Every limit is checked against a range: a value outside it is a start-up error naming
        // the setting (never clamped silently, never an overflow or a runaway thread count).
        func checked(_ key: String, _ flag: Int?, _ fileValue: Int?, _ range: ClosedRange<Int>) throws(ConfigError) -> Int? {
            guard let v = flag ?? fileValue else { return nil }
            guard range.contains(v) else {
                throw .outOfRange(key: key, value: v, range: range, at: flag == nil ? file.position(key) : nil)
            }
            return v
        }
        let limits = ServerConfig.Limits.self
        if let v = try checked("workers", workers, file.workers, limits.workers) { c.workers = v }
        if let v = try checked("queue_depth", queueDepth, file.queue_depth, limits.queueDepth) { c.queueDepth = v }
        if let v = try checked("channel_threads", channelThreads, file.channel_threads, limits.channelThreads) {
            c.channelThreads = v
        }
        if let v = try checked("inline_tokens", inlineTokens, file.inline_tokens, limits.inlineTokens) { c.inlineTokens = v }
        if let v = try checked("max_message_bytes", maxMessageBytes, file.max_message_bytes, limits.maxMessageBytes) {
            c.maxMessageBytes = v
        }
        if let v = try checked("max_tokens", maxTokens, file.max_tokens, limits.maxTokens) { c.maxTokens = v }
        if let v = try checked("deadline_ms", deadlineMs.map(Int.init), file.deadline_ms.map(Int.init), limits.deadlineMs) {
            c.defaultDeadlineMs = UInt32(v)
        }
        if let v = try checked("max_registrations", maxRegistrations, file.max_registrations, limits.maxRegistrations) {
            c.maxRegistrations = v
        }
        if let v = try checked("max_registrations_per_uid", maxRegistrationsPerUid, file.max_registrations_per_uid,
                               limits.maxRegistrationsPerUID) {
            c.maxRegistrationsPerUID = v
        }
        if let v = try checked("max_mapped_bytes_per_uid", maxMappedBytesPerUid, file.max_mapped_bytes_per_uid,
                               limits.maxMappedBytesPerUID) {
            c.maxMappedBytesPerUID = UInt64(v)
        }
        if let v = try checked("max_queued_reply_bytes", maxQueuedReplyBytes, file.max_queued_reply_bytes, limits.queuedReplyBytes) {
            c.maxQueuedReplyBytes = v
        }
        if let v = try checked("max_queued_reply_bytes_total", maxQueuedReplyBytesTotal, file.max_queued_reply_bytes_total,
                               limits.queuedReplyBytes) {
            c.maxQueuedReplyBytesTotal = v
        }
        try file.applyPlacements(to: &specs, baseDirectory: fileBase)
        c.layers = specs
        return c
    }
}
