/// Where a model's named Float32 tensors come from (a GGUF file, a safetensors checkpoint),
/// so model loading is written once for every format.
///
/// Shapes are row-major: the last dimension varies fastest. Names are the checkpoint's
/// own (`blk.0.attn_q.weight` in GGUF, `h.0.attn.c_attn.weight` in safetensors); models
/// rename them in their own loading code.
public protocol TensorSource {
    /// The file or directory, as errors name it.
    var path: String { get }
    /// Every tensor name, in the checkpoint's order.
    var tensorNames: [String] { get }
    /// Row-major shape, or nil when there is no such tensor.
    func shape(of name: String) -> [Int]?
    /// The tensor's values converted to Float32, row-major.
    func float32(_ name: String) throws(CheckpointError) -> [Float]
}

extension TensorSource {
    /// The tensor's values, after checking that it exists and has the shape the model expects;
    /// NaN or ±∞ anywhere is refused (``CheckpointError/nonFinite(path:tensor:index:value:)``):
    /// weights, adapters and training checkpoints are loaded through here.
    public func float32(_ name: String, shape expected: [Int]) throws(CheckpointError) -> [Float] {
        guard let found = shape(of: name) else { throw .missingTensor(path: path, tensor: name) }
        guard found == expected else {
            throw .shapeMismatch(path: path, tensor: name, expected: expected, found: found)
        }
        return try finiteFloat32(name)
    }

    /// The tensor's values, refusing NaN and ±∞ with the tensor's name. (``float32(_:)`` reads
    /// whatever the file holds, exactly.)
    public func finiteFloat32(_ name: String) throws(CheckpointError) -> [Float] {
        let values = try float32(name)
        try values.withUnsafeBufferPointer { (v) throws(CheckpointError) in try CheckpointError.checkFinite(v, path: path, tensor: name) }
        return values
    }

    /// Strict loading: throws `.unusedTensors` (in checkpoint order) when the model did not
    /// read every tensor, which usually means a key was misnamed.
    public func checkAllUsed(_ used: Set<String>) throws(CheckpointError) {
        let unused = tensorNames.filter { !used.contains($0) }
        if !unused.isEmpty { throw .unusedTensors(path: path, tensors: unused) }
    }
}

extension GGUFFile: TensorSource {
    /// Tensor names in file order.
    public var tensorNames: [String] { tensorInfos.map(\.name) }

    /// Row-major shape (GGUF `ne` reversed), or nil.
    public func shape(of name: String) -> [Int]? { info(name)?.shape }
}
