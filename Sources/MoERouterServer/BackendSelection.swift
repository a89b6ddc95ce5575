import MoERouting

extension BackendFactory {
    /// A backend with the sentence saying why it was chosen.
    public struct Selection: Sendable {
        public let backend: any RoutingBackend
        public let reason: String
    }

    /// Resolves `name`: the CPU kernels directly, "rocm" and "auto" through `BackendChoice`
    /// ("rocm" without a usable device is an error naming why).
    public static func select(_ name: String, threads: Int, device: Int) throws(ConfigError) -> Selection {
        guard let choice = BackendChoice(rawValue: name), choice != .cpu else {
            let backend = try make(name, threads: threads)
            return Selection(backend: backend, reason: "backend \(backend.name): requested with --backend \(name)")
        }
        do {
            let s = try choice.select(device: device, cpu: { CPUBackend(threads: threads) })
            return Selection(backend: s.backend, reason: s.reason)
        } catch {
            throw ConfigError("--backend \(name) (device \(device)): \(error)")
        }
    }

    /// Uploads every layer to a device backend before it is served (a no-op on the CPU).
    static func prepare(_ catalog: LayerCatalog, on backend: any RoutingBackend) throws(ConfigError) {
        guard let rocm = backend as? ROCmBackend else { return }
        for layer in catalog.layers {
            do { try rocm.prepare(layer) } catch { throw ConfigError("layer '\(layer.spec.name)': \(error)") }
        }
    }

    /// Frees the device copies of retired layers that no request holds any more; keeps the rest
    /// for a later call. Once a layer is out of the slot, nothing can take a new reference to
    /// it, so "only the retired list holds it" stays true.
    static func releaseUnused(_ retired: inout [BuiltLayer], on backend: any RoutingBackend) {
        guard let rocm = backend as? ROCmBackend else { retired.removeAll(); return }
        var kept: [BuiltLayer] = []
        while var layer = retired.popLast() {
            if isKnownUniquelyReferenced(&layer) { rocm.release(layer) } else { kept.append(layer) }
        }
        retired = kept
    }
}
