import Engine
import FHE
import Foundation
import Notebook

/// The readers of untrusted bytes, as fuzz targets: each takes any bytes and must end in a
/// value or a thrown error, never a crash, a hang or an allocation the input chose. The same
/// entries run under libFuzzer (`make fuzz`) and replay the committed corpus in `make test`.
///
/// Beyond "no crash", each checks what its reader promises (a violation traps, so the fuzzer
/// reports it): errors print as one bounded line; what parses, re-serializes to the same bytes.
public enum FuzzEntries {
    public static let names = ["nbct", "server", "gguf", "safetensors", "notebook", "keyring"]

    /// Runs the entry `name` on `bytes`.
    public static func run(_ name: String, _ bytes: [UInt8]) {
        switch name {
        case "nbct": nbct(bytes)
        case "server": server(bytes)
        case "gguf": gguf(bytes)
        case "safetensors": safetensors(bytes)
        case "notebook": notebook(bytes)
        case "keyring": keyring(bytes)
        default: preconditionFailure("unknown fuzz target \(name); known: \(names.joined(separator: ", "))")
        }
    }

    /// Every message of the NBCT wire format; a message that parses round-trips byte for byte.
    static func nbct(_ bytes: [UInt8]) {
        if let m = try? EncryptedMatrix(serialized: bytes) { check(m.serialized() == bytes, "EncryptedMatrix round trip") }
        if let p = try? EncryptedProduct(serialized: bytes) { check(p.serialized() == bytes, "EncryptedProduct round trip") }
        if let m = try? MaskedInput(serialized: bytes) { check(m.serialized() == bytes, "MaskedInput round trip") }
        if let m = try? MaskedOutput(serialized: bytes) { check(m.serialized() == bytes, "MaskedOutput round trip") }
        if let p = try? FHEParameters(serialized: bytes) { check(p.serialized() == bytes, "FHEParameters round trip") }
        if let s = try? EncryptedMatrix.Shape(prefix: bytes) { check(s.messageBytes >= EncryptedMatrix.Shape.byteCount, "shape") }
        _ = try? MaskedInput.Shape(prefix: bytes)
        do { _ = try EncryptedMatrix(serialized: bytes) } catch { printable(error.description) }
        do { _ = try MaskedInput(serialized: bytes) } catch { printable(error.description) }
    }

    /// A small server module (8 → 16, 8-bit weights): the HTTP route's admission from the
    /// header, then the product, both protocols. The first byte picks the route.
    static let weights: RemoteModuleWeights = {
        let w = try! ServerWeights(outputs: 16, inputs: 8) { o, k in (o * 37 + k * 11) % 255 - 127 }
        return RemoteModuleWeights(modules: ["m": (w, w.transposed())])
    }()

    static func server(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let request = Array(bytes.dropFirst())
        let masked = first & 1 == 1, direction: ProductDirection = first & 2 == 0 ? .forward : .backward
        let header = RemoteModuleWeights.headerBytes(masked: masked)
        let admission: RequestAdmission
        do {
            admission = try weights.admit(module: "m", direction: direction, masked: masked, prefix: Array(request.prefix(header)))
        } catch {
            printable(error.description)
            return
        }
        check(admission.peakBytes > 0 && admission.messageBytes >= header, "admission")
        // The route reads exactly the declared length; bound the work as the memory budget would.
        guard request.count == admission.messageBytes, admission.peakBytes <= 256 << 20 else { return }
        do {
            let answer = masked ? try weights.respondMasked(module: "m", direction: direction, request: request)
                : try weights.respond(module: "m", direction: direction, request: request)
            check(!answer.isEmpty, "empty answer")
        } catch {
            printable(error.description)
        }
    }

    static func gguf(_ bytes: [UInt8]) { tensors { () throws(CheckpointError) in try GGUFFile(bytes: bytes, path: "fuzz.gguf") } }

    static func safetensors(_ bytes: [UInt8]) { tensors { () throws(CheckpointError) in try SafeTensorsFile(bytes: bytes, path: "fuzz.safetensors") } }

