import Foundation

/// A grade-school math word problem with a worked answer that ends in the final number.
public struct MathProblem: Codable, Equatable, Sendable {
    public var question: String
    /// The worked solution, ending in `So the answer is N`.
    public var answer: String
    public var value: Int
    /// The template's name (one of ``MathProblemGenerator/templateNames``).
    public var template: String
}

/// This project's generator of math word problems: 36 templates of one to three steps
/// (sums, differences, products, fair shares, rates, percentages, ages, change, areas…),
/// numbers drawn from a seeded generator, answers computed, never divided unevenly.
public enum MathProblemGenerator {
    typealias Make = @Sendable (inout SeededGenerator) -> (question: String, steps: [String], value: Int)

    static let names = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Leo", "Maya",
                        "Nico", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe"]
    static let fruit = ["apples", "pears", "oranges", "plums", "lemons", "peaches", "apricots", "kiwis"]
    static let things = ["stickers", "marbles", "pencils", "stamps", "shells", "cards", "beads", "buttons"]

    static func r(_ g: inout SeededGenerator, _ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(g.next() % UInt64(range.count))
    }
    static func pick<T>(_ g: inout SeededGenerator, _ xs: [T]) -> T { xs[Int(g.next() % UInt64(xs.count))] }
    static func two(_ g: inout SeededGenerator) -> (String, String) {
        let a = pick(&g, names)
        var b = pick(&g, names)
        while b == a { b = pick(&g, names) }
        return (a, b)
    }

