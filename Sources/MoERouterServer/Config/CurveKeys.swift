import CZMQ
import Glibc

/// ZeroMQ CURVE for the tcp endpoint: the daemon's key pair and the client public keys it admits.
/// Key files are what `moe-routerctl keygen NAME` writes: `NAME.key` (mode 0600) holds
/// `public-key = Z85` and `secret-key = Z85` lines, `NAME.pub` the public key alone. An
/// allow-list file holds one Z85 public key per line (or `public-key = Z85` lines, so `.pub` and
/// `.key` files can be concatenated); a line starting with `#` is a comment (Z85 itself uses `#`).
public struct CurveKeys: Sendable, Equatable {
    /// The daemon's keys, 40 Z85 characters each.
    public let publicKey: String
    public let secretKey: String
    /// Admitted client public keys, 32 raw bytes each.
    public let allowed: Set<[UInt8]>

    public init(publicKey: String, secretKey: String, allowed: Set<[UInt8]>) {
        self.publicKey = publicKey
        self.secretKey = secretKey
        self.allowed = allowed
    }

    /// Reads the daemon's key file and the allow-list. The key file must not be readable by
    /// group or others (it holds the secret).
    public static func load(keyFile: String, allowFile: String) throws(ConfigError) -> CurveKeys {
        var st = stat()
        guard stat(keyFile, &st) == 0 else {
            throw .file(path: keyFile, reason: "cannot read the CURVE key file: \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw .file(path: keyFile, reason: "the CURVE secret key file is readable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        let keys = try entries(keyFile)
        guard let pub = keys.first(where: { $0.name == "public-key" }), let sec = keys.first(where: { $0.name == "secret-key" }) else {
            throw .file(path: keyFile, reason: "needs public-key = Z85 and secret-key = Z85 lines (moe-routerctl keygen writes them)")
        }
        var derived = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&derived, sec.value) == 0, String(cString: derived) == pub.value else {
            throw .file(path: keyFile, reason: "public-key is not the public key of secret-key")
        }
        var allowed = Set<[UInt8]>()
        for e in try entries(allowFile) where e.name == nil || e.name == "public-key" {
            allowed.insert(try raw(e.value, file: allowFile, line: e.line))
        }
        guard !allowed.isEmpty else { throw .file(path: allowFile, reason: "the allow-list holds no public key") }
        return CurveKeys(publicKey: pub.value, secretKey: sec.value, allowed: allowed)
    }

    /// 32 raw bytes of a Z85 key.
    static func raw(_ z85: String, file: String, line: Int) throws(ConfigError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        guard z85.utf8.count == 40, zmq_z85_decode(&out, z85) != nil else {
            throw .file(path: file, reason: "line \(line): '\(z85.prefix(48))' is not a 40-character Z85 CURVE key")
        }
        return out
    }

    private struct Entry {
        let name: String?
        let value: String
        let line: Int
    }

    /// Non-comment lines: `name = value` or a bare value. Every key checked as Z85.
    private static func entries(_ path: String) throws(ConfigError) -> [Entry] {
        guard let f = fopen(path, "r") else {
            throw .file(path: path, reason: "cannot read: \(String(cString: strerror(errno)))")
        }
        defer { fclose(f) }
        var result: [Entry] = []
        var buffer = [CChar](repeating: 0, count: 1024)
        var number = 0
        while fgets(&buffer, Int32(buffer.count), f) != nil {
            number += 1
            // Z85 uses "#" and "=" too: a comment is a whole line starting with "#", and only the
            // two known names take "name = value".
            let text = String(cString: buffer).trimmingWhitespace()
            guard !text.isEmpty, !text.hasPrefix("#") else { continue }
            var entry = Entry(name: nil, value: text, line: number)
            for name in ["public-key", "secret-key"] where text.hasPrefix(name) {
                let rest = text.dropFirst(name.count).trimmingWhitespace()
                if rest.hasPrefix("=") { entry = Entry(name: name, value: rest.dropFirst().trimmingWhitespace(), line: number) }
            }
            _ = try raw(entry.value, file: path, line: number)
            result.append(entry)
        }
        return result
    }

    /// Whether `endpoint` (tcp://HOST:PORT) binds only loopback addresses.
    public static func isLoopback(_ endpoint: String) -> Bool {
        guard endpoint.hasPrefix("tcp://") else { return false }
        var host = String(endpoint.dropFirst(6))
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host == "localhost" || host == "::1" || (host.hasPrefix("127.") && host.split(separator: ".").count == 4)
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars.drop { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        var s = String(String.UnicodeScalarView(scalars))
        while let last = s.unicodeScalars.last, last == " " || last == "\t" || last == "\n" || last == "\r" { s.unicodeScalars.removeLast() }
        return s
    }
}
