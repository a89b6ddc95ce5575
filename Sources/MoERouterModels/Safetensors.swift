import Foundation
import MoERouting

/// Why a checkpoint cannot be read. Every case names the file and, where there is one, the tensor.
public enum CheckpointError: Error, Equatable, CustomStringConvertible {
    /// The file cannot be opened or read (missing, unreadable, a symlink loop, a directory).
    case unreadable(path: String, reason: String)
    /// The safetensors header is not what the format says.
    case badHeader(path: String, reason: String)
    /// A tensor's entry or bytes are wrong.
    case badTensor(path: String, tensor: String, reason: String)
    /// `config.json` or the shard index does not say what the loader needs.
    case badConfig(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "\(path): \(reason)"
        case .badHeader(let path, let reason): "\(path): safetensors header: \(reason)"
        case .badTensor(let path, let tensor, let reason): "\(path): tensor \(tensor): \(reason)"
        case .badConfig(let path, let reason): "\(path): \(reason)"
        }
    }
}

/// `data` as a JSON object, or the error `failure` makes of the reason it is not one.
func jsonObject(_ data: Data, failure: (String) -> CheckpointError) throws(CheckpointError) -> [String: Any] {
    let parsed: Any
    do { parsed = try JSONSerialization.jsonObject(with: data) } catch {
        throw failure("invalid JSON (\(error.localizedDescription))")
    }
    guard let object = parsed as? [String: Any] else { throw failure("not a JSON object") }
    return object
}

/// A safetensors element type (the format's names).
public enum TensorDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL
    case F8_E4M3, F8_E5M2

    public var byteSize: Int {
        switch self {
        case .F64, .I64, .U64: 8
        case .F32, .I32, .U32: 4
        case .F16, .BF16, .I16, .U16: 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: 1
        }
    }
}

/// One safetensors file, of which only the header is read on opening: 8 bytes of length, then
/// the JSON header. Every entry is checked (dtype, shape, offsets inside the data and not
/// overlapping, byte count = elements × dtype size), so a tensor's bytes are read with one
/// `pread` of exactly its range — never the weights around it.
public final class SafetensorsFile: @unchecked Sendable {
    /// Headers larger than this are refused (the format's reference implementation's limit).
    public static let maxHeaderBytes = 100 << 20

    public struct Tensor: Sendable, Equatable {
        public let name: String
        public let dtype: TensorDType
        public let shape: [Int]
        /// Absolute byte range in the file.
        public let range: Range<Int>
        public var elementCount: Int { shape.reduce(1, *) }
    }

    public let path: String
    public let tensors: [String: Tensor]
    /// Bytes read from the file so far (the header, then each tensor read).
    public private(set) var bytesRead: Int
    private let fd: Int32

