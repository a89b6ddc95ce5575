import CMoERouterWire
import Logging
import MoERouterZMQ
import MoERouting

/// SET_PLACEMENT and EXPERT_LOAD: the expert-parallel side of a layer (shared/ROUTING.md,
/// "Expert placement"; issue 17). A placement is validated whole and swapped in one store, so
/// requests already running finish on the old one; load counters are read without stopping
/// anything.
struct PlacementHandler: Sendable {
    let layers: LayerSlot
    let stats: ServerStats
    let control: ControlAccess
    let logger: Logger

    func setPlacement(_ q: PlacementRequest, _ r: InboundRequest) -> Reply {
        do throws(RequestFailure) {
            try control.check(r.origin, "SET_PLACEMENT")
            let layer = try lookup(q.layerID)
            var placement: ExpertPlacement?
            if !q.counts.isEmpty {
                guard q.counts.count == layer.spec.numExperts else {
                    throw RequestFailure(.badPlacement, "places \(q.counts.count) logical experts; layer '\(layer.spec.name)' has \(layer.spec.numExperts)")
                }
                do { placement = try ExpertPlacement(numPhysical: q.numPhysical, counts: q.counts, flat: q.physical) } catch {
                    throw RequestFailure(.badPlacement, "layer '\(layer.spec.name)': \(error.description); its placement is unchanged")
                }
            }
            let epoch: UInt64
            do { epoch = try layer.placements.set(placement, numExperts: layer.spec.numExperts) } catch {
                throw RequestFailure(.badPlacement, "layer '\(layer.spec.name)': \(error.description); its placement is unchanged")
            }
            stats.placementSets.add(1)
            let what = placement.map { $0.summary } ?? "removed (logical ids)"
            logger.info("placement of layer '\(layer.spec.name)' set by \(r.origin.client): \(what), epoch \(epoch)")
            var out = moe_placement_resp()
            out.epoch = epoch
            out.num_physical = UInt32(placement?.numPhysical ?? 0)
            out.total_replicas = UInt32(placement?.flat.count ?? 0)
            return Reply(answering: r, message: "placement epoch \(epoch)", body: .placement(out))
        } catch {
            return r.refused(error)
        }
    }

    func expertLoad(layerID: UInt32, resetWindow: Bool, _ r: InboundRequest) -> Reply {
        do throws(RequestFailure) {
            if resetWindow { try control.check(r.origin, "resetting a load window") }
            let layer = try lookup(layerID)
            let reading = layer.expertLoad.read(resetWindow: resetWindow)
            var out = moe_load_resp()
            out.num_experts = UInt32(layer.spec.numExperts)
            out.window_reset = resetWindow ? 1 : 0
            out.since_start_ns = reading.sinceStartNs
            out.window_ns = reading.windowNs
            out.total_assignments = reading.totals.reduce(0, &+)
            out.window_assignments = reading.window.reduce(0, &+)
            let frame = (reading.totals + reading.window).withUnsafeBytes { ZMQMessage.copying($0) }
            return Reply(answering: r, message: "expert load of '\(layer.spec.name)'", body: .load(out), frames: [frame])
        } catch {
            return r.refused(error)
        }
    }

    private func lookup(_ id: UInt32) throws(RequestFailure) -> BuiltLayer {
        let catalog = layers.current
        guard let layer = catalog.layer(id) else {
            throw RequestFailure(.unknownLayer, "layer_id = \(id); the daemon has layers 0...\(catalog.layers.count - 1)")
        }
        return layer
    }
}

extension RouterServer {
    /// The per-expert load counters of every layer in the Prometheus text format: the histogram
    /// family `moe_expert_routed_tokens{layer}` over logical expert ids (bucket `le="e"` counts
    /// the tokens routed to experts 0...e; `_count` is every (token, expert) assignment since the
    /// layer was built). Empty when `expert_load_metrics` is off.
    public func expertLoadExposition() -> String {
        guard config.expertLoadMetrics else { return "" }
        var out = "# HELP moe_expert_routed_tokens Tokens routed to each logical expert, as a histogram over expert ids.\n"
        out += "# TYPE moe_expert_routed_tokens histogram\n"
        for layer in state.layers.current.layers {
            let name = layer.spec.name.replacingOccurrences(of: "\\", with: "\\\\")
                .replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
            let totals = layer.expertLoad.totals()
            var cumulative: UInt64 = 0, sum: UInt64 = 0
            for (e, c) in totals.enumerated() {
                cumulative &+= c
                sum &+= UInt64(e) &* c
                out += "moe_expert_routed_tokens_bucket{layer=\"\(name)\",le=\"\(e)\"} \(cumulative)\n"
            }
            out += "moe_expert_routed_tokens_bucket{layer=\"\(name)\",le=\"+Inf\"} \(cumulative)\n"
            out += "moe_expert_routed_tokens_sum{layer=\"\(name)\"} \(sum)\n"
            out += "moe_expert_routed_tokens_count{layer=\"\(name)\"} \(cumulative)\n"
        }
        return out
    }
}
