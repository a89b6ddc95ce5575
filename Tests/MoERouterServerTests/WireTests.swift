import CMoERouterWire
import MoERouterServer
import MoERouting
import Testing

@Suite struct WireLayoutTests {
    @Test func enumValuesMatchTheRoutingLibrary() {
        #expect(MOE_DTYPE_FP32.rawValue == UInt32(DType.fp32.rawValue))
        #expect(MOE_DTYPE_BF16.rawValue == UInt32(DType.bf16.rawValue))
        #expect(MOE_DTYPE_FP16.rawValue == UInt32(DType.fp16.rawValue))
        for m in RoutingMethod.allCases {
            let wire: [moe_method] = [MOE_METHOD_SOFTMAX_TOPK, MOE_METHOD_TOPK_SOFTMAX, MOE_METHOD_GROUPED_TOPK,
                                      MOE_METHOD_BIASED_GROUPED_TOPK, MOE_METHOD_BIASED_TOPK, MOE_METHOD_LLAMA4_TOP1]
            #expect(wire[Int(m.rawValue)].rawValue == UInt32(m.rawValue))
        }
        let scorings: [moe_scoring] = [MOE_SCORING_SOFTMAX, MOE_SCORING_SIGMOID, MOE_SCORING_SQRTSOFTPLUS, MOE_SCORING_NONE]
        for s in ScoringFunction.allCases { #expect(scorings[Int(s.rawValue)].rawValue == UInt32(s.rawValue)) }
        #expect(MOE_NONFINITE_REJECT.rawValue == UInt32(NonFinitePolicy.reject.rawValue))
    }

    @Test func everyHeaderOperationIsAnOperationAndNothingElseIs() {
        let header: [moe_op] = [MOE_OP_HELLO, MOE_OP_LIST_LAYERS, MOE_OP_REGISTER_SHM, MOE_OP_UNREGISTER_SHM,
                                MOE_OP_ROUTE, MOE_OP_STATS, MOE_OP_PING, MOE_OP_SET_PLACEMENT, MOE_OP_EXPERT_LOAD,
                                MOE_OP_OPEN_CHANNEL, MOE_OP_CLOSE_CHANNEL]
        #expect(Set(header.map { UInt16($0.rawValue) }) == Set(WireOp.allCases.map(\.rawValue)))
        for op in WireOp.allCases { #expect(WireOp(rawValue: op.rawValue) == op) }
        #expect(WireOp(rawValue: 0) == nil)
        #expect(WireOp(rawValue: 12) == nil)
        #expect(WireOp.allCases.filter { $0.sinceVersion == 2 } == [.setPlacement, .expertLoad, .openChannel, .closeChannel])
        #expect(WireOp.route.rawValue == UInt16(MOE_OP_ROUTE.rawValue))
    }

    @Test func structSizesAreTheHeaders() {
        #expect(MemoryLayout<moe_req_header>.size == 32)
        #expect(MemoryLayout<moe_resp_header>.size == 32)
        #expect(MemoryLayout<moe_route_req>.size == 112)
        #expect(MemoryLayout<moe_route_resp>.size == 40)
        #expect(MemoryLayout<moe_layer_info>.size == 104)
        #expect(MemoryLayout<moe_stats_resp>.size == 160)
        #expect(MemoryLayout<moe_route_req_v2>.size == 192)
        #expect(MemoryLayout<moe_route_resp_v2>.size == 72)
        #expect(MemoryLayout<moe_layer_info_v2>.size == 136)
        #expect(MemoryLayout<moe_hello_ext>.size == 56)
        #expect(MemoryLayout<moe_stats_resp_v2>.size == 224)
        #expect(MemoryLayout<moe_channel_ctrl>.size == 584)
        #expect(MemoryLayout<moe_channel_open_req>.size == 16)
    }
}
