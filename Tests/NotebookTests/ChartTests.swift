import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import Notebook

/// Occurrences of `needle` in `text`.
private func count(_ needle: String, in text: String) -> Int {
    text.components(separatedBy: needle).count - 1
}

/// The `d` attributes of every `<path>`, each as a list of (command, x, y).
private func pathCommands(_ svg: String) -> [[(command: Character, x: Double, y: Double)]] {
    var result: [[(Character, Double, Double)]] = []
    var rest = svg[...]
    while let open = rest.range(of: "<path d=\"") {
        let after = rest[open.upperBound...]
        guard let close = after.firstIndex(of: "\"") else { break }
        let d = after[..<close]
        var commands: [(Character, Double, Double)] = []
        for slice in d.split(separator: " ", omittingEmptySubsequences: true).chunked(2) {
            let part = Array(slice)
            guard part.count == 2, let command = part[0].first,
                  let x = Double(part[0].dropFirst()), let y = Double(part[1]) else {
                Issue.record("unparseable path data: \(d)")
                return result
            }
            commands.append((command, x, y))
        }
        result.append(commands)
        rest = after[close...]
    }
    return result
}

private extension Array {
    func chunked(_ n: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: n).map { self[$0..<Swift.min($0 + n, count)] }
    }
}

/// Checks that every tag is closed in order (a fallback where no XML parser is available).
private func tagsBalanced(_ xml: String) -> Bool {
    var stack: [String] = []
    var rest = xml[...]
    while let open = rest.firstIndex(of: "<") {
        guard let close = rest[open...].firstIndex(of: ">") else { return false }
        let tag = rest[rest.index(after: open)..<close]
        rest = rest[rest.index(after: close)...]
        if tag.hasPrefix("/") {
            guard stack.popLast() == String(tag.dropFirst()) else { return false }
        } else if !tag.hasSuffix("/") {
            stack.append(String(tag.prefix { !$0.isWhitespace }))
        }
    }
    return stack.isEmpty
}

@Suite struct LineChartTests {
    static let sample = LineChart(
        title: "Loss & accuracy", xLabel: "step", yLabel: "value",
        series: [
            LineChart.Series(name: "train", values: [3.2, 2.9, 2.1, 1.7, 1.6]),
            LineChart.Series(name: "eval", points: [.init(1, 3.4), .init(3, 2.5), .init(5, 2.0)]),
        ])

    @Test func sameInputSameBytes() throws {
        let a = Self.sample.svg()
        let b = Self.sample.svg()
        #expect(a == b)
        // A chart that went through a snapshot (JSON) draws the same bytes.
        let copy = try JSONDecoder().decode(LineChart.self, from: JSONEncoder().encode(Self.sample))
        #expect(copy.svg() == a)
        // And different data gives different bytes.
        var changed = Self.sample
        changed.series[0].points[2].y = 2.2
        #expect(changed.svg() != a)
    }

