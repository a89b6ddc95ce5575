import Foundation
import MoERouterModels
import MoERouting
import Testing

/// Writes safetensors files byte by byte (no library), so the reader is checked against the
/// format itself, and each malformation is made on purpose.
struct SafetensorsFixture {
    var entries: [(name: String, dtype: String, shape: [Int], bytes: [UInt8])] = []
    /// Replaces the generated header JSON when set (for malformed headers).
    var rawHeader: String?
    /// Overrides an entry's data_offsets.
    var offsets: [String: [Int]] = [:]
    /// Declared header length in place of the real one.
    var declaredLength: UInt64?

    func bytes() -> [UInt8] {
        var data: [UInt8] = []
        var fields: [String] = [#""__metadata__":{"format":"pt"}"#]
        for e in entries {
            let range = offsets[e.name] ?? [data.count, data.count + e.bytes.count]
            fields.append(#""\#(e.name)":{"dtype":"\#(e.dtype)","shape":\#(e.shape),"data_offsets":\#(range)}"#)
            data += e.bytes
        }
        let header = Array((rawHeader ?? "{" + fields.joined(separator: ",") + "}").utf8)
        let length = declaredLength ?? UInt64(header.count)
        return withUnsafeBytes(of: length.littleEndian, Array.init) + header + data
    }

    func write() throws -> String {
        let path = NSTemporaryDirectory() + "st-\(UInt32.random(in: 0...UInt32.max)).safetensors"
        try Data(bytes()).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func f32(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes(Array.init) }
    static func u16(_ v: [UInt16]) -> [UInt8] { v.withUnsafeBytes(Array.init) }
}

@Suite struct SafetensorsTests {
    func open(_ f: SafetensorsFixture) throws -> SafetensorsFile {
        let path = try f.write()
        defer { unlink(path) }
        return try SafetensorsFile(path: path)
    }

    func failure(_ f: SafetensorsFixture, reading name: String? = nil, count: Int = 4) -> CheckpointError? {
        do {
            let file = try open(f)
            if let name { _ = try file.readVector(name, count: count) }
            return nil
        } catch let e as CheckpointError {
            return e
        } catch {
            return nil
        }
    }

    @Test func readsOnlyTheHeaderAndTheTensorAskedFor() throws {
        let bias: [Float] = [0.5, -1.25, 3, 1e-3]
        var f = SafetensorsFixture()
        f.entries = [("weight", "BF16", [1024, 64], [UInt8](repeating: 1, count: 1024 * 64 * 2)),
                     ("gate.e_score_correction_bias", "F32", [4], SafetensorsFixture.f32(bias))]
        let file = try open(f)
        let header = f.bytes().count - 1024 * 64 * 2 - 16
        #expect(file.bytesRead == header)
        #expect(file.tensors["weight"]?.shape == [1024, 64])
        let (values, stored) = try file.readVector("gate.e_score_correction_bias", count: 4)
        #expect(values == bias && stored == .fp32)
        #expect(file.bytesRead == header + 16, "the 128 KiB weight was never read")
    }

    @Test func bf16AndFp16BiasesWidenExactly() throws {
        // 1, -1.5, the smallest subnormal, the largest finite value
        for (dtype, stored, bits) in [("BF16", DType.bf16, [0x3F80, 0xBFC0, 0x0001, 0x7F7F] as [UInt16]),
                                      ("F16", DType.fp16, [0x3C00, 0xBE00, 0x0001, 0x7BFF])] {
            var f = SafetensorsFixture()
            f.entries = [("b", dtype, [4], SafetensorsFixture.u16(bits))]
            let (values, s) = try open(f).readVector("b", count: 4)
            #expect(s == stored && values == bits.map { stored.widen($0) })
        }
    }

    @Test func malformedHeadersAreNamed() throws {
        var f = SafetensorsFixture()
        f.entries = [("b", "F32", [4], SafetensorsFixture.f32([1, 2, 3, 4]))]
        var long = f
        long.declaredLength = 1 << 40
        #expect(failure(long)?.description.contains("exceeds the") == true)
        var past = f
        past.declaredLength = 10_000
        #expect(failure(past)?.description.contains("runs past the end") == true)
        var json = f
        json.rawHeader = "{not json"
        #expect(failure(json)?.description.contains("invalid JSON") == true)
        var notObject = f
        notObject.rawHeader = "[1, 2]"
        #expect(failure(notObject)?.description.contains("not a JSON object") == true)
        var missing = f
        missing.rawHeader = #"{"b":{"dtype":"F32","shape":[4]}}"#
        #expect(failure(missing)?.description.contains("tensor b: entry needs dtype, shape and data_offsets") == true)
        #expect(failure(SafetensorsFixture(rawHeader: ""))?.description.contains("invalid JSON") == true)
    }

    @Test func tensorEntriesAreChecked() throws {
        let four = SafetensorsFixture.f32([1, 2, 3, 4])
        func reason(_ f: SafetensorsFixture) -> String { failure(f)?.description ?? "accepted" }
        var outside = SafetensorsFixture(entries: [("b", "F32", [4], four)])
        outside.offsets["b"] = [0, 64]
        #expect(reason(outside).contains("tensor b: data_offsets [0, 64] run past the end"))
        var size = SafetensorsFixture(entries: [("b", "F32", [5], four)])
        #expect(reason(size).contains("holds 16 bytes; shape [5] of F32 takes 20"))
        size.entries = [("b", "F64", [4], four)]
        #expect(reason(size).contains("takes 32"))
        var overlap = SafetensorsFixture(entries: [("a", "F32", [4], four), ("b", "F32", [4], four)])
        overlap.offsets["b"] = [8, 24]
        #expect(reason(overlap).contains("overlap"))
        let unknown = SafetensorsFixture(entries: [("b", "F4", [4], [0, 0])])
        #expect(reason(unknown).contains("unknown dtype F4"))
        var reversed = SafetensorsFixture(entries: [("b", "F32", [4], four)])
        reversed.offsets["b"] = [16, 0]
        #expect(reason(reversed).contains("are not [begin, end]"))
        let negative = SafetensorsFixture(entries: [("b", "F32", [-4], four)])
        #expect(reason(negative).contains("is not a list of sizes"))
    }

    @Test func biasReadsRefuseWrongDtypeLengthAndNonFinite() throws {
        let e4m3 = SafetensorsFixture(entries: [("b", "F8_E4M3", [4], [1, 2, 3, 4])])
        #expect(failure(e4m3, reading: "b")?.description.contains("dtype F8_E4M3 is not supported") == true)
        let long = SafetensorsFixture(entries: [("b", "F32", [5], SafetensorsFixture.f32([1, 2, 3, 4, 5]))])
        #expect(failure(long, reading: "b")?.description.contains("shape [5], expected [4]") == true)
        let nan = SafetensorsFixture(entries: [("b", "F32", [4], SafetensorsFixture.f32([1, .nan, 3, 4]))])
        #expect(failure(nan, reading: "b")?.description.contains("value 1 is nan") == true)
        let inf = SafetensorsFixture(entries: [("b", "BF16", [4], SafetensorsFixture.u16([0, 0x7F80, 0, 0]))])
        #expect(failure(inf, reading: "b")?.description.contains("value 1 is inf") == true)
        #expect(failure(inf, reading: "absent")?.description.contains("tensor absent: not in the file") == true)
    }

    @Test func aFileTruncatedAfterOpeningIsAShortRead() throws {
        let f = SafetensorsFixture(entries: [("b", "F32", [4], SafetensorsFixture.f32([1, 2, 3, 4]))])
        let path = try f.write()
        defer { unlink(path) }
        let file = try SafetensorsFile(path: path)
        #expect(truncate(path, off_t(f.bytes().count - 8)) == 0)
        #expect(throws: CheckpointError.self) { try file.readVector("b", count: 4) }
        // and truncated before opening: the entry runs past the data
        #expect(throws: CheckpointError.self) { try SafetensorsFile(path: path) }
    }

    @Test func unreadablePathsAreNamed() throws {
        #expect(throws: CheckpointError.self) { try SafetensorsFile(path: "/nonexistent/model.safetensors") }
        do { _ = try SafetensorsFile(path: NSTemporaryDirectory()) } catch {
            #expect(error.description.contains("not a regular file") || error.description.contains("Is a directory"))
        }
        let loop = NSTemporaryDirectory() + "st-loop-\(UInt32.random(in: 0...UInt32.max))"
        #expect(symlink(loop, loop) == 0)
        defer { unlink(loop) }
        do {
            _ = try SafetensorsFile(path: loop)
            Issue.record("a symlink loop opened")
        } catch {
            #expect(error.description.contains("symbolic links"))
        }
    }
}
