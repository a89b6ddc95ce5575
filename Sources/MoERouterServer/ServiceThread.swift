import CMoERouterdOS
import Dispatch
import Foundation

/// A named OS thread that can be joined. zmq sockets live on exactly one thread, and blocking
/// zmq loops must never run on Swift's cooperative pool.
final class ServiceThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let thread: Thread

    init(name: String, _ body: @escaping @Sendable () -> Void) {
        let done = self.done
        thread = Thread {
            mro_set_thread_name(name)
            body()
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    func join() { done.wait() }
}
