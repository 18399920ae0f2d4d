import Engine
import Foundation
import FuzzEntries
import Testing

/// The fuzz targets in `make test`: the committed corpus (crashers found and kept, and inputs
/// libFuzzer found interesting), the valid seeds this build writes, and a few thousand
/// deterministic mutations of them per target. Each input must end in a value or an error
/// (the entries trap on a crash or a broken invariant, which fails the test process).
@Suite struct FuzzCorpusTests {
    static let corpus = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("fuzz-corpus")

    func inputs(_ directory: URL) throws -> [String: [[UInt8]]] {
        var found: [String: [[UInt8]]] = [:]
        for target in FuzzEntries.names {
            let dir = directory.appendingPathComponent(target)
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { continue }
            found[target] = try names.sorted().map { [UInt8](try Data(contentsOf: dir.appendingPathComponent($0))) }
        }
        return found
    }

    @Test func theCommittedCorpusReplays() throws {
        let committed = try inputs(Self.corpus)
        #expect(Set(committed.keys) == Set(FuzzEntries.names), "every target has a committed corpus")
        for (target, files) in committed {
            for bytes in files { FuzzEntries.run(target, bytes) }
        }
    }

    @Test func seedsAndTheirMutationsRun() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-fuzz-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try FuzzEntries.writeSeeds(to: dir) >= 10)
        var rng = SeededGenerator(seed: 42)
        for (target, seeds) in try inputs(dir) {
            for seed in seeds {
                FuzzEntries.run(target, seed)
                for _ in 0..<300 {
                    var bytes = seed
                    // Flip, overwrite, insert or cut: the usual mutations, a few at a time.
                    for _ in 0..<(1 + Int(rng.next() % 4)) where !bytes.isEmpty {
                        let at = Int(rng.next() % UInt64(bytes.count))
                        switch rng.next() % 5 {
                        case 0: bytes[at] ^= UInt8(1 << (rng.next() % 8))
                        case 1: bytes[at] = [0, 0xFF, 0x7F, 0x80][Int(rng.next() % 4)]
                        case 2: bytes.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
                        case 3: bytes.removeSubrange(at..<min(bytes.count, at + 1 + Int(rng.next() % 16)))
                        default: bytes = Array(bytes.prefix(at))
                        }
                    }
                    FuzzEntries.run(target, bytes)
                }
            }
        }
    }
}