    /// Opens a checkpoint and converts its first 64 tensors of at most 2^22 values, as loading does.
    static func tensors(_ open: () throws(CheckpointError) -> some TensorSource) {
        do {
            let file = try open()
            for name in file.tensorNames.prefix(64) {
                let count = (file.shape(of: name) ?? []).reduce(1) { n, d in
                    let (p, overflow) = n.multipliedReportingOverflow(by: d)
                    return overflow ? Int.max : p
                }
                guard count <= 1 << 22 else { continue }
                do { _ = try file.finiteFloat32(name) } catch { printable(error.description) }
            }
        } catch {
            printable(error.description)
        }
    }

    /// A notebook: Markdown, cells, headers, and every cell body decoded for its step (YAML).
    static func notebook(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        let url = URL(fileURLWithPath: "/fuzz/notebook.md")
        let source = NotebookSource.parseCollectingErrors(text, url: url, displayPath: "notebook.md")
        for error in source.errors { printable(error.description) }
        for cell in source.cells.prefix(32) {
            do { _ = try StepRegistry.standard.prepare(cell, body: cell.body, file: "notebook.md") } catch { printable(error.description) }
        }
    }

    static func keyring(_ bytes: [UInt8]) {
        do { _ = try Keyring(serialized: bytes) } catch { printable(error.description) }
    }

    /// Valid inputs of each target (messages this build writes), under `directory/TARGET/`:
    /// where a corpus starts, so the fuzzer mutates real structure. Returns how many.
    public static func writeSeeds(to directory: URL) throws -> Int {
        var written = 0
        func write(_ target: String, _ name: String, _ bytes: [UInt8]) throws {
            let dir = directory.appendingPathComponent(target, isDirectory: true)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try Data(bytes).write(to: dir.appendingPathComponent(name))
            written += 1
        }
        let keyring = Keyring()
        let client = FHEClient(keyring: keyring)
        let w = weights.modules["m"]!.forward
        for rows in [1, 3] {
            let x = (0..<(rows * 8)).map { Int64($0 % 255) - 127 }
            let plan = try CallPlan.choose(for: w.shape(rows: rows, maxAbsInput: 127))
            let request = client.encrypt(x, rows: rows, features: 8, plan: plan).serialized()
            try write("nbct", "input-\(rows)", request)
            try write("server", "he-forward-\(rows)", [0] + request)
            let answer = try weights.respond(module: "m", direction: .forward, request: request)
            try write("nbct", "product-\(rows)", answer)
            let bits = try CallPlan.messageBits(for: w.shape(rows: 1, maxAbsInput: 255))
            var pads = PadExpander(seed: MaskSeed(bytes: [UInt8](repeating: 7, count: MaskSeed.byteCount)), bits: bits)
            let r = pads.pads(first: 0, count: rows, features: 8)
            let masked = x.withUnsafeBufferPointer { xs in r.withUnsafeBufferPointer { MaskedProduct.blind(xs, pads: $0, rows: rows, features: 8, bits: bits) } }
            try write("nbct", "masked-input-\(rows)", masked.serialized())
            try write("server", "masked-forward-\(rows)", [1] + masked.serialized())
            try write("nbct", "masked-output-\(rows)", try weights.respondMasked(module: "m", direction: .forward, request: masked.serialized()))
        }
        try write("nbct", "parameters", FHEParameters.glwe2048.serialized())
        try write("keyring", "keyring", keyring.serialized(all: false))
        let tensors = directory.appendingPathComponent("tensors.safetensors")
        try SafeTensorsWriter.write([(name: "a", shape: [2, 3], values: [1, 2, 3, 4, 5, 6]), (name: "b", shape: [4], values: [0.5, -1, 2, 0])],
                                    to: tensors)
        try write("safetensors", "two-tensors", [UInt8](try Data(contentsOf: tensors)))
        try FileManager.default.removeItem(at: tensors)
        try write("notebook", "cells", Array("""
            # A notebook

            ```nb load_model
            model: gpt2
            ```

            ```nb train id=t
            epochs: 1
            batch_size: 2
            learning_rate: 1e-3
            ```

            """.utf8))
        return written
    }

    /// An error is one line of bounded length (a message quoting megabytes of input, or its
    /// control characters, is a bug).
    static func printable(_ message: String) {
        check(message.utf8.count <= 16 << 10, "error message of \(message.utf8.count) bytes")
        check(!message.contains("\u{0}"), "NUL in an error message")
    }

    static func check(_ condition: Bool, _ what: @autoclosure () -> String) {
        if !condition { fatalError("fuzz invariant violated: \(what())") }
    }
}
