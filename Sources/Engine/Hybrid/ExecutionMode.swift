import Foundation

/// How the frozen linear layers run during training, generation and evaluation.
public enum ExecutionMode: String, Codable, CaseIterable, Sendable {
    /// Float32 products on the client (no quantization, no encryption).
    case torch
    /// The remote layers' products in quantized integers, in clear (`compile_hybrid`'s scheme).
    case disable
    /// The same integers, encrypted under the client's key and multiplied by the in-process
    /// server (token-packed GLWE); decrypted and finished on the client.
    case execute
    /// The same encrypted products, sent over HTTP to `nb serve` (`server:`); the client may
    /// be a deployment's client folder, without the frozen matrices.
    case remote

    /// Whether the remote layers' products are encrypted.
    public var encrypted: Bool { self == .execute || self == .remote }
}
