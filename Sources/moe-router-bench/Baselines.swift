import CMoERouterClient
import CMoERouterWire
import CZMQ
import Histogram
import MoERouterEcho
import MoERouterZMQ
import MoERouting
import Synchronization

/// Frame sizes of one ROUTE exchange.
struct ExchangeShape {
    var request: [Int]
    var reply: [Int]

    init(tokens: Int, experts: Int, topK: Int, dtype: DType, shm: Bool) {
        let head = MemoryLayout<moe_req_header>.size + MemoryLayout<moe_route_req>.size
        let respHead = MemoryLayout<moe_resp_header>.size + MemoryLayout<moe_route_resp>.size
        request = shm ? [head] : [head, tokens * experts * dtype.byteSize]
        reply = shm ? [respHead] : [respHead, tokens * topK * 4, tokens * topK * 4]
    }
}

/// Echo with `clients` DEALERs (each its own context, like the C client) for `seconds`; returns
/// latency and throughput. `window` = 1: closed loop, one request in flight per client (the
/// daemon's clients' pattern); more: each client keeps `window` requests in flight (pipelined:
/// the transport's throughput when nobody waits; latency then includes the queue).
func runEcho(server: EchoServer, shape: ExchangeShape, clients: Int, seconds: Double, window: Int = 1) -> LoadResult {
    server.setReplySizes(shape.reply)
    let config = LoadConfig(clients: clients, batches: [(1, 1)], shm: false, dtype: .fp32, rate: nil, seconds: seconds)
    let results = Mutex<LoadResult>(LoadResult(config: config))
    let start = nowNs()
    let end = start + UInt64(seconds * 1e9)
    runThreads(clients) { _ in
        var local = LoadResult(config: config)
        do {
            let ctx = ZMQContext()
            let s = try ZMQSocket(ctx, type: ZMQ_DEALER)
            try s.connect(server.endpoint)
            let payloads = shape.request.map { [UInt8](repeating: 1, count: $0) }
            func send() throws(ZMQError) {
                for (i, p) in payloads.enumerated() { try s.send(bytes: p, more: i < payloads.count - 1) }
            }
            // Send times of the requests in flight, by request number modulo the window (the
            // ROUTER answers in order).
            var sentAt = [UInt64](repeating: 0, count: window)
            var issued = 0, answered = 0
            while nowNs() < end {
                while issued - answered < window {
                    sentAt[issued % window] = nowNs()
                    try send()
                    issued += 1
                }
                _ = try s.receiveMultipart()
                _ = local.latency.record(nowNs() - sentAt[answered % window])
                answered += 1
                local.requests += 1
            }
            while answered < issued {  // the last answers, before the socket closes
                _ = try s.receiveMultipart()
                answered += 1
            }
            s.close()
        } catch {
            local.errors["echo: \(error)", default: 0] += 1
        }
        results.withLock {
            $0.latency.add(local.latency)
            $0.requests += local.requests
            $0.errors.merge(local.errors, uniquingKeysWith: +)
        }
    }
    var r = results.withLock { $0 }
    r.elapsedNs = nowNs() - start
    return r
}

/// The same layer built in this process, for the kernel-only baseline.
func localLayer(endpoint: String, name: String) throws -> BuiltLayer {
    var client: OpaquePointer?
    guard moe_connect(endpoint, 10_000, &client) == 0, let client else {
        throw SetupError(description: "connect \(endpoint) failed")
    }
    defer { moe_close(client) }
    var info = moe_layer_info()
    guard moe_find_layer(client, name, &info) == 0 else {
        throw SetupError(description: "layer '\(name)': \(String(cString: moe_last_error(client)))")
    }
    var bias: [Float]? = nil
    if info.has_bias != 0 {
        var b = [Float](repeating: 0, count: Int(info.num_experts))
        guard moe_layer_bias(client, info.layer_id, &b, UInt32(b.count)) == 0 else {
            throw SetupError(description: "bias of '\(name)': \(String(cString: moe_last_error(client)))")
        }
        bias = b
    }
    let spec = LayerSpec(
        name: name, method: RoutingMethod(rawValue: info.method) ?? .softmaxTopK,
        numExperts: Int(info.num_experts), topK: Int(info.top_k),
        numExpertGroup: Int(info.num_expert_group), topKGroup: Int(info.topk_group),
        scoring: ScoringFunction(rawValue: info.scoring) ?? .softmax, renormalize: info.renormalize != 0,
        routedScalingFactor: info.routed_scaling_factor, gateDType: DType(rawValue: info.gate_dtype) ?? .bf16,
        nonFinite: NonFinitePolicy(rawValue: info.nonfinite) ?? .clamp, bias: bias)
    return try BuiltLayer(spec)
}

/// Median in-process CPUBackend time for one request of `tokens` (ns).
func kernelTimeNs(layer: BuiltLayer, dtype: DType, tokens: Int, seconds: Double = 0.3) -> Double {
    let backend = CPUBackend()
    let input = randomLogits(count: tokens * layer.spec.numExperts, dtype: dtype, seed: 99)
    var w = [Float](repeating: 0, count: tokens * layer.spec.topK)
    var ids = [Int32](repeating: 0, count: tokens * layer.spec.topK)
    var samples: [UInt64] = []
    let end = nowNs() + UInt64(seconds * 1e9)
    input.withUnsafeBytes { inp in
        w.withUnsafeMutableBufferPointer { wp in
            ids.withUnsafeMutableBufferPointer { ip in
                repeat {
                    let t0 = nowNs()
                    _ = try? backend.route(layer: layer, input: inp, dtype: dtype, tokens: tokens, weights: wp, ids: ip)
                    samples.append(nowNs() - t0)
                } while nowNs() < end || samples.count < 5
            }
        }
    }
    samples.sort()
    return Double(samples[samples.count / 2])
}

import Glibc
