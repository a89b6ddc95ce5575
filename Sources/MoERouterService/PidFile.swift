import CMoERouterdOS
import Glibc

/// A pidfile through libbsd's pidfile(3): created, locked and written at start, removed at exit.
public final class PidFile {
    public enum Failure: Error, CustomStringConvertible {
        case heldByOther(path: String, pid: Int32)
        case system(path: String, errno: Int32)

        public var description: String {
            switch self {
            case .heldByOther(let p, let pid): "pidfile \(p) is held by running process \(pid)"
            case .system(let p, let e): "pidfile \(p): \(String(cString: strerror(e)))"
            }
        }
    }

    private let handle: UnsafeMutableRawPointer
    public let path: String

    public init(path: String) throws(Failure) {
        var other: pid_t = 0
        guard let h = mro_pidfile_open(path, &other) else {
            if errno == EEXIST { throw .heldByOther(path: path, pid: other) }
            throw .system(path: path, errno: errno)
        }
        handle = h
        self.path = path
        if mro_pidfile_write(h) != 0 {
            let e = errno
            _ = mro_pidfile_remove(h)
            throw .system(path: path, errno: e)
        }
    }

    /// Removes the file (and releases the lock).
    public func remove() { _ = mro_pidfile_remove(handle) }
}