    /// Opens `path` and reads and checks its header.
    public init(path: String) throws(CheckpointError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)  // never blocks on a FIFO; refused below
        guard fd >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        do throws(CheckpointError) {
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw CheckpointError.unreadable(path: path, reason: String(cString: strerror(errno))) }
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw CheckpointError.unreadable(path: path, reason: "not a regular file") }
            let fileSize = Int(st.st_size)
            guard fileSize >= 8 else { throw CheckpointError.badHeader(path: path, reason: "file holds \(fileSize) bytes, less than the 8-byte header length") }
            let lengthBytes = try Self.pread(fd, path: path, offset: 0, count: 8)
            let length = lengthBytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            guard length <= UInt64(Self.maxHeaderBytes) else {
                throw CheckpointError.badHeader(path: path, reason: "header length \(length) exceeds the \(Self.maxHeaderBytes)-byte limit")
            }
            guard Int(length) <= fileSize - 8 else {
                throw CheckpointError.badHeader(path: path, reason: "header length \(length) runs past the end of the \(fileSize)-byte file")
            }
            let header = try Self.pread(fd, path: path, offset: 8, count: Int(length))
            tensors = try Self.parse(header, path: path, dataStart: 8 + Int(length), dataSize: fileSize - 8 - Int(length))
            bytesRead = 8 + Int(length)
            self.fd = fd
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    /// The raw bytes of tensor `name`.
    public func read(_ name: String) throws(CheckpointError) -> [UInt8] {
        guard let t = tensors[name] else { throw .badTensor(path: path, tensor: name, reason: "not in the file") }
        let bytes = try Self.pread(fd, path: path, offset: t.range.lowerBound, count: t.range.count, tensor: name)
        bytesRead += bytes.count
        return bytes
    }

    /// Tensor `name` as a [rows, columns] matrix of expert ids (I32 or I64 — DeepSeek-V4's
    /// tid2eid), row-major, each value checked to fit Int32 (ranges against the layer are checked
    /// when it is built). Another dtype or shape is an error naming the tensor.
    public func readIndexMatrix(_ name: String, rows: Int, columns: Int) throws(CheckpointError) -> [Int32] {
        guard let t = tensors[name] else { throw .badTensor(path: path, tensor: name, reason: "not in the file") }
        guard t.dtype == .I32 || t.dtype == .I64 else {
            throw .badTensor(path: path, tensor: name, reason: "dtype \(t.dtype.rawValue) is not supported here (I32 or I64)")
        }
        guard t.shape == [rows, columns] else {
            throw .badTensor(path: path, tensor: name, reason: "shape \(t.shape), expected [\(rows), \(columns)]")
        }
        let raw = try read(name)
        let wide = t.dtype == .I64
        var out = [Int32](repeating: 0, count: rows * columns)
        var bad: (Int, Int64)?
        raw.withUnsafeBytes { b in
            for i in out.indices {
                let v = wide ? Int64(littleEndian: b.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
                    : Int64(Int32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                guard let n = Int32(exactly: v) else { bad = bad ?? (i, v); continue }
                out[i] = n
            }
        }
        if let (i, v) = bad {
            throw .badTensor(path: path, tensor: name, reason: "value [\(i / columns)][\(i % columns)] = \(v) is not an expert id")
        }
        return out
    }

    /// Tensor `name` as a vector of `count` fp32 values, exactly (F32 as is; BF16 and F16 widen
    /// exactly) with the dtype it is stored in. Other dtypes, another length, or a NaN/Inf value
    /// are errors naming the tensor.
    public func readVector(_ name: String, count: Int) throws(CheckpointError) -> (values: [Float], stored: DType) {
        guard let t = tensors[name] else { throw .badTensor(path: path, tensor: name, reason: "not in the file") }
        let stored: DType
        switch t.dtype {
        case .F32: stored = .fp32
        case .BF16: stored = .bf16
        case .F16: stored = .fp16
        default: throw .badTensor(path: path, tensor: name, reason: "dtype \(t.dtype.rawValue) is not supported here (F32, BF16 or F16)")
        }
        guard t.elementCount == count, t.shape.count == 1 else {
            throw .badTensor(path: path, tensor: name, reason: "shape \(t.shape), expected [\(count)]")
        }
        let raw = try read(name)
        let values: [Float] = raw.withUnsafeBytes { b in
            (0..<count).map { i in
                switch stored {
                case .fp32: Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case .bf16, .fp16: stored.widen(UInt16(littleEndian: b.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                }
            }
        }
        if let i = values.firstIndex(where: { !$0.isFinite }) {
            throw .badTensor(path: path, tensor: name, reason: "value \(i) is \(values[i]); a bias must be finite")
        }
        return (values, stored)
    }

    private static func parse(_ header: [UInt8], path: String, dataStart: Int, dataSize: Int) throws(CheckpointError) -> [String: Tensor] {
        let object = try jsonObject(Data(header)) { .badHeader(path: path, reason: $0) }
        var tensors: [String: Tensor] = [:]
        for (name, value) in object where name != "__metadata__" {
            func bad(_ reason: String) -> CheckpointError { .badTensor(path: path, tensor: name, reason: reason) }
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shapeValues = entry["shape"] as? [Any], let offsets = entry["data_offsets"] as? [Any], offsets.count == 2 else {
                throw bad("entry needs dtype, shape and data_offsets [begin, end]")
            }
            guard let dtype = TensorDType(rawValue: dtypeName) else { throw bad("unknown dtype \(dtypeName)") }
            let shape = shapeValues.compactMap { ($0 as? NSNumber).flatMap { Int(exactly: $0.doubleValue) } }
            guard shape.count == shapeValues.count, shape.allSatisfy({ $0 >= 0 }) else { throw bad("shape \(shapeValues) is not a list of sizes") }
            let bounds = offsets.compactMap { ($0 as? NSNumber).flatMap { Int(exactly: $0.doubleValue) } }
            guard bounds.count == 2, bounds[0] >= 0, bounds[0] <= bounds[1] else { throw bad("data_offsets \(offsets) are not [begin, end]") }
            guard bounds[1] <= dataSize else {
                throw bad("data_offsets \(bounds) run past the end of the \(dataSize)-byte data (the file is truncated?)")
            }
            var elements = 1
            for d in shape {
                let (product, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow else { throw bad("shape \(shape) overflows") }
                elements = product
            }
            let (expected, overflow) = elements.multipliedReportingOverflow(by: dtype.byteSize)
            guard !overflow, expected == bounds[1] - bounds[0] else {
                throw bad("holds \(bounds[1] - bounds[0]) bytes; shape \(shape) of \(dtypeName) takes \(overflow ? "more" : "\(expected)")")
            }
            tensors[name] = Tensor(name: name, dtype: dtype, shape: shape, range: dataStart + bounds[0]..<dataStart + bounds[1])
        }
        let ordered = tensors.values.filter { !$0.range.isEmpty }.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (a, b) in zip(ordered, ordered.dropFirst()) where b.range.lowerBound < a.range.upperBound {
            throw .badTensor(path: path, tensor: b.name, reason: "its bytes overlap tensor \(a.name)'s")
        }
        return tensors
    }

    private static func pread(_ fd: Int32, path: String, offset: Int, count: Int, tensor: String? = nil) throws(CheckpointError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let reason = n < 0 ? String(cString: strerror(errno)) : "the file ends at byte \(offset + done), \(count - done) bytes short"
                if let tensor { throw .badTensor(path: path, tensor: tensor, reason: reason) }
                throw .unreadable(path: path, reason: reason)
            }
            done += n
        }
        return out
    }
}
