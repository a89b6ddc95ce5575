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
        #expect(MOE_SCORING_SIGMOID.rawValue == UInt32(ScoringFunction.sigmoid.rawValue))
        #expect(MOE_NONFINITE_REJECT.rawValue == UInt32(NonFinitePolicy.reject.rawValue))
    }

    @Test func everyHeaderOperationIsAnOperationAndNothingElseIs() {
        let header: [moe_op] = [MOE_OP_HELLO, MOE_OP_LIST_LAYERS, MOE_OP_REGISTER_SHM, MOE_OP_UNREGISTER_SHM,
                                MOE_OP_ROUTE, MOE_OP_STATS, MOE_OP_PING]
        #expect(Set(header.map { UInt16($0.rawValue) }) == Set(WireOp.allCases.map(\.rawValue)))
        for op in WireOp.allCases { #expect(WireOp(rawValue: op.rawValue) == op) }
        #expect(WireOp(rawValue: 0) == nil)
        #expect(WireOp(rawValue: 8) == nil)
        #expect(WireOp.route.rawValue == UInt16(MOE_OP_ROUTE.rawValue))
    }

    @Test func structSizesAreTheHeaders() {
        #expect(MemoryLayout<moe_req_header>.size == 32)
        #expect(MemoryLayout<moe_resp_header>.size == 32)
        #expect(MemoryLayout<moe_route_req>.size == 112)
        #expect(MemoryLayout<moe_route_resp>.size == 40)
        #expect(MemoryLayout<moe_layer_info>.size == 104)
        #expect(MemoryLayout<moe_stats_resp>.size == 160)
    }
}
