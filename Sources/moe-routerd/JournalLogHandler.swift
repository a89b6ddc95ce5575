import Foundation
import Logging

/// One line per event on stderr with the syslog priority prefix journald understands
/// (`<6>message key=value`), so `journalctl -p warning` filters and nothing is split across
/// entries. No timestamp or label: the journal adds its own and knows the unit.
struct JournalLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
             source: String, file: String, function: String, line: UInt) {
        var text = "<\(Self.priority(level))>\(message)"
        let all = metadata.merging(explicit ?? [:]) { $1 }
        for (k, v) in all.sorted(by: { $0.key < $1.key }) { text += " \(k)=\(v)" }
        // One event, one journal entry: a newline inside a message would start a new one.
        text = text.replacingOccurrences(of: "\n", with: "\\n") + "\n"
        FileHandle.standardError.write(Data(text.utf8))
    }

    /// Whether stderr is connected to the journal: $JOURNAL_STREAM names stderr's device:inode.
    static var stderrIsJournal: Bool {
        guard let v = ProcessInfo.processInfo.environment["JOURNAL_STREAM"], !v.isEmpty else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return v == "\(st.st_dev):\(st.st_ino)"
    }
}
