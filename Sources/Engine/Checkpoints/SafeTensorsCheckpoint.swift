import Foundation

/// A Hugging Face model directory's weights: one `model.safetensors`, or shards listed by
/// `model.safetensors.index.json`:
/// ```
/// {"metadata": {"total_size": 497759232},
///  "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", ...}}
/// ```
/// Either way the tensors are reached by name as if they were in one file.
public struct SafeTensorsCheckpoint: TensorSource, Sendable {
    public static let singleFileName = "model.safetensors"
    public static let indexFileName = "model.safetensors.index.json"

    /// The model directory.
    public let directory: URL
    /// The files, in the order tensors are listed (shards sorted by file name).
    public let files: [SafeTensorsFile]
    /// Tensor name to position in `files`.
    private let owner: [String: Int]
    /// Every tensor name: shard by shard, each in data order.
    public let tensorNames: [String]

    private struct Index: Decodable {
        var weight_map: [String: String]
    }

    /// Opens `directory/model.safetensors.index.json` and its shards if the index exists,
    /// else `directory/model.safetensors`.
    public init(directory: URL) throws(CheckpointError) {
        self.directory = directory
        let indexURL = directory.appendingPathComponent(Self.indexFileName)
        guard FileManager.default.fileExists(atPath: indexURL.path) else {
            let file = try SafeTensorsFile(url: directory.appendingPathComponent(Self.singleFileName))
            files = [file]
            tensorNames = file.tensorNames
            owner = Dictionary(uniqueKeysWithValues: file.tensorNames.map { ($0, 0) })
            return
        }

        let weightMap: [String: String]
        do {
            let data = try Data(contentsOf: indexURL)
            weightMap = try JSONDecoder().decode(Index.self, from: data).weight_map
        } catch let error as DecodingError {
            throw .badIndex(path: indexURL.path, reason: SafeTensorsFile.describe(error))
        } catch {
            throw .unreadable(path: indexURL.path, reason: error.localizedDescription)
        }
        let shardNames = Set(weightMap.values).sorted()
        for shard in shardNames where shard.isEmpty || shard.contains("/") || shard.contains("\\") || shard == ".." {
            throw .badIndex(path: indexURL.path, reason: "shard '\(shard)' is not a file name in the same directory")
        }
        var files: [SafeTensorsFile] = []
        for shard in shardNames {
            files.append(try SafeTensorsFile(url: directory.appendingPathComponent(shard)))
        }
        let position = Dictionary(uniqueKeysWithValues: shardNames.enumerated().map { ($1, $0) })
        var owner: [String: Int] = [:]
        for (name, shard) in weightMap {
            let i = position[shard]!
            guard files[i].info(name) != nil else { throw .missingTensor(path: files[i].path, tensor: name) }
            owner[name] = i
        }
        self.files = files
        self.owner = owner
        tensorNames = files.enumerated().flatMap { i, file in file.tensorNames.filter { owner[$0] == i } }
    }

    /// The directory, as errors name it.
    public var path: String { directory.path }

    /// The file holding a tensor.
    public func file(containing name: String) -> SafeTensorsFile? { owner[name].map { files[$0] } }

    /// Row-major shape, or nil when no shard holds the tensor.
    public func shape(of name: String) -> [Int]? { file(containing: name)?.shape(of: name) }

    /// The dtype as the shard's header spells it, or nil.
    public func dtype(of name: String) -> String? { file(containing: name)?.dtype(of: name) }

    /// A tensor's values as Float32, row-major (F32, F16 and BF16, exactly).
    public func float32(_ name: String) throws(CheckpointError) -> [Float] {
        guard let file = file(containing: name) else { throw .missingTensor(path: path, tensor: name) }
        return try file.float32(name)
    }

    /// Converts a tensor into caller-owned memory of exactly its element count.
    public func float32(_ name: String, into buffer: UnsafeMutableBufferPointer<Float>) throws(CheckpointError) {
        guard let file = file(containing: name) else { throw .missingTensor(path: path, tensor: name) }
        try file.float32(name, into: buffer)
    }
}
