import Foundation

/// A line chart with several named series, drawn as a standalone SVG fragment.
///
/// Output is deterministic: coordinates are printed with two decimals and series keep
/// their order, so the same data always gives the same bytes (reports can be diffed).
/// Non-finite points, and points ≤ 0 on a log axis, are left out and break the line.
public struct LineChart: Codable, Equatable, Sendable {
    public struct Point: Codable, Equatable, Sendable {
        public var x: Double
        public var y: Double
        public init(_ x: Double, _ y: Double) { self.x = x; self.y = y }
    }

    /// Stored as parallel `x` and `y` arrays: snapshots decode much faster than an array of
    /// point objects.
    public struct Series: Codable, Equatable, Sendable {
        public var name: String
        public var points: [Point]

        enum CodingKeys: String, CodingKey { case name, x, y }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(points.map(\.x), forKey: .x)
            try c.encode(points.map(\.y), forKey: .y)
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            let xs = try c.decode([Double].self, forKey: .x), ys = try c.decode([Double].self, forKey: .y)
            guard xs.count == ys.count else {
                throw DecodingError.dataCorruptedError(forKey: .y, in: c, debugDescription: "x and y differ in length")
            }
            points = zip(xs, ys).map { Point($0, $1) }
        }

        public init(name: String, points: [Point]) { self.name = name; self.points = points }
        public init(name: String, values: [Double], startingAt first: Double = 1) {
            self.init(name: name, points: values.enumerated().map { Point(first + Double($0.offset), $0.element) })
        }
    }

    public enum Scale: String, Codable, Sendable { case linear, log }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var yScale: Scale
    public var series: [Series]

    public init(title: String, xLabel: String, yLabel: String, yScale: Scale = .linear, series: [Series]) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.yScale = yScale
        self.series = series
    }

    /// Colours for up to eight series; later ones cycle. Each has at least 3:1 contrast
    /// with the white chart background (WCAG's minimum for graphics).
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#d46a00", "#9467bd", "#8c564b", "#c94ea6", "#0e8f9c"]
    /// The same hues for a dark background (the report's `prefers-color-scheme: dark`),
    /// each at least 3:1 against it.
    static let darkPalette = ["#5aa9e6", "#ff6b6b", "#5cc85c", "#ffa24a", "#b89bf0", "#c99a8a", "#f58fd4", "#3fd0dc"]

    /// Colours are presentation attributes (what a standalone SVG viewer uses) plus an
    /// inline style reading the report's CSS variable with the same colour as fallback, so
    /// the report's stylesheet can switch the chart to its dark scheme without a script:
    /// ` fill="#333" style="fill:var(--chart-fg,#333)"`.
    static func paint(_ property: String, _ variable: String, _ color: String) -> String {
        " \(property)=\"\(color)\" style=\"\(property):var(--\(variable),\(color))\""
    }

    static func seriesPaint(_ property: String, _ index: Int) -> String {
        paint(property, "series-\(index % palette.count)", palette[index % palette.count])
    }

    func usable(_ p: Point) -> Bool {
        p.x.isFinite && p.y.isFinite && (yScale == .linear || p.y > 0)
    }

    /// The SVG markup, `width` × `height` user units, scalable with the page.
    public func svg(width: Double = 720, height: Double = 360) -> String {
        // The legend is as wide as its longest name needs (about 6.2 units a character at
        // font size 11, after the 24-unit swatch), between 150 units and a third of the chart.
        let longest = Double(series.map(\.name.count).max() ?? 0)
        let legendWidth = series.count > 1 || !(series.first?.name.isEmpty ?? true) ? min(max(150, 24 + 6.2 * longest + 12), width / 3) : 0
        let left = 70.0, right = 16.0 + legendWidth, top = 34.0, bottom = 48.0
        let plotW = width - left - right, plotH = height - top - bottom
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 \(f(width)) \(f(height))\" width=\"\(f(width))\" height=\"\(f(height))\" role=\"img\" aria-label=\"\(HTML.escape(title))\">\n"
        out += "<title>\(HTML.escape(title))</title>\n"
        out += "<rect x=\"0\" y=\"0\" width=\"\(f(width))\" height=\"\(f(height))\"\(Self.paint("fill", "chart-bg", "#ffffff"))/>\n"
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\"\(Self.paint("fill", "chart-title", "#000000"))>\(HTML.escape(title))</text>\n"

        let points = series.flatMap(\.points).filter(usable)
        guard let xMin = points.map(\.x).min(), let xMax = points.map(\.x).max(),
              let yMin = points.map(\.y).min(), let yMax = points.map(\.y).max()
        else {
            out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(top + plotH / 2))\" text-anchor=\"middle\"\(Self.paint("fill", "chart-muted", "#6b6b70"))>no data</text>\n</svg>"
            return out
        }
        let xAxis = Axis.linear(xMin, xMax)
        let yAxis = yScale == .log ? Axis.log(yMin, yMax) : Axis.linear(yMin, yMax)
        func px(_ x: Double) -> Double { left + xAxis.fraction(x) * plotW }
        func py(_ y: Double) -> Double { top + (1 - yAxis.fraction(y)) * plotH }

        // Grid, ticks and labels.
        out += "<g class=\"axes\" font-size=\"11\"\(Self.paint("fill", "chart-fg", "#333"))>\n"
        for t in yAxis.ticks {
            let y = py(t)
            out += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\"\(Self.paint("stroke", "chart-grid", "#e5e5e5"))/>"
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(yAxis.label(t))</text>\n"
        }
        for t in xAxis.ticks {
            let x = px(t)
            out += "<line x1=\"\(f(x))\" y1=\"\(f(top + plotH))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH + 5))\"\(Self.paint("stroke", "chart-fg", "#333"))/>"
            out += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(xAxis.label(t))</text>\n"
        }
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\"\(Self.paint("stroke", "chart-fg", "#333"))/>\n"
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 8))\" text-anchor=\"middle\" font-size=\"12\">\(HTML.escape(xLabel))</text>\n"
        let yLabelText = yScale == .log ? "\(yLabel) (log scale)" : yLabel
        out += "<text transform=\"translate(16 \(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">\(HTML.escape(yLabelText))</text>\n"
        out += "</g>\n"

        // Series: one path per unbroken run of usable points.
        for (i, s) in series.enumerated() {
            out += "<g class=\"series\" data-name=\"\(HTML.escape(s.name))\">"
            var runs: [[Point]] = [[]]
            for p in s.points {
                if usable(p) { runs[runs.count - 1].append(p) } else if !runs[runs.count - 1].isEmpty { runs.append([]) }
            }
            for run in runs where !run.isEmpty {
                if run.count == 1 {
                    out += "<circle cx=\"\(f(px(run[0].x)))\" cy=\"\(f(py(run[0].y)))\" r=\"2.5\"\(Self.seriesPaint("fill", i))/>"
                } else {
                    let d = run.enumerated().map { "\($0.offset == 0 ? "M" : "L")\(f(px($0.element.x))) \(f(py($0.element.y)))" }.joined(separator: " ")
                    out += "<path d=\"\(d)\" fill=\"none\"\(Self.seriesPaint("stroke", i)) stroke-width=\"1.8\"/>"
                }
            }
            out += "</g>\n"
        }

        // Legend.
        if legendWidth > 0 {
            out += "<g class=\"legend\" font-size=\"11\"\(Self.paint("fill", "chart-title", "#000000"))>\n"
            for (i, s) in series.enumerated() {
                let y = top + 8 + Double(i) * 18
                let x = left + plotW + 14
                out += "<line x1=\"\(f(x))\" y1=\"\(f(y))\" x2=\"\(f(x + 18))\" y2=\"\(f(y))\"\(Self.seriesPaint("stroke", i)) stroke-width=\"3\"/>"
                out += "<text x=\"\(f(x + 24))\" y=\"\(f(y + 4))\">\(HTML.escape(s.name))</text>\n"
            }
            out += "</g>\n"
        }
        out += "</svg>"
        return out
    }

    /// Two decimals, deterministic, without `String(format:)` (slow on Linux, and charts
    /// print thousands of numbers).
    func f(_ v: Double) -> String {
        let scaled = (v * 100).rounded()
        guard scaled.isFinite, abs(scaled) < 1e15 else { return String(format: "%.2f", v) }
        let n = Int(scaled)
        let whole = n.magnitude / 100, cents = n.magnitude % 100
        return (n < 0 ? "-" : "") + String(whole) + (cents < 10 ? ".0" : ".") + String(cents)
    }
}

