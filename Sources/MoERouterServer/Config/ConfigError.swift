import MoERouting

/// Where a setting was written: a line and column of the configuration file.
public struct SourcePosition: Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// A configuration the daemon cannot start (or reload) with. Each case names the setting (its
/// flag or file key, e.g. `layers[2].gate_dtype`), the offending value and, for a value from the
/// configuration file, where it stands there.
public enum ConfigError: Error, Equatable, CustomStringConvertible {
    /// `key = value`, which is not `expected`.
    case invalid(key: String, value: String, expected: String, at: SourcePosition? = nil)
    /// A number outside the setting's range.
    case outOfRange(key: String, value: Int, range: ClosedRange<Int>, at: SourcePosition? = nil)
    /// A required key is absent.
    case missing(key: String, at: SourcePosition? = nil)
    /// The configuration file cannot be read or parsed.
    case file(path: String, reason: String, at: SourcePosition? = nil)
    /// The layer cannot be built (or uploaded to the backend).
    case layer(String, reason: String)
    /// A checkpoint directory cannot be read (the text names the file and tensor).
    case checkpoint(String)
    /// Neither `--preset` nor a configuration file named a layer.
    case noLayers
    /// The requested backend cannot run here.
    case backend(BackendKind, device: Int, BackendError)

    public var description: String {
        func located(_ text: String, _ at: SourcePosition?) -> String { at.map { "\($0): \(text)" } ?? text }
        switch self {
        case .invalid(let key, let value, let expected, let at):
            return located("\(key) = '\(value)' is not valid; expected \(expected)", at)
        case .outOfRange(let key, let value, let range, let at):
            return located("\(key) = \(value) is outside \(range.lowerBound)...\(range.upperBound)", at)
        case .missing(let key, let at):
            return located("\(key) is missing", at)
        case .file(let path, let reason, let at):
            return at.map { "\($0): \(reason)" } ?? "config \(path): \(reason)"
        case .layer(let name, let reason):
            return "layer '\(name)': \(reason)"
        case .checkpoint(let text):
            return "--model: \(text)"
        case .noLayers:
            return "no layers: pass --preset NAME or --config FILE"
        case .backend(let kind, let device, let error):
            return "--backend \(kind) (device \(device)): \(error)"
        }
    }
}
