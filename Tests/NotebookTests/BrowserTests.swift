import Foundation
import Testing

/// Opens reports in a real browser (Debian's headless Chromium, installed by `make setup`).
@Suite struct BrowserTests {
    static func chromium() throws -> URL {
        let candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        let path = try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0) },
                                "headless Chromium is needed (Debian package `chromium`; `make setup` installs it)")
        return URL(fileURLWithPath: path)
    }

    struct Rendering {
        var consoleErrors: [String]
        var dom: String
        var width: Int, height: Int, colors: Int, inked: Double
    }

    /// Loads `page` from a file:// URL, takes a screenshot and the DOM, and collects what
    /// the page logged to the console.
    static func render(_ page: URL, in directory: URL) throws -> Rendering {
        let shot = directory.appendingPathComponent("shot-\(UUID().uuidString).png")
        let common = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                      "--user-data-dir=\(directory.appendingPathComponent("chromium-profile").path)",
                      "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"]
        let screenshot = try run(chromium(), common + ["--screenshot=\(shot.path)", page.absoluteString])
        #expect(screenshot.code == 0, "chromium failed: \(screenshot.err.suffix(2000))")
        let dump = try run(chromium(), common + ["--dump-dom", page.absoluteString])
        let console = (screenshot.err + dump.err).split(separator: "\n")
            .filter { $0.contains("CONSOLE") || $0.contains("Uncaught") }
            .filter { $0.contains("ERROR") || $0.contains("Uncaught") || $0.contains("error") }
            .map(String.init)
        let stats = try run(URL(fileURLWithPath: "/usr/bin/python3"),
                            [NbProcess.packageRoot.appendingPathComponent("Tests/NotebookTests/Support/png_stats.py").path, shot.path])
        let fields = stats.out.split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
        try #require(fields.count == 4, "png_stats: \(stats.out) \(stats.err)")
        return Rendering(consoleErrors: console, dom: dump.out, width: Int(fields[0])!, height: Int(fields[1])!,
                         colors: Int(fields[2])!, inked: Double(fields[3])!)
    }

    static func run(_ tool: URL, _ arguments: [String]) throws -> (code: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = tool
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        nonisolated(unsafe) var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    @Test func reportRendersWithoutConsoleErrors() throws {
        let w = try Workspace()
        try w.write("nb.md", RunnerProcessTests.notebook)
        try w.copyFixture("qa.txt")
        try w.write("code.jsonl", "{\"text\": \"let x = 1\"}\n")
        let result = try w.nb("nb.md")
        try #require(result.code == 0, "\(result.stderr)")

        let r = try Self.render(w.root.appendingPathComponent("outputs/nb.html"), in: w.root)
        #expect(r.consoleErrors.isEmpty, "console errors: \(r.consoleErrors)")
        #expect(r.dom.contains("Test notebook"))
        #expect(r.dom.contains("<svg"))
        #expect(r.dom.components(separatedBy: "class=\"cell ").count - 1 == 4)
        // Not a blank page: many colours and a good share of non-background pixels.
        #expect(r.width == 1200 && r.height == 1600)
        #expect(r.colors > 50, "only \(r.colors) colours in the screenshot")
        #expect(r.inked > 0.03, "only \(r.inked) of the screenshot differs from the background")
    }

    /// The checks above can fail: a page with a script error and a blank page are caught.
    @Test func detectorsCatchConsoleErrorsAndBlankPages() throws {
        let w = try Workspace()
        try w.write("broken.html", "<!DOCTYPE html><html><body><script>console.error('boom'); undefinedFunction();</script></body></html>")
        let broken = try Self.render(w.root.appendingPathComponent("broken.html"), in: w.root)
        #expect(!broken.consoleErrors.isEmpty)
        #expect(broken.inked < 0.001)
        #expect(broken.colors <= 2)
    }
}
