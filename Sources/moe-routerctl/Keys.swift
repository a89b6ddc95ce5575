import ArgumentParser
import CZMQ
import Foundation

/// `moe-routerctl keygen NAME`: a CURVE key pair for the daemon's tcp endpoint or for a client.
struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a ZeroMQ CURVE key pair: NAME.key (both keys, mode 0600) and NAME.pub (the public key).",
        discussion: """
            The daemon takes its NAME.key with --tcp-curve-key; clients' NAME.pub lines make its \
            --tcp-curve-allow list. A client takes the daemon's .pub and its own .key \
            (moe-routerctl --curve-server-key, --curve-key; moe_connect_curve; Client(curve=...)).
            """)

    @Argument(help: "Path prefix of the two files (neither may exist).")
    var name: String

    func run() throws {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else {
            printError("keygen: libzmq was built without CURVE support")
            throw ExitCode(69)
        }
        let (p, s) = (String(cString: pub), String(cString: sec))
        try write("\(name).key", mode: 0o600, "# moe-router CURVE key pair: keep this file secret\npublic-key = \(p)\nsecret-key = \(s)\n")
        try write("\(name).pub", mode: 0o644, "\(p)\n")
        print("\(name).key\n\(name).pub  \(p)")
    }

    private func write(_ path: String, mode: mode_t, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else {
            printError("keygen: \(path): \(String(cString: strerror(errno)))")
            throw ExitCode(73)
        }
        defer { close(fd) }
        fchmod(fd, mode)
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else {
            printError("keygen: \(path): \(String(cString: strerror(errno)))")
            throw ExitCode(74)
        }
    }
}

/// The Z85 keys in a key file: `public-key = ` / `secret-key = ` lines, or a bare key (a .pub).
func curveKeys(in path: String) throws -> (public: String, secret: String?) {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        printError("cannot read the key file \(path)")
        throw ExitCode(66)
    }
    var pub: String?, sec: String?
    for raw in text.split(separator: "\n") {
        // Z85 uses "#" and "=" too: comments are whole lines, and only the two names take "=".
        let line = raw.trimmingCharacters(in: .whitespaces)
        guard !line.isEmpty, !line.hasPrefix("#") else { continue }
        var name = "public-key", value = line
        for key in ["public-key", "secret-key"] where line.hasPrefix(key) {
            let rest = line.dropFirst(key.count).trimmingCharacters(in: .whitespaces)
            if rest.hasPrefix("=") { (name, value) = (key, rest.dropFirst().trimmingCharacters(in: .whitespaces)) }
        }
        if name == "public-key" { pub = value } else { sec = value }
    }
    guard let pub, pub.utf8.count == 40 else {
        printError("\(path) holds no 40-character Z85 public key")
        throw ExitCode(66)
    }
    return (pub, sec)
}
