import MoERouterZMQ
import Testing

@testable import MoERouterServer

@Suite struct ReplyBudgetTests {
    let a = ClientKey(transport: .ipc, routingID: [1], connection: 1)
    let b = ClientKey(transport: .ipc, routingID: [1], connection: 2)  // same id, another connection

    @Test func perConnectionAndTotalBounds() {
        let budget = ReplyBudget(perConnection: 100, total: 150)
        #expect(budget.reserve(500, for: a) == nil, "one answer is always allowed when nothing is outstanding")
        #expect(budget.reserve(1, for: a)?.contains("500 bytes of earlier answers") == true)
        budget.release(500, for: a)
        #expect(budget.reserve(60, for: a) == nil && budget.reserve(40, for: a) == nil)
        #expect(budget.reserve(1, for: a) != nil, "at the connection's bound")
        #expect(budget.reserve(60, for: b)?.contains("max_queued_reply_bytes_total") == true, "100 + 60 > 150")
        #expect(budget.reserve(50, for: b) == nil)
        budget.release(100, for: a)
        budget.release(50, for: b)
        #expect(budget.reserved == 0)
    }

    @Test func framesReleaseTheirBytesWhenLibzmqFreesThem() {
        let budget = ReplyBudget(perConnection: 1 << 20, total: 1 << 30)
        #expect(budget.reserve(8192, for: a) == nil)
        do {
            let frame = ZMQMessage.sized(8192) { budget.release(8192, for: a) }
            frame.mutableBytes.storeBytes(of: 1, as: UInt8.self)
            #expect(budget.reserved == 8192)
        }
        #expect(budget.reserved == 0, "closing the message ran the release")
    }
}
