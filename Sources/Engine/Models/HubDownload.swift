import Crypto
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Downloads a model's files from the Hugging Face hub (or a mirror), checked and stored
/// atomically in nb's cache.
///
/// - Endpoint: `$HF_ENDPOINT`, else `https://huggingface.co`; `HF_HUB_OFFLINE=1` (or
///   `NB_HUB_OFFLINE=1`) turns downloads off. A file comes from
///   `{endpoint}/{repo}/resolve/{revision}/{file}`; `$HF_TOKEN` is sent as a Bearer token.
/// - Checks: the hub names each file's content in its ETag: the SHA-256 of a large (LFS)
///   file, in `X-Linked-Etag` on the redirect to its storage, and the git blob SHA-1 of a
///   small one. A download whose bytes do not match is an error and is not kept; a file
///   with neither header is rejected unless the caller allows it (`requireChecksum`).
/// - Storage: each file is written to a temporary name beside its destination, checked,
///   then renamed into place; the folder counts as complete only when every file is there.
public enum HubDownload {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The endpoint, or nil when downloads are off.
    public static var endpoint: URL? {
        let env = ProcessInfo.processInfo.environment
        for key in ["HF_HUB_OFFLINE", "NB_HUB_OFFLINE"] where ["1", "true", "yes"].contains(env[key]?.lowercased() ?? "") { return nil }
        if let custom = env["HF_ENDPOINT"], !custom.isEmpty { return URL(string: custom) }
        return URL(string: "https://huggingface.co")
    }

    /// Downloads `files` of `repo` into `directory` (created), skipping those already there.
    /// `timeout`: seconds without progress before a request fails.
    /// `endpoint`: nil for ``endpoint``'s (the environment's).
    public static func fetch(repo: String, revision: String = "main", files: [String], into directory: URL,
                             endpoint: URL? = nil, timeout: TimeInterval = 30, requireChecksum: Bool = true) throws(Failure) {
        guard let endpoint = endpoint ?? Self.endpoint else { throw Failure(description: "downloads from the hub are off (HF_HUB_OFFLINE)") }
        do { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
            throw Failure(description: "cannot create \(directory.path): \(error.localizedDescription)")
        }
        for file in files {
            let target = directory.appendingPathComponent(file)
            if FileManager.default.fileExists(atPath: target.path) { continue }
            let url = endpoint.appendingPathComponent(repo).appendingPathComponent("resolve").appendingPathComponent(revision).appendingPathComponent(file)
            try download(url, to: target, timeout: timeout, requireChecksum: requireChecksum)
        }
    }

    /// Records the headers of redirects (where the hub puts `X-Linked-Etag`).
    private final class RedirectRecorder: NSObject, URLSessionTaskDelegate, @unchecked Sendable {
        var linkedETag: String?
        func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                        newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
            if let tag = response.value(forHTTPHeaderField: "X-Linked-Etag") { linkedETag = tag }
            var next = request
            // The token goes to the hub only, never to the storage it redirects to.
            if request.url?.host != task.originalRequest?.url?.host { next.setValue(nil, forHTTPHeaderField: "Authorization") }
            completionHandler(next)
        }
    }

    private static func download(_ url: URL, to target: URL, timeout: TimeInterval, requireChecksum: Bool) throws(Failure) {
        var request = URLRequest(url: url, timeoutInterval: timeout)
        if let token = ProcessInfo.processInfo.environment["HF_TOKEN"], !token.isEmpty {
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        }
        let recorder = RedirectRecorder()
        let session = URLSession(configuration: .ephemeral, delegate: recorder, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        nonisolated(unsafe) var outcome: (URL?, URLResponse?, Error?)
        let done = DispatchSemaphore(value: 0)
        // The body goes to a temporary file, not memory (model files are hundreds of MB).
        let task = session.downloadTask(with: request) { file, response, error in
            var kept: URL?
            if let file {  // the system deletes `file` when this handler returns: move it first
                let moved = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).\(UUID().uuidString).part")
                if (try? FileManager.default.moveItem(at: file, to: moved)) != nil { kept = moved }
            }
            outcome = (kept, response, error)
            done.signal()
        }
        task.resume()
        done.wait()
        let (file, response, error) = outcome
        if let error { throw Failure(description: "\(url.absoluteString): \(error.localizedDescription)") }
        guard let http = response as? HTTPURLResponse, let file else { throw Failure(description: "\(url.absoluteString): no response") }
        var keep = false
        defer { if !keep { try? FileManager.default.removeItem(at: file) } }
        guard http.statusCode == 200 else { throw Failure(description: "\(url.absoluteString): HTTP \(http.statusCode)") }
        func unquoted(_ s: String?) -> String? {
            guard var s = s?.trimmingCharacters(in: .whitespaces) else { return nil }
            if s.hasPrefix("W/") { s.removeFirst(2) }
            return s.trimmingCharacters(in: CharacterSet(charactersIn: "\"")).lowercased()
        }
        let tags = [unquoted(recorder.linkedETag), unquoted(http.value(forHTTPHeaderField: "X-Linked-Etag")), unquoted(http.value(forHTTPHeaderField: "ETag"))].compactMap { $0 }
        let hex = CharacterSet(charactersIn: "0123456789abcdef")
        func isHex(_ s: String, _ n: Int) -> Bool { s.count == n && s.unicodeScalars.allSatisfy(hex.contains) }
        if let sha256 = tags.first(where: { isHex($0, 64) }) {
            do { try SHA256Digest.verify(fileAt: file, expected: sha256) } catch {
                throw Failure(description: "\(url.absoluteString): the download's SHA-256 is not the hub's \(sha256) (\(error))")
            }
        } else if let sha1 = tags.first(where: { isHex($0, 40) }) {
            let found = try gitBlobSHA1(file)
            guard found == sha1 else { throw Failure(description: "\(url.absoluteString): the download's git blob SHA-1 \(found) is not the hub's \(sha1)") }
        } else if requireChecksum {
            throw Failure(description: "\(url.absoluteString): the server gave no checksum (ETag) to check the download against")
        }
        guard rename(file.path, target.path) == 0 else {
            throw Failure(description: "cannot move the download into \(target.path): \(String(cString: strerror(errno)))")
        }
        keep = true
    }

    /// Git's object id of a file: SHA-1 of "blob <size>\0" + content.
    static func gitBlobSHA1(_ file: URL) throws(Failure) -> String {
        guard let handle = try? FileHandle(forReadingFrom: file) else { throw Failure(description: "cannot read \(file.path)") }
        defer { try? handle.close() }
        let size = ((try? FileManager.default.attributesOfItem(atPath: file.path))?[.size] as? NSNumber)?.intValue ?? 0
        var hasher = Insecure.SHA1()
        hasher.update(data: Data("blob \(size)\0".utf8))
        while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