    @Test(arguments: [LineChart.Scale.linear, .log])
    func svgIsWellFormedXML(scale: LineChart.Scale) throws {
        var chart = Self.sample
        chart.yScale = scale
        chart.series.append(LineChart.Series(name: "<script>alert('x')</script> & \"q\"", values: [1, 2]))
        let svg = chart.svg()
        #if canImport(FoundationXML) || os(macOS)
        let document = try XMLDocument(xmlString: svg, options: [])
        let root = try #require(document.rootElement())
        #expect(root.name == "svg")
        #expect(try root.nodes(forXPath: "//*[local-name()='path']").count == 3)
        #expect(try root.nodes(forXPath: "//*[local-name()='g'][@class='series']").count == 3)
        #else
        #expect(tagsBalanced(svg))
        #endif
        #expect(tagsBalanced(svg))
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.hasSuffix("</svg>"))
    }

    @Test func balancedTagScannerCatchesErrors() {
        #expect(tagsBalanced("<a><b/><c x=\"1\">t</c></a>"))
        #expect(!tagsBalanced("<a><b></a></b>"))
        #expect(!tagsBalanced("<a>"))
    }

    @Test func logChartDropsNonPositiveAndNaNAndBreaksThePath() {
        let values: [Double] = [1, 2, 0, 3, 4, .nan, 5, 6, -1, 7]
        let log = LineChart(title: "t", xLabel: "x", yLabel: "y", yScale: .log,
                            series: [LineChart.Series(name: "s", values: values)])
        let svg = log.svg()
        // Runs [1, 2], [3, 4], [5, 6] are lines; the lone [7] is a dot.
        #expect(count("<path", in: svg) == 3)
        #expect(count("<circle", in: svg) == 1)
        #expect(pathCommands(svg).map(\.count) == [2, 2, 2])
        #expect(pathCommands(svg).allSatisfy { $0.first?.command == "M" && $0.dropFirst().allSatisfy { $0.command == "L" } })
        #expect(svg.contains("y (log scale)"))
        #expect(!svg.contains("nan") && !svg.contains("inf"))

        // On a linear axis 0 and -1 are data; only NaN breaks the line.
        let linear = LineChart(title: "t", xLabel: "x", yLabel: "y",
                               series: [LineChart.Series(name: "s", values: values)])
        let linearSVG = linear.svg()
        #expect(count("<path", in: linearSVG) == 2)
        #expect(pathCommands(linearSVG).map(\.count) == [5, 4])
        #expect(count("<circle", in: linearSVG) == 0)
    }

    @Test func infinitePointsAreDropped() {
        let chart = LineChart(title: "t", xLabel: "x", yLabel: "y", series: [
            LineChart.Series(name: "s", points: [.init(1, 1), .init(2, .infinity), .init(3, 2), .init(.infinity, 1), .init(4, 3)]),
        ])
        let svg = chart.svg()
        // Each non-finite point (in x or y) breaks the line: three lone dots.
        #expect(count("<circle", in: svg) == 3)
        #expect(count("<path", in: svg) == 0)
        #expect(!svg.contains("inf"))
    }

    @Test func namesAreEscaped() {
        let chart = LineChart(title: "A <b> & 'c'", xLabel: "x<1", yLabel: "y&z", series: [
            LineChart.Series(name: "<script>alert(1)</script>", values: [1, 2]),
            LineChart.Series(name: "R&D", values: [2, 1]),
        ])
        let svg = chart.svg()
        #expect(!svg.contains("<script>"))
        #expect(!svg.contains("R&D"))
        #expect(!svg.contains("<b>"))
        #expect(count("&lt;script&gt;alert(1)&lt;/script&gt;", in: svg) == 2) // group name and legend
        #expect(count("R&amp;D", in: svg) == 2)
        #expect(svg.contains("<title>A &lt;b&gt; &amp; &#39;c&#39;</title>"))
        #expect(svg.contains(">x&lt;1</text>"))
        #expect(svg.contains(">y&amp;z</text>"))
    }

    @Test func noData() {
        let charts = [
            LineChart(title: "t", xLabel: "x", yLabel: "y", series: []),
            LineChart(title: "t", xLabel: "x", yLabel: "y", series: [LineChart.Series(name: "s", points: [])]),
            LineChart(title: "t", xLabel: "x", yLabel: "y", series: [LineChart.Series(name: "s", values: [.nan, .nan])]),
            LineChart(title: "t", xLabel: "x", yLabel: "y", yScale: .log, series: [LineChart.Series(name: "s", values: [0, -1, -2])]),
        ]
        for chart in charts {
            let svg = chart.svg()
            #expect(svg.contains(">no data</text>"))
            #expect(count("<path", in: svg) == 0)
            #expect(tagsBalanced(svg))
        }
        #expect(!Self.sample.svg().contains("no data"))
    }

    /// A long series name fits inside the chart: its text starts far enough from the right
    /// edge for its characters (6.2 units each at font size 11), as the train chart's
    /// "grad norm (before clipping)" did not.
    @Test func legendTextFitsTheChart() throws {
        let name = "grad norm (before clipping)"
        let chart = LineChart(title: "t", xLabel: "x", yLabel: "y",
                              series: [LineChart.Series(name: "learning rate", values: [1, 2]), LineChart.Series(name: name, values: [2, 1])])
        let svg = chart.svg(width: 720, height: 360)
        let text = try #require(svg.range(of: ">\(name)</text>"))
        let tag = try #require(svg[..<text.lowerBound].range(of: "<text x=\"", options: .backwards))
        let x = try #require(Double(svg[tag.upperBound...].prefix { $0 != "\"" }))
        #expect(x + 6.2 * Double(name.count) <= 720, "the legend text runs to \(x + 6.2 * Double(name.count)) of 720")
    }

    @Test func legendListsSeriesInOrder() throws {
        let names = ["zeta", "alpha", "mu"]
        let chart = LineChart(title: "t", xLabel: "x", yLabel: "y",
                              series: names.enumerated().map { LineChart.Series(name: $0.element, values: [Double($0.offset), 1]) })
        let svg = chart.svg()
        let legendStart = try #require(svg.range(of: "<g class=\"legend\""))
        let legend = svg[legendStart.upperBound...]
        let positions = try names.map { try #require(legend.range(of: ">\($0)</text>")).lowerBound }
        #expect(positions == positions.sorted())
        // Legend colours follow the palette in series order.
        var colours: [String.Index] = []
        for colour in LineChart.palette.prefix(3) {
            colours.append(try #require(legend.range(of: "stroke=\"\(colour)\"")).lowerBound)
        }
        #expect(colours == colours.sorted())

        // A single unnamed series needs no legend.
        let single = LineChart(title: "t", xLabel: "x", yLabel: "y", series: [LineChart.Series(name: "", values: [1, 2])])
        #expect(!single.svg().contains("class=\"legend\""))
        let named = LineChart(title: "t", xLabel: "x", yLabel: "y", series: [LineChart.Series(name: "n", values: [1, 2])])
        #expect(named.svg().contains("class=\"legend\""))
    }

    @Test(arguments: [LineChart.Scale.linear, .log])
    func pointsMapInsideThePlotRectangle(scale: LineChart.Scale) throws {
        let chart = LineChart(title: "t", xLabel: "x", yLabel: "y", yScale: scale, series: [
            LineChart.Series(name: "a", points: [.init(-3.7, 0.013), .init(0, 4.2), .init(11.2, 873), .init(20.9, 0.02)]),
            LineChart.Series(name: "b", points: [.init(2, 55), .init(3, 0.5)]),
        ])
        let width = 720.0, height = 360.0
        let svg = chart.svg(width: width, height: height)
        // Plot rectangle: the <rect fill="none"> drawn around the plot.
        let rectTags = svg.components(separatedBy: "<rect ").dropFirst().map { " " + ($0.components(separatedBy: "/>").first ?? "") }
        let rectTag = try #require(rectTags.first { $0.contains("fill=\"none\"") })
        func attribute(_ name: String) throws -> Double {
            let start = try #require(rectTag.range(of: " \(name)=\""))
            return try #require(Double(rectTag[start.upperBound...].prefix { $0 != "\"" }))
        }
        let (x0, y0, w, h) = (try attribute("x"), try attribute("y"), try attribute("width"), try attribute("height"))
        #expect(x0 > 0 && y0 > 0 && x0 + w < width && y0 + h < height)

        let paths = pathCommands(svg)
        #expect(paths.map(\.count) == [4, 2])
        let all = paths.flatMap { $0 }
        for p in all {
            #expect(p.x >= x0 && p.x <= x0 + w, "x \(p.x) outside \(x0)…\(x0 + w)")
            #expect(p.y >= y0 && p.y <= y0 + h, "y \(p.y) outside \(y0)…\(y0 + h)")
        }
        // Larger x is further right; larger y is higher up (smaller SVG y).
        let a = paths[0]
        #expect(a[0].x < a[1].x && a[1].x < a[2].x && a[2].x < a[3].x)
        #expect(a[2].y < a[1].y && a[1].y < a[0].y)
    }
}

@Suite struct AxisTests {
    static let ranges: [(Double, Double)] = [
        (0, 1), (0.3, 0.7), (-7, 3), (1, 1), (0, 0), (-5, -2), (123, 98_765),
        (1e-6, 3e-6), (0.013, 873), (1, 40), (2.5, 2.5), (-0.001, 0.001), (17, 18),
    ]

    @Test(arguments: ranges)
    func linearTicksAreRoundStepsCoveringTheData(low: Double, high: Double) throws {
        let axis = Axis.linear(low, high)
        #expect(!axis.isLog)
        #expect(axis.ticks.count >= 3 && axis.ticks.count <= 12, "\(axis.ticks)")
        #expect(axis.ticks == axis.ticks.sorted())
        let step = axis.ticks[1] - axis.ticks[0]
        #expect(step > 0)
        for (t0, t1) in zip(axis.ticks, axis.ticks.dropFirst()) {
            #expect(abs((t1 - t0) - step) <= step * 1e-9, "uneven ticks \(axis.ticks)")
        }
        let exponent = Foundation.log10(step).rounded(.down)
        let mantissa = step / pow(10, exponent)
        #expect([1.0, 2, 5, 10].contains { abs(mantissa - $0) < 1e-9 }, "step \(step) is not 1/2/5×10^k")
        // Every tick is a whole multiple of the step.
        for t in axis.ticks {
            #expect(abs(t / step - (t / step).rounded()) < 1e-6, "tick \(t) is not a multiple of \(step)")
        }
        let tolerance = step * 1e-9
        #expect(axis.ticks.first! <= low + tolerance && axis.ticks.last! >= high - tolerance,
                "\(axis.ticks) does not cover \(low)…\(high)")
        #expect(abs(axis.low - axis.ticks.first!) <= tolerance && abs(axis.high - axis.ticks.last!) <= tolerance,
                "axis \(axis.low)…\(axis.high), ticks \(axis.ticks)")
        #expect(axis.high > axis.low)
        // No wasted steps: the data reaches into the first and last intervals.
        if low < high {
            #expect(axis.ticks[1] > low - tolerance && axis.ticks[axis.ticks.count - 2] < high + tolerance)
        }
    }

    @Test func linearFractions() {
        let axis = Axis.linear(0, 10)
        #expect(axis.ticks == [0, 2, 4, 6, 8, 10])
        #expect(axis.fraction(0) == 0)
        #expect(axis.fraction(10) == 1)
        #expect(axis.fraction(5) == 0.5)
        #expect(Axis.linear(-7, 3).ticks == [-8, -6, -4, -2, 0, 2, 4])
        #expect(Axis.linear(0, 0).ticks.contains(0))
    }

    @Test func logTicksArePowersOfTenWhenWide() {
        let axis = Axis.log(0.5, 300)
        #expect(axis.isLog)
        #expect(axis.ticks == [0.1, 1, 10, 100, 1000])
        #expect(axis.low == 0.1 && axis.high == 1000)
        #expect(Axis.log(1e-4, 1).ticks == [1e-4, 1e-3, 1e-2, 1e-1, 1])
        #expect(abs(axis.fraction(1) - 0.25) < 1e-12)
        #expect(abs(axis.fraction(1000) - 1) < 1e-12)
    }

    @Test func logTicksAddTwoAndFiveUnderThreeDecades() {
        #expect(Axis.log(2, 50).ticks == [1, 2, 5, 10, 20, 50, 100])
        #expect(Axis.log(3, 7).ticks == [1, 2, 5, 10])
        let single = Axis.log(10, 10)
        #expect(single.ticks == [10, 20, 50, 100])
        #expect(single.low == 10 && single.high == 100)
    }

    @Test(arguments: [(0.013, 873.0), (2.0, 50.0), (1e-7, 1e-6), (5.0, 5.0), (0.9, 1.1), (1.0, 1e6)])
    func logTicksCoverTheData(low: Double, high: Double) {
        let axis = Axis.log(low, high)
        #expect(axis.ticks.first! <= low && axis.ticks.last! >= high)
        let powers = axis.ticks.filter { t in
            let e = Foundation.log10(t)
            return abs(e - e.rounded()) < 1e-9
        }
        #expect(powers.first == axis.ticks.first && powers.last == axis.ticks.last)
        let decades = Int((Foundation.log10(axis.high) - Foundation.log10(axis.low)).rounded())
        #expect(axis.ticks.count == (decades < 3 ? 3 * decades + 1 : decades + 1), "\(axis.ticks)")
    }

    @Test func labels() {
        let axis = Axis.linear(0, 1)
        #expect(axis.ticks.count == 6)
        #expect(axis.label(0) == "0")
        #expect(axis.label(0.4) == "0.4")
        #expect(Axis.linear(0, 1000).label(400) == "400")
        #expect(Axis.linear(0, 1e6).label(2e5) == "2e+05")
        let log = Axis.log(0.01, 10)
        #expect(log.label(0.01) == "0.01")
        #expect(log.label(0.05) == "0.05")
        #expect(log.label(10) == "10")
    }
}