    /// Name and maker of each template.
    static let templates: [(String, Make)] = [
        ("buy-more", { g in
            let n = pick(&g, names), f = pick(&g, fruit), a = r(&g, 3...40), b = r(&g, 2...30)
            return ("\(n) has \(a) \(f) and buys \(b) more. How many \(f) does \(n) have now?", ["\(a) + \(b) = \(a + b)"], a + b) }),
        ("give-away", { g in
            let n = pick(&g, names), t = pick(&g, things), a = r(&g, 20...90), b = r(&g, 1...19)
            return ("\(n) had \(a) \(t) and gave \(b) of them to a friend. How many \(t) are left?", ["\(a) - \(b) = \(a - b)"], a - b) }),
        ("boxes", { g in
            let t = pick(&g, things), a = r(&g, 2...12), b = r(&g, 3...15)
            return ("A shop has \(a) boxes with \(b) \(t) in each box. How many \(t) are there in all?", ["\(a) * \(b) = \(a * b)"], a * b) }),
        ("share", { g in
            let (n, _) = two(&g), f = pick(&g, fruit), k = r(&g, 2...9), each = r(&g, 2...12)
            return ("\(n) shares \(k * each) \(f) equally among \(k) friends. How many \(f) does each friend get?", ["\(k * each) / \(k) = \(each)"], each) }),
        ("weekly-saving", { g in
            let n = pick(&g, names), w = r(&g, 3...15), d = r(&g, 2...9)
            return ("\(n) saves $\(d) every week. How much has \(n) saved after \(w) weeks?", ["\(d) * \(w) = \(d * w)"], d * w) }),
        ("two-friends", { g in
            let (a, b) = two(&g), t = pick(&g, things), x = r(&g, 5...40), more = r(&g, 2...20)
            return ("\(a) has \(x) \(t). \(b) has \(more) more \(t) than \(a). How many \(t) do they have together?",
                    ["\(b) has \(x) + \(more) = \(x + more)", "Together: \(x) + \(x + more) = \(2 * x + more)"], 2 * x + more) }),
        ("price-total", { g in
            let n = pick(&g, names), q = r(&g, 2...9), p = r(&g, 2...15), q2 = r(&g, 1...6), p2 = r(&g, 1...9)
            return ("\(n) buys \(q) notebooks at $\(p) each and \(q2) pens at $\(p2) each. How many dollars does \(n) spend?",
                    ["Notebooks: \(q) * \(p) = \(q * p)", "Pens: \(q2) * \(p2) = \(q2 * p2)", "Total: \(q * p) + \(q2 * p2) = \(q * p + q2 * p2)"], q * p + q2 * p2) }),
        ("change", { g in
            let n = pick(&g, names), q = r(&g, 2...6), p = r(&g, 2...9)
            let paid = (q * p / 10 + 1) * 10 + 10 * r(&g, 0...2)
            return ("\(n) buys \(q) sandwiches at $\(p) each and pays with $\(paid). How much change does \(n) get?",
                    ["Cost: \(q) * \(p) = \(q * p)", "Change: \(paid) - \(q * p) = \(paid - q * p)"], paid - q * p) }),
        ("speed", { g in
            let s = r(&g, 20...80), h = r(&g, 2...6)
            return ("A train travels at \(s) kilometres per hour. How far does it go in \(h) hours?", ["\(s) * \(h) = \(s * h)"], s * h) }),
        ("time-for-distance", { g in
            let s = r(&g, 3...15), h = r(&g, 2...9)
            return ("A cyclist rides \(s * h) kilometres at \(s) kilometres per hour. How many hours does the ride take?", ["\(s * h) / \(s) = \(h)"], h) }),
        ("percent-off", { g in
            let price = 20 * r(&g, 1...15), pct = pick(&g, [10, 20, 25, 50])
            let off = price * pct / 100
            return ("A jacket costs $\(price). It is on sale for \(pct)% off. What is the sale price in dollars?",
                    ["Discount: \(price) * \(pct) / 100 = \(off)", "Sale price: \(price) - \(off) = \(price - off)"], price - off) }),
        ("percent-of", { g in
            let total = 20 * r(&g, 1...10), pct = pick(&g, [10, 20, 25, 30, 40, 50, 75])
            return ("A class has \(total) students and \(pct)% of them walk to school. How many students walk to school?",
                    ["\(total) * \(pct) / 100 = \(total * pct / 100)"], total * pct / 100) }),
        ("age-sum", { g in
            let (a, b) = two(&g), x = r(&g, 5...15), k = r(&g, 2...4)
            return ("\(a) is \(x) years old. \(b) is \(k) times as old as \(a). What is the sum of their ages?",
                    ["\(b) is \(x) * \(k) = \(x * k)", "Sum: \(x) + \(x * k) = \(x + x * k)"], x + x * k) }),
        ("age-future", { g in
            let n = pick(&g, names), x = r(&g, 4...40), y = r(&g, 2...20)
            return ("\(n) is \(x) years old now. How old will \(n) be in \(y) years?", ["\(x) + \(y) = \(x + y)"], x + y) }),
        ("rectangle-area", { g in
            let w = r(&g, 2...20), h = r(&g, 2...20)
            return ("A garden is \(w) metres long and \(h) metres wide. What is its area in square metres?", ["\(w) * \(h) = \(w * h)"], w * h) }),
        ("rectangle-perimeter", { g in
            let w = r(&g, 2...30), h = r(&g, 2...30)
            return ("A field is \(w) metres long and \(h) metres wide. How many metres of fence go around it?",
                    ["2 * (\(w) + \(h)) = \(2 * (w + h))"], 2 * (w + h)) }),
        ("pages-per-day", { g in
            let n = pick(&g, names), d = r(&g, 3...12), p = r(&g, 5...30)
            return ("\(n) reads \(p) pages a day. How many pages does \(n) read in \(d) days?", ["\(p) * \(d) = \(p * d)"], p * d) }),
        ("pages-left", { g in
            let n = pick(&g, names), d = r(&g, 2...6), p = r(&g, 5...20), extra = r(&g, 10...80)
            let book = d * p + extra
            return ("A book has \(book) pages. \(n) reads \(p) pages a day for \(d) days. How many pages are left?",
                    ["Read: \(p) * \(d) = \(p * d)", "Left: \(book) - \(p * d) = \(extra)"], extra) }),
        ("eggs-dozen", { g in
            let d = r(&g, 2...12)
            return ("A baker uses \(d) dozen eggs. How many eggs is that?", ["\(d) * 12 = \(d * 12)"], d * 12) }),
        ("legs", { g in
            let c = r(&g, 2...20), d = r(&g, 2...20)
            return ("A farm has \(c) chickens and \(d) cows. How many legs do the animals have in all?",
                    ["Chickens: \(c) * 2 = \(2 * c)", "Cows: \(d) * 4 = \(4 * d)", "Total: \(2 * c) + \(4 * d) = \(2 * c + 4 * d)"], 2 * c + 4 * d) }),
        ("wheels", { g in
            let b = r(&g, 2...15), c = r(&g, 2...15)
            return ("A parking lot has \(b) bicycles and \(c) cars. How many wheels are there?",
                    ["Bicycles: \(b) * 2 = \(2 * b)", "Cars: \(c) * 4 = \(4 * c)", "Total: \(2 * b) + \(4 * c) = \(2 * b + 4 * c)"], 2 * b + 4 * c) }),
        ("minutes", { g in
            let h = r(&g, 1...6), m = r(&g, 1...59)
            return ("A film lasts \(h) hours and \(m) minutes. How many minutes is that?", ["\(h) * 60 + \(m) = \(h * 60 + m)"], h * 60 + m) }),
        ("teams", { g in
            let k = r(&g, 3...8), t = r(&g, 2...9)
            return ("\(k * t) children are split into teams of \(k). How many teams are there?", ["\(k * t) / \(k) = \(t)"], t) }),
        ("rows-of-seats", { g in
            let rws = r(&g, 4...20), s = r(&g, 5...20), taken = r(&g, 1...30)
            let total = rws * s, t2 = min(taken, total - 1)
            return ("A hall has \(rws) rows of \(s) seats. \(t2) seats are taken. How many seats are free?",
                    ["Seats: \(rws) * \(s) = \(total)", "Free: \(total) - \(t2) = \(total - t2)"], total - t2) }),
        ("double-then-add", { g in
            let n = pick(&g, names), t = pick(&g, things), x = r(&g, 3...30), y = r(&g, 1...20)
            return ("\(n) had \(x) \(t), doubled them, and then found \(y) more. How many \(t) does \(n) have?",
                    ["Doubled: \(x) * 2 = \(2 * x)", "Then: \(2 * x) + \(y) = \(2 * x + y)"], 2 * x + y) }),
        ("spent-half", { g in
            let n = pick(&g, names), x = 2 * r(&g, 5...50), y = r(&g, 1...20)
            return ("\(n) had $\(x), spent half of it on a game and then earned $\(y). How many dollars does \(n) have now?",
                    ["Half: \(x) / 2 = \(x / 2)", "Now: \(x / 2) + \(y) = \(x / 2 + y)"], x / 2 + y) }),
        ("tickets", { g in
            let a = r(&g, 2...8), c = r(&g, 1...8), pa = r(&g, 8...20), pc = r(&g, 3...10)
            return ("Museum tickets cost $\(pa) for adults and $\(pc) for children. What do \(a) adults and \(c) children pay in dollars?",
                    ["Adults: \(a) * \(pa) = \(a * pa)", "Children: \(c) * \(pc) = \(c * pc)", "Total: \(a * pa) + \(c * pc) = \(a * pa + c * pc)"], a * pa + c * pc) }),
        ("rain", { g in
            let d1 = r(&g, 1...20), d2 = r(&g, 1...20), d3 = r(&g, 1...20)
            return ("It rained \(d1) mm on Monday, \(d2) mm on Tuesday and \(d3) mm on Wednesday. How much rain fell in all, in mm?",
                    ["\(d1) + \(d2) + \(d3) = \(d1 + d2 + d3)"], d1 + d2 + d3) }),
        ("average", { g in
            let k = pick(&g, [2, 3, 4]), mean = r(&g, 8...50)
            var xs = (0..<(k - 1)).map { _ in r(&g, (mean - 2)...(mean + 2)) }
            xs.append(mean * k - xs.reduce(0, +))
            let sum = xs.reduce(0, +)
            return ("The scores \(xs.map(String.init).joined(separator: ", ")) were recorded. What is their average?",
                    ["Sum: \(xs.map(String.init).joined(separator: " + ")) = \(sum)", "Average: \(sum) / \(k) = \(mean)"], mean) }),
        ("pizza-slices", { g in
            let p = r(&g, 2...6), s = pick(&g, [6, 8, 10, 12]), eaten = r(&g, 1...(p * s - 1))
            return ("There are \(p) pizzas cut into \(s) slices each. The guests eat \(eaten) slices. How many slices are left?",
                    ["Slices: \(p) * \(s) = \(p * s)", "Left: \(p * s) - \(eaten) = \(p * s - eaten)"], p * s - eaten) }),
        ("hourly-wage", { g in
            let n = pick(&g, names), w = r(&g, 8...25), h = r(&g, 2...9), d = r(&g, 2...5)
            return ("\(n) earns $\(w) an hour and works \(h) hours a day for \(d) days. How many dollars does \(n) earn?",
                    ["Per day: \(w) * \(h) = \(w * h)", "In all: \(w * h) * \(d) = \(w * h * d)"], w * h * d) }),
        ("difference", { g in
            let (a, b) = two(&g), x = r(&g, 30...99), y = r(&g, 1...29)
            return ("\(a) scored \(x) points and \(b) scored \(y) points. How many more points did \(a) score?", ["\(x) - \(y) = \(x - y)"], x - y) }),
        ("bags-left-over", { g in
            let f = pick(&g, fruit), k = r(&g, 3...9), bags = r(&g, 2...12), rest = r(&g, 1...(k - 1))
            return ("\(k * bags + rest) \(f) are packed in bags of \(k). How many \(f) are left over?",
                    ["Full bags: \(k * bags + rest) / \(k) = \(bags) remainder \(rest)"], rest) }),
        ("temperature", { g in
            let t = r(&g, -5...15), up = r(&g, 2...20)
            return ("The temperature was \(t) degrees in the morning and rose by \(up) degrees. What was the temperature then?",
                    ["\(t) + \(up) = \(t + up)"], t + up) }),
        ("square-tiles", { g in
            let s = r(&g, 2...15)
            return ("A square floor is \(s) tiles long on each side. How many tiles cover it?", ["\(s) * \(s) = \(s * s)"], s * s) }),
        ("bus", { g in
            let start = r(&g, 10...40), off = r(&g, 1...9), on = r(&g, 1...15)
            return ("A bus has \(start) passengers. At a stop \(off) get off and \(on) get on. How many passengers are on the bus?",
                    ["\(start) - \(off) + \(on) = \(start - off + on)"], start - off + on) }),
    ]

