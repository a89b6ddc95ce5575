import Foundation
import ZIPFoundation

/// Just enough of the .npy format for moe-routerctl: read a C-ordered little-endian array and
/// write one.
struct NpyArray {
    var descr: String   // "<f4", "<f2", "<u2", "<i4"
    var shape: [Int]
    var data: Data

    struct Failure: Error, CustomStringConvertible { let description: String }

    static func read(path: String) throws -> NpyArray {
        guard let d = FileManager.default.contents(atPath: path) else { throw Failure(description: "cannot read \(path)") }
        guard d.count >= 10, d.prefix(6) == Data([0x93] + Array("NUMPY".utf8)) else {
            throw Failure(description: "\(path) is not a .npy file")
        }
        let major = d[6]
        let headerLen: Int, start: Int
        if major == 1 {
            headerLen = Int(d[8]) | Int(d[9]) << 8
            start = 10
        } else {
            guard d.count >= 12 else { throw Failure(description: "\(path): truncated header") }
            headerLen = Int(d[8]) | Int(d[9]) << 8 | Int(d[10]) << 16 | Int(d[11]) << 24
            start = 12
        }
        guard d.count >= start + headerLen else { throw Failure(description: "\(path): truncated header") }
        let header = String(decoding: d[start..<start + headerLen], as: UTF8.self)
        func field(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descrField = field("descr"), let q1 = descrField.firstIndex(of: "'"),
              let q2 = descrField[descrField.index(after: q1)...].firstIndex(of: "'") else {
            throw Failure(description: "\(path): no dtype in header")
        }
        let descr = String(descrField[descrField.index(after: q1)..<q2])
        if field("fortran_order")?.hasPrefix("True") == true {
            throw Failure(description: "\(path): Fortran-ordered arrays are not supported; save with np.ascontiguousarray")
        }
        guard let shapeField = field("shape"), let o = shapeField.firstIndex(of: "("), let c = shapeField.firstIndex(of: ")") else {
            throw Failure(description: "\(path): no shape in header")
        }
        let shape = shapeField[shapeField.index(after: o)..<c].split(separator: ",")
            .compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let body = d[(start + headerLen)...]
        let itemSize = Int(descr.dropFirst(2)) ?? 0
        let count = shape.reduce(1, *)
        guard body.count == count * itemSize else {
            throw Failure(description: "\(path): \(body.count) data bytes, expected \(count * itemSize) for shape \(shape)")
        }
        return NpyArray(descr: descr, shape: shape, data: Data(body))
    }

    /// The .npy bytes of this array (format 1.0).
    var encoded: Data {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var out = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let len = header.utf8.count
        out.append(contentsOf: [UInt8(len & 0xff), UInt8(len >> 8)])
        out.append(contentsOf: Array(header.utf8))
        out.append(data)
        return out
    }
}

/// Writes arrays as an .npz (a zip of .npy files, as np.savez does) through ZIPFoundation.
func writeNpz(path: String, _ arrays: [(name: String, array: NpyArray)]) throws {
    try? FileManager.default.removeItem(atPath: path)
    let archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .create)
    for (name, array) in arrays {
        let bytes = array.encoded
        try archive.addEntry(with: name + ".npy", type: .file, uncompressedSize: Int64(bytes.count),
                             compressionMethod: .deflate) { position, size in
            bytes.subdata(in: Int(position)..<Int(position) + size)
        }
    }
}
