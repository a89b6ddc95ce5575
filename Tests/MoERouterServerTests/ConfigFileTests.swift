import Foundation
@testable import MoERouterServer
import MoERouting
import Testing

/// Configuration errors name the key, the value and where the file holds it.
@Suite struct ConfigFileTests {
    func write(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "moe-config-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func anInvalidLayerValueNamesItsKeyAndPosition() throws {
        let path = try write("""
            workers: 2
            layers:
              - preset: deepseek-v3
              - preset: mixtral-8x7b
                gate_dtype: fp8
            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try ConfigFile.load(path: path)
        #expect(file.workers == 2)
        #expect(file.position("workers") == SourcePosition(file: path, line: 1, column: 10))
        #expect(throws: ConfigError.invalid(key: "layers[1].gate_dtype", value: "fp8", expected: "fp32, bf16 or fp16",
                                            at: SourcePosition(file: path, line: 5, column: 17))) {
            try file.layerSpecs(baseDirectory: "/")
        }
        let text = ConfigError.invalid(key: "layers[1].gate_dtype", value: "fp8", expected: "fp32, bf16 or fp16",
                                       at: SourcePosition(file: path, line: 5, column: 17)).description
        #expect(text == "\(path):5:17: layers[1].gate_dtype = 'fp8' is not valid; expected fp32, bf16 or fp16")
    }

    /// Found by fuzzing: Yams reads `1:2:3...` as a base-60 integer and traps on overflow,
    /// which would kill the daemon at start or at a SIGHUP reload. Refused before decoding.
    @Test func baseSixtyNumbersAreRefusedNotCrashedOn() throws {
        let long = Array(repeating: "59", count: 14).joined(separator: ":")
        do {
            _ = try ConfigFile.parse("workers: 2\nmax_tokens: \(long)\n", path: "x.yaml")
            Issue.record("parsed")
        } catch {
            #expect(error.description.contains("x.yaml:2:13") && error.description.contains("base-60"), "\(error)")
        }
        // Yams 5 skips parts that are not numbers, so this one trapped too (the fuzzer's second find).
        let mixed = "x:" + Array(repeating: "1", count: 14).joined(separator: ":x:")
        #expect(throws: ConfigError.self) { try ConfigFile.parse("layers:\n  - {preset: p, top_k: \(mixed)}\n", path: "z.yaml") }
        let fine = try ConfigFile.parse("endpoint: ipc:///tmp/a.sock\ntcp: tcp://127.0.0.1:5555\nbackend: \"1:2\"\n",
                                        path: "y.yaml")
        #expect(fine.tcp == "tcp://127.0.0.1:5555" && fine.backend == "1:2", "colons in strings, and quoted scalars, are untouched")
    }

    @Test func aMissingShapeIsNamed() throws {
        let path = try write("""
            layers:
              - name: custom
                method: softmax_topk
                top_k: 2
            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: ConfigError.missing(key: "layers[0].num_experts", at: SourcePosition(file: path, line: 2, column: 5))) {
            try ConfigFile.load(path: path).layerSpecs(baseDirectory: "/")
        }
    }

    @Test func typeAndSyntaxErrorsCarryThePosition() throws {
        let typed = try write("workers: many\n")
        defer { try? FileManager.default.removeItem(atPath: typed) }
        do {
            _ = try ConfigFile.load(path: typed)
            Issue.record("accepted workers: many")
        } catch {
            guard case .file(let p, let reason, let at) = error else { Issue.record("\(error)"); return }
            #expect(p == typed && reason.hasPrefix("workers:") && at == SourcePosition(file: typed, line: 1, column: 10))
        }
        let broken = try write("layers: [\n")
        defer { try? FileManager.default.removeItem(atPath: broken) }
        #expect(throws: ConfigError.self) { try ConfigFile.load(path: broken) }
    }

    @Test func layerBuildErrorsNameTheLayer() throws {
        var spec = Presets.spec(named: "mixtral-8x7b", gateDType: .fp32)!
        spec.topK = 9
        #expect(throws: ConfigError.self) { try LayerCatalog([spec]) }
        do { _ = try LayerCatalog([spec, spec]) } catch { #expect(error.description.hasPrefix("layer 'mixtral-8x7b':")) }
        #expect(throws: ConfigError.noLayers) { try LayerCatalog([]) }
    }

    /// A channel server's copy of the layers (`LayerSlot.Reader`) is replaced by the next read
    /// after a reload, and an idle server's `drop` leaves the old layers to the reload alone.
    @Test func aReaderSeesAReloadAtOnceAndLetsGoWhenDropped() throws {
        let spec = Presets.spec(named: "mixtral-8x7b", gateDType: .fp32)!
        var other = spec
        other.name = "other"
        let slot = LayerSlot(try LayerCatalog([spec]))
        var reader = LayerSlot.Reader()
        let first = ObjectIdentifier(reader.current(slot))
        #expect(ObjectIdentifier(reader.current(slot)) == first)
        _ = slot.replace(with: try LayerCatalog([spec, other]))
        #expect(reader.current(slot).layers.count == 2, "the next read after a reload sees the new layers")
        var replaced = slot.replace(with: try LayerCatalog([spec]))
        #expect(!isKnownUniquelyReferenced(&replaced), "the reader still holds the layers it read")
        reader.drop()
        #expect(isKnownUniquelyReferenced(&replaced), "a dropped reader holds no layers")
        #expect(reader.current(slot).layers.count == 1)
    }
}
