import CMoERouterWire
import MoERouterZMQ
import MoERouting

/// LIST_LAYERS: every served layer's parameters, and the biases as stored (widened to fp32) in
/// one extra frame.
struct ListLayersHandler: Sendable {
    let layers: LayerSlot

    func answer(_ r: InboundRequest) -> Reply {
        let catalog = layers.current
        var head = moe_list_resp()
        head.count = UInt32(catalog.layers.count)
        var infos: [moe_layer_info] = []
        var exts: [moe_layer_ext] = []
        var biases: [Float] = []
        for (id, layer) in catalog.layers.enumerated() {
            let s = layer.spec
            var info = moe_layer_info()
            info.layer_id = UInt32(id)
            info.method = s.method.rawValue
            info.scoring = s.scoring.rawValue
            info.gate_dtype = s.gateDType.rawValue
            info.nonfinite = s.nonFinite.rawValue
            info.num_experts = UInt32(s.numExperts)
            info.top_k = UInt32(s.topK)
            info.num_expert_group = UInt32(s.numExpertGroup)
            info.topk_group = UInt32(s.topKGroup)
            info.renormalize = s.renormalize ? 1 : 0
            info.routed_scaling_factor = s.routedScalingFactor
            info.bias_offset = UInt32(biases.count)
            if let b = layer.storedBias {
                info.has_bias = 1
                biases += b.widened()
            }
            WireBytes.setFixed(&info.name, s.name)
            infos.append(info)
            var ext = moe_layer_ext()
            let placement = layer.placements.snapshot()
            ext.hash_vocab = UInt64(s.hashTable?.vocab ?? 0)
            ext.placement_epoch = placement.epoch
            ext.num_physical = UInt32(placement.placement?.numPhysical ?? 0)
            ext.renorm_epsilon = s.renormEpsilon
            exts.append(ext)
        }
        let frame = biases.withUnsafeBytes { ZMQMessage.copying($0) }
        return Reply(answering: r, message: "\(catalog.layers.count) layers", body: .layers(head, infos, ext: r.version >= 2 ? exts : nil), frames: [frame])
    }
}
