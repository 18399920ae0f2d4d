import Foundation

/// Writes files so that readers see the old content or the new, never a mix: the data goes
/// to a temporary file in the same directory, is flushed to disk, and is renamed over the
/// target.
public enum AtomicFile {
    /// - Parameter durable: flush to disk before the rename (state files); a report that is
    ///   rewritten often can skip it and still never be seen half-written.
    public static func write(_ data: Data, to url: URL, permissions: Int? = nil, durable: Bool = true) throws {
        let directory = url.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let temporary = directory.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL, mode_t(permissions ?? 0o644))
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: temporary.path]) }
        var ok = true
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { ok = false; return }
                offset += n
            }
        }
        ok = ok && (!durable || fsync(fd) == 0)
        close(fd)
        guard ok, rename(temporary.path, url.path) == 0 else {
            unlink(temporary.path)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
    }

    public static func write(_ string: String, to url: URL) throws {
        try write(Data(string.utf8), to: url)
    }
}