/// A numeric axis: the range shown, its ticks, and how values map onto it.
struct Axis: Equatable {
    var low: Double
    var high: Double
    var isLog: Bool
    var ticks: [Double]

    /// A linear axis widened to round tick values, about five ticks of step 1, 2 or 5 × 10^k.
    static func linear(_ minValue: Double, _ maxValue: Double) -> Axis {
        var lo = minValue, hi = maxValue
        if lo == hi {
            let pad = lo == 0 ? 1 : abs(lo) * 0.1
            lo -= pad
            hi += pad
        }
        let step = niceStep((hi - lo) / 5)
        // The epsilon keeps 0.3 / 0.1 = 2.9999… from adding a tick below the data.
        let first = (lo / step + 1e-9).rounded(.down) * step
        let last = (hi / step - 1e-9).rounded(.up) * step
        var ticks: [Double] = []
        var k = 0
        while true {
            let t = first + Double(k) * step
            if t > last + step * 1e-9 { break }
            ticks.append(abs(t) < step * 1e-9 ? 0 : t)
            k += 1
        }
        return Axis(low: first, high: last, isLog: false, ticks: ticks)
    }

    /// A log10 axis spanning whole decades; with fewer than three decades the 2× and 5×
    /// multiples are ticked too.
    static func log(_ minValue: Double, _ maxValue: Double) -> Axis {
        precondition(minValue > 0 && maxValue > 0, "log axis needs positive values, got \(minValue)…\(maxValue)")
        let loExp = Foundation.log10(minValue).rounded(.down)
        var hiExp = Foundation.log10(maxValue).rounded(.up)
        if loExp == hiExp { hiExp += 1 }
        var ticks: [Double] = []
        let dense = hiExp - loExp < 3
        var e = loExp
        while e <= hiExp {
            let base = pow(10, e)
            ticks.append(base)
            if dense && e < hiExp { ticks.append(2 * base); ticks.append(5 * base) }
            e += 1
        }
        return Axis(low: pow(10, loExp), high: pow(10, hiExp), isLog: true, ticks: ticks)
    }

    static func niceStep(_ raw: Double) -> Double {
        guard raw > 0, raw.isFinite else { return 1 }
        let magnitude = pow(10, Foundation.log10(raw).rounded(.down))
        let r = raw / magnitude
        let m: Double = r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10
        return m * magnitude
    }

    /// Position of `v` along the axis, 0 at `low` and 1 at `high`.
    func fraction(_ v: Double) -> Double {
        if isLog { return (Foundation.log10(v) - Foundation.log10(low)) / (Foundation.log10(high) - Foundation.log10(low)) }
        return (v - low) / (high - low)
    }

    func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        if a >= 1e5 || a < 1e-3 { return String(format: "%.0e", v) }
        if isLog { return a >= 1 ? String(format: "%.0f", v) : trimmed(String(format: "%.3f", v)) }
        let step = ticks.count > 1 ? abs(ticks[1] - ticks[0]) : 1
        let decimals = max(0, Int(-Foundation.log10(step).rounded(.down)))
        return String(format: "%.\(decimals)f", v)
    }

    private func trimmed(_ s: String) -> String {
        var s = s
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s
    }
}
