import Crypto
import Foundation
import CKernels

/// SHA-256 digests as lowercase hex, for cell keys, data files and downloaded models.
public enum SHA256Digest {
    public static func hex(_ data: Data) -> String { hex(digest: SHA256.hash(data: data)) }
    public static func hex(_ bytes: [UInt8]) -> String { hex(digest: SHA256.hash(data: bytes)) }

    static func hex<D: Sequence>(digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func hex(_ string: String) -> String { hex(Data(string.utf8)) }

    /// Digest of a file, streamed in 4 MiB chunks so large model files need no copy in memory.
    public static func hex(fileAt url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
        return hex(digest: hasher.finalize())
    }
}

/// This process's memory, from /proc/self/status.
public enum ProcessMemory {
    /// The peak resident set (VmHWM), in MiB; 0 where /proc is not available.
    public static func peakResidentMB() -> Double { statusField("VmHWM:") }

    /// The current resident set (VmRSS), in MiB; 0 where /proc is not available.
    public static func residentMB() -> Double { statusField("VmRSS:") }

    static func statusField(_ name: String) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix(name) {
            let kb = Double(line.split(separator: " ").dropFirst().first { !$0.isEmpty && $0.allSatisfy(\.isNumber) } ?? "0") ?? 0
            return kb / 1024
        }
        return 0
    }

    /// Hands the allocator's free memory back to the system (glibc keeps freed blocks of its
    /// heaps and arenas for reuse; between notebook cells that is memory no later cell may
    /// need). A no-op elsewhere.
    public static func returnFreeMemory() {
        _ = nb_release_free_memory()
    }

    /// Starts a new peak: Linux resets VmHWM to the current resident set when "5" is written
    /// to /proc/self/clear_refs (since 4.0). Returns false where that is not available, and
    /// the peak then stays the process's.
    @discardableResult
    public static func resetPeak() -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? handle.close() }
        do { try handle.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
    }
}
