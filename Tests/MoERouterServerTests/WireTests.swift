import CMoERouterWire
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

    @Test func structSizesAreTheHeaders() {
        #expect(MemoryLayout<moe_req_header>.size == 32)
        #expect(MemoryLayout<moe_resp_header>.size == 32)
        #expect(MemoryLayout<moe_route_req>.size == 112)
        #expect(MemoryLayout<moe_route_resp>.size == 40)
        #expect(MemoryLayout<moe_layer_info>.size == 104)
        #expect(MemoryLayout<moe_stats_resp>.size == 160)
    }
}