    public static var templateNames: [String] { templates.map(\.0) }

    /// One problem of template `index` (numbers from `g`).
    static func make(_ index: Int, _ g: inout SeededGenerator) -> MathProblem {
        let (name, make) = templates[index]
        let (question, steps, value) = make(&g)
        let answer = steps.joined(separator: ". ") + ". So the answer is \(value)"
        return MathProblem(question: question, answer: answer, value: value, template: name)
    }

    /// `count` problems with distinct questions, cycling through the templates in a seeded
    /// order: the same seed gives the same problems.
    public static func generate(count: Int, seed: UInt64) -> [MathProblem] {
        var g = SeededGenerator(seed: seed)
        var seen = Set<String>(), out: [MathProblem] = []
        var attempts = 0
        while out.count < count && attempts < count * 50 {
            attempts += 1
            let p = make(Int(g.next() % UInt64(templates.count)), &g)
            if seen.insert(p.question).inserted { out.append(p) }
        }
        return out
    }

    /// A train and a held-out test split with no question in both.
    public static func split(train: Int, test: Int, seed: UInt64) -> (train: [MathProblem], test: [MathProblem]) {
        let all = generate(count: train + test, seed: seed)
        return (Array(all.prefix(train)), Array(all.dropFirst(train)))
    }

    /// The last integer in `text` (what exact-match accuracy compares), or nil.
    public static func finalNumber(in text: String) -> Int? {
        var last: Int?
        var current = "", negative = false
        func flush() { if !current.isEmpty, let v = Int(current) { last = negative ? -v : v }; current = ""; negative = false }
        var previous: Character = " "
        for c in text {
            if c.isASCII && c.isNumber {
                if current.isEmpty { negative = previous == "-" }
                current.append(c)
            } else if !(c == "," && !current.isEmpty) {
                flush()
            }
            previous = c
        }
        flush()
        return last
    }

    /// The problems as a JSON-lines data set with `prompt` (question) and `text` (answer)
    /// fields: trained as `question + "\n" + answer`, the loss masked over the question.
    public static func jsonl(_ problems: [MathProblem]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return problems.map { p in
            String(decoding: try! encoder.encode(["prompt": p.question + "\n", "text": p.answer]), as: UTF8.self)
        }.joined(separator: "\n") + "\n"
    }
}
