import Foundation

/// A small SVG line chart: log-scaled y (latency), linear or log x, one polyline per series.
struct LineChart {
    var title: String
    var xLabel: String
    var yLabel: String
    var logX: Bool
    var series: [(name: String, points: [(x: Double, y: Double)])]
    /// Series i is drawn in colour colorOf(i), dashed when dashed(i).
    var colorOf: (Int) -> Int = { $0 }
    var dashed: (Int) -> Bool = { _ in false }

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    /// Renders into a `width` x `height` panel whose top-left corner is (`ox`, `oy`).
    func render(ox: Double, oy: Double, width: Double, height: Double) -> String {
        let all = series.flatMap(\.points).filter { $0.y > 0 && (!logX || $0.x > 0) }
        guard !all.isEmpty else { return "" }
        let (l, r, t, b) = (ox + 70.0, ox + width - 20, oy + 40.0, oy + height - 50)
        func fx(_ x: Double) -> Double { logX ? log10(x) : x }
        let xs = all.map { fx($0.x) }, ys = all.map { log10($0.y) }
        let (x0, x1) = (xs.min()!, max(xs.max()!, xs.min()! + 1e-9))
        let (y0, y1) = (floor(ys.min()!), max(ceil(ys.max()!), floor(ys.min()!) + 1))
        func px(_ x: Double) -> Double { l + (fx(x) - x0) / (x1 - x0) * (r - l) }
        func py(_ y: Double) -> Double { b - (log10(y) - y0) / (y1 - y0) * (b - t) }
        var s = "<g font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<text x=\"\(ox + width / 2)\" y=\"\(oy + 20)\" text-anchor=\"middle\" font-size=\"14\">\(title)</text>\n"
        s += "<rect x=\"\(l)\" y=\"\(t)\" width=\"\(r - l)\" height=\"\(b - t)\" fill=\"none\" stroke=\"#888\"/>\n"
        var decade = y0
        while decade <= y1 {
            let y = b - (decade - y0) / (y1 - y0) * (b - t)
            s += "<line x1=\"\(l)\" y1=\"\(y)\" x2=\"\(r)\" y2=\"\(y)\" stroke=\"#ddd\"/>"
            s += "<text x=\"\(l - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(label(pow(10, decade)))</text>\n"
            decade += 1
        }
        for x in Set(all.map(\.x)).sorted() {
            s += "<text x=\"\(px(x))\" y=\"\(b + 16)\" text-anchor=\"middle\">\(label(x))</text>\n"
        }
        s += "<text x=\"\((l + r) / 2)\" y=\"\(b + 36)\" text-anchor=\"middle\">\(xLabel)</text>\n"
        s += "<text transform=\"translate(\(ox + 16),\((t + b) / 2)) rotate(-90)\" text-anchor=\"middle\">\(yLabel)</text>\n"
        for (i, serie) in series.enumerated() {
            let c = Self.colors[colorOf(i) % Self.colors.count]
            let pts = serie.points.filter { $0.y > 0 }.map { "\(px($0.x)),\(py($0.y))" }.joined(separator: " ")
            let dash = dashed(i) ? " stroke-dasharray=\"6 4\"" : ""
            s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\"\(dash) points=\"\(pts)\"/>\n"
            for p in serie.points where p.y > 0 {
                s += "<circle cx=\"\(px(p.x))\" cy=\"\(py(p.y))\" r=\"3\" fill=\"\(c)\"/>"
            }
            s += "<text x=\"\(l + 10)\" y=\"\(t + 16 + Double(i) * 15)\" fill=\"\(c)\">\(serie.name)</text>\n"
        }
        return s + "</g>\n"
    }

    private func label(_ v: Double) -> String {
        if v >= 1e6 { return "\(Int(v / 1e6))M" }
        if v >= 1e3 { return v.truncatingRemainder(dividingBy: 1000) == 0 ? "\(Int(v / 1e3))k" : String(format: "%.1fk", v / 1e3) }
        return v == v.rounded() ? "\(Int(v))" : String(format: "%.2g", v)
    }
}

/// Charts side by side in one SVG document.
func svgDocument(_ charts: [LineChart]) -> String {
    let w = 560.0, h = 380.0
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w) * max(1, charts.count))\" height=\"\(Int(h))\">\n"
    s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    for (i, c) in charts.enumerated() { s += c.render(ox: Double(i) * w, oy: 0, width: w, height: h) }
    return s + "</svg>\n"
}
