import MoERouting

/// A plain scalar reading of shared/ROUTING.md, written apart from the C kernels: full sorts
/// instead of selection, no scratch reuse. Its exp, log and sqrt(softplus) are the contract's
/// (same constants, same operation order) so that results can be compared bit for bit.
enum ReferenceRouter {
    static func expParts(_ t0: Float) -> (Float, Float) {
        if t0.isNaN { return (t0, 0) }
        let t = max(t0, -104)
        let n = (t * 1.44269504088896341 + 12582912.0) - 12582912.0
        let r = (t - n * 0.693359375) - n * -2.12194440e-4
        var p: Float = 1.9875691500e-4
        for c: Float in [1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1] {
            p = p * r + c
        }
        let hi = 1 + r
        let lo = ((1 - hi) + r) + p * (r * r)
        let e = hi + lo
        let eLo = (hi - e) + lo
        let ni = Int32(n)
        let n1 = ni / 2, n2 = ni - n1
        let s1 = Float(bitPattern: UInt32(n1 + 127) << 23), s2 = Float(bitPattern: UInt32(n2 + 127) << 23)
        return ((e * s1) * s2, (eLo * s1) * s2)
    }

    static func exp(_ t: Float) -> Float { expParts(t).0 }

    static func sigmoid(_ x: Float) -> Float {
        let (t, tl) = expParts(-abs(x))
        let d = 1 + t
        let de = (1 - d) + t
        let s0 = (x < 0 ? t : 1) / d
        let c = (x < 0 ? tl : 0) - s0 * (de + tl)
        return s0 + c * (x < 0 ? 1 - s0 : s0)
    }

    /// log(m) for m in [sqrt(1/2), sqrt(2)], plus e * ln 2 (e is 0 or 1).
    static func logReduced(_ m: Float, _ e: Float) -> Float {
        let f = m - 1
        let z = f * f
        var y: Float = 7.0376836292e-2
        for c: Float in [-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                         2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1] {
            y = y * f + c
        }
        y = y * f
        y = y * z
        y = y + e * -2.12194440e-4
        y = y - 0.5 * z
        return (f + y) + e * 0.693359375
    }

    /// sqrt(softplus(x)) (DeepSeek-V4), softplus(x) = x above 20, else log(1 + e^x).
    static func sqrtSoftplus(_ x: Float) -> Float {
        if x > 20 { return x.squareRoot() }
        if x < -17.5 { return exp(0.5 * x) }
        let (t, tl) = expParts(-abs(x))
        let u = 1 + t
        let c = (t - (u - 1)) + tl
        let big = u > 1.41421356
        let l = logReduced(big ? u * 0.5 : u, big ? 1 : 0) + c / u
        return (x > 0 ? x + l : l).squareRoot()
    }

    static func score(_ scoring: ScoringFunction, _ x: [Float]) -> [Float] {
        switch scoring {
        case .softmax: softmax(x)
        case .sigmoid: x.map(sigmoid)
        case .sqrtSoftplus: x.map(sqrtSoftplus)
        case .none: x
        }
    }

    /// Renormalisation (sum in column order; with epsilon > 0 by sum + epsilon, never skipped),
    /// then the scaling factor.
    static func finish(_ spec: LayerSpec, _ w0: [Float]) -> [Float] {
        var w = w0
        if spec.renormalize {
            var sum: Float = 0
            for v in w { sum += v }
            if spec.renormEpsilon > 0 {
                w = w.map { $0 / (sum + spec.renormEpsilon) }
            } else if sum > 0 {
                w = w.map { $0 / sum }
            }
        }
        return w.map { $0 * spec.routedScalingFactor }
    }

    /// Routes one token of a hash-routed layer: its ids are `tableRow`, its weights the layer's
    /// scores there.
    static func routeHashed(_ spec: LayerSpec, tableRow: [Int32], row x: [Float]) -> (weights: [Float], ids: [Int32], nonFinite: Int) {
        let nonFinite = x.filter { !$0.isFinite }.count
        let score = score(spec.scoring, x).map { $0.isFinite ? $0 : 0 }
        return (finish(spec, tableRow.map { score[Int($0)] }), tableRow, nonFinite)
    }

    static func softmax(_ x: [Float]) -> [Float] {
        var m = x[0]
        for v in x.dropFirst() where v > m { m = v }
        let e = x.map { exp($0 - m) }
        var lanes = [Float](repeating: 0, count: 16)
        for (i, v) in e.enumerated() { lanes[i % 16] += v }
        var w = 8
        while w >= 1 {
            for l in 0..<w { lanes[l] += lanes[l + w] }
            w /= 2
        }
        return e.map { $0 / lanes[0] }
    }

    /// Indices of `key` restricted to `allowed`, best first: larger key, then lower index.
    static func ranked(_ key: [Float], _ allowed: [Int]) -> [Int] {
        allowed.sorted { key[$0] != key[$1] ? key[$0] > key[$1] : $0 < $1 }
    }

    /// Routes one token. `bias` is the bias as the request sees it (fp32 values).
    static func route(_ spec: LayerSpec, bias: [Float]?, row x: [Float]) -> (weights: [Float], ids: [Int32], nonFinite: Int) {
        let E = spec.numExperts, k = spec.topK
        let nonFinite = x.filter { !$0.isFinite }.count
        var score: [Float]
        switch spec.method {
        case .topKSoftmax, .llama4Top1: score = x
        default: score = Self.score(spec.scoring, x)
        }
        score = score.map { $0.isFinite ? $0 : 0 }
        let key = bias.map { b in zip(score, b).map { $0 + $1 } } ?? score

        var allowed = Array(0..<E)
        let G = spec.numExpertGroup
        if spec.method.usesGroups && G > 1 {
            let P = E / G
            let groupScores: [Float] = (0..<G).map { g in
                let top = ranked(key, Array(g * P..<(g + 1) * P))
                return spec.method == .biasedGroupedTopK ? key[top[0]] + key[top[1]] : key[top[0]]
            }
            let kept = ranked(groupScores, Array(0..<G)).prefix(spec.topKGroup)
            allowed = kept.sorted().flatMap { g in Array(g * P..<(g + 1) * P) }
        }
        let ids = Array(ranked(key, allowed).prefix(k))
        var w: [Float]
        switch spec.method {
        case .topKSoftmax:
            let m = key[ids[0]]
            let e = ids.map { exp(key[$0] - m) }
            var sum: Float = 0
            for v in e { sum += v }
            w = e.map { ($0 / sum) * spec.routedScalingFactor }
        case .llama4Top1:
            w = ids.map { sigmoid(key[$0]) * spec.routedScalingFactor }
        default:
            w = finish(spec, ids.map { score[$0] })
        }
        return (w, ids.map(Int32.init), nonFinite)
    }
}
