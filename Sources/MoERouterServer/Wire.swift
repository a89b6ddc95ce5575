import CMoERouterWire

/// A status code of the wire protocol (`moe_status` in Include/moe_router.h).
public struct WireStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ s: moe_status) { rawValue = s.rawValue }

    public static let ok = WireStatus(MOE_OK)
    public static let malformed = WireStatus(MOE_ERR_MALFORMED)
    public static let badMagic = WireStatus(MOE_ERR_BAD_MAGIC)
    public static let badVersion = WireStatus(MOE_ERR_BAD_VERSION)
    public static let unknownOp = WireStatus(MOE_ERR_UNKNOWN_OP)
    public static let unknownLayer = WireStatus(MOE_ERR_UNKNOWN_LAYER)
    public static let badDType = WireStatus(MOE_ERR_BAD_DTYPE)
    public static let sizeMismatch = WireStatus(MOE_ERR_SIZE_MISMATCH)
    public static let outOfBounds = WireStatus(MOE_ERR_OUT_OF_BOUNDS)
    public static let overflow = WireStatus(MOE_ERR_OVERFLOW)
    public static let misaligned = WireStatus(MOE_ERR_MISALIGNED)
    public static let overlap = WireStatus(MOE_ERR_OVERLAP)
    public static let unknownHandle = WireStatus(MOE_ERR_UNKNOWN_HANDLE)
    public static let shmRefused = WireStatus(MOE_ERR_SHM_REFUSED)
    public static let shmOwner = WireStatus(MOE_ERR_SHM_OWNER)
    public static let shmPermissions = WireStatus(MOE_ERR_SHM_PERMISSIONS)
    public static let shmOpen = WireStatus(MOE_ERR_SHM_OPEN)
    public static let shmSize = WireStatus(MOE_ERR_SHM_SIZE)
    public static let shmTruncated = WireStatus(MOE_ERR_SHM_TRUNCATED)
    public static let shmName = WireStatus(MOE_ERR_SHM_NAME)
    public static let nonFinite = WireStatus(MOE_ERR_NONFINITE)
    public static let busy = WireStatus(MOE_ERR_BUSY)
    public static let deadline = WireStatus(MOE_ERR_DEADLINE)
    public static let tooLarge = WireStatus(MOE_ERR_TOO_LARGE)
    public static let limit = WireStatus(MOE_ERR_LIMIT)
    public static let shuttingDown = WireStatus(MOE_ERR_SHUTTING_DOWN)
    public static let badField = WireStatus(MOE_ERR_BAD_FIELD)
    public static let internalError = WireStatus(MOE_ERR_INTERNAL)
    public static let notPermitted = WireStatus(MOE_ERR_NOT_PERMITTED)
    public static let badPlacement = WireStatus(MOE_ERR_BAD_PLACEMENT)
    public static let tokenID = WireStatus(MOE_ERR_TOKEN_ID)
    public static let badMask = WireStatus(MOE_ERR_BAD_MASK)

    public var description: String { "status \(rawValue)" }

    /// The metrics label: `moe_status_name` without its prefix, lower-cased ("size_mismatch").
    public var name: String {
        let c = String(cString: moe_status_name(Int32(rawValue)))
        for prefix in ["MOE_ERR_", "MOE_"] where c.hasPrefix(prefix) { return c.dropFirst(prefix.count).lowercased() }
        return c.lowercased()
    }
}

/// A request the daemon refuses: a status and a message naming the field and value.
public struct RequestFailure: Error, CustomStringConvertible {
    public let status: WireStatus
    public let message: String
    public init(_ status: WireStatus, _ message: String) {
        self.status = status
        self.message = message
    }
    public var description: String { message }
}

/// The wire's operations: `moe_op` in Include/moe_router.h. The codes come from the header
/// (one definition of the protocol); the enum gives the daemon exhaustive switches over them.
/// The protocol versions this daemon serves (Include/moe_router_wire.h).
public enum WireVersion {
    public static let newest = UInt16(MOE_PROTOCOL_VERSION)
    public static let oldest = UInt16(MOE_PROTOCOL_MIN_VERSION)
    public static let served = oldest...newest
}

public enum WireOp: Sendable, CaseIterable {
    case hello, listLayers, registerShm, unregisterShm, route, stats, ping, setPlacement, expertLoad, openChannel, closeChannel

    /// The operation's code on the wire.
    public var rawValue: UInt16 {
        let op: moe_op = switch self {
        case .hello: MOE_OP_HELLO
        case .listLayers: MOE_OP_LIST_LAYERS
        case .registerShm: MOE_OP_REGISTER_SHM
        case .unregisterShm: MOE_OP_UNREGISTER_SHM
        case .route: MOE_OP_ROUTE
        case .stats: MOE_OP_STATS
        case .ping: MOE_OP_PING
        case .setPlacement: MOE_OP_SET_PLACEMENT
        case .expertLoad: MOE_OP_EXPERT_LOAD
        case .openChannel: MOE_OP_OPEN_CHANNEL
        case .closeChannel: MOE_OP_CLOSE_CHANNEL
        }
        return UInt16(op.rawValue)
    }

    /// The metrics label ("list_layers").
    public var name: String {
        switch self {
        case .hello: "hello"
        case .listLayers: "list_layers"
        case .registerShm: "register_shm"
        case .unregisterShm: "unregister_shm"
        case .route: "route"
        case .stats: "stats"
        case .ping: "ping"
        case .setPlacement: "set_placement"
        case .expertLoad: "expert_load"
        case .openChannel: "open_channel"
        case .closeChannel: "close_channel"
        }
    }

    /// The first protocol version that has the operation.
    public var sinceVersion: UInt16 {
        switch self {
        case .setPlacement, .expertLoad, .openChannel, .closeChannel: 2
        default: 1
        }
    }

    /// The operation with code `rawValue`, nil for any other code.
    public init?(rawValue: UInt16) {
        guard let op = Self.allCases.first(where: { $0.rawValue == rawValue }) else { return nil }
        self = op
    }
}

enum WireBytes {
    /// Reads a `T` from `bytes` at `offset` (caller checked the size).
    static func load<T>(_ type: T.Type, from bytes: UnsafeRawBufferPointer, at offset: Int = 0) -> T {
        bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
    }

    /// The raw bytes of a struct value.
    static func bytes<T>(of value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }

    /// A NUL-padded fixed field (a C `char[N]` imported as a tuple) as a String, or nil when it
    /// holds no NUL.
    /// The bytes of a NUL-terminated fixed field, up to the NUL; nil when there is none.
    static func bytes<T>(fromFixed field: T) -> [UInt8]? {
        withUnsafeBytes(of: field) { raw in raw.firstIndex(of: 0).map { Array(raw[..<$0]) } }
    }

    static func string<T>(fromFixed field: T) -> String? {
        withUnsafeBytes(of: field) { raw in
            guard let end = raw.firstIndex(of: 0) else { return nil }
            return String(decoding: raw[..<end], as: UTF8.self)
        }
    }

    /// Writes `text` NUL-padded into a fixed field, truncating to leave room for the NUL.
    static func setFixed<T>(_ field: inout T, _ text: String) {
        withUnsafeMutableBytes(of: &field) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            let utf8 = Array(text.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: utf8)
        }
    }
}
