import CFHEKernels
import Foundation

/// The kernels' whole-matrix operations split over threads.
enum Parallel {
    /// An array of `count` trivial values that `fill` writes completely (no zeroing pass over
    /// tens of megabytes first).
    static func uninitialized<T: BitwiseCopyable>(_ count: Int, _ fill: (UnsafeMutableBufferPointer<T>) -> Void) -> [T] {
        Array(unsafeUninitializedCapacity: count) { buffer, initialized in
            fill(buffer)
            initialized = count
        }
    }

    /// Packs values at `bits` bits each (chunks of a multiple of 8 values start on byte boundaries).
    static func packBits(_ values: UnsafeBufferPointer<UInt64>, bits: Int) -> [UInt8] {
        uninitialized(packedByteCount(values.count, bits: bits)) { (o: UnsafeMutableBufferPointer<UInt8>) in
            // Every chunk writes its bytes, the last one its final partial byte.
            parallelChunks(values.count, align: 8) { r in
                nb_fhe_pack_bits(values.baseAddress! + r.lowerBound, r.count, UInt32(bits), o.baseAddress! + r.lowerBound * bits / 8)
            }
        }
    }

    static func unpackBits(_ bytes: [UInt8], count: Int, bits: Int) -> [UInt64] {
        bytes.withUnsafeBufferPointer { b in
            uninitialized(count) { (o: UnsafeMutableBufferPointer<UInt64>) in
                parallelChunks(count, align: 8) { r in
                    nb_fhe_unpack_bits(b.baseAddress! + r.lowerBound * bits / 8, r.count, UInt32(bits), o.baseAddress! + r.lowerBound)
                }
            }
        }
    }

    /// out (columns × rows) = inᵀ for in (rows × columns), in cache blocks.
    static func transpose<T>(_ input: UnsafePointer<T>, rows: Int, columns: Int, into out: UnsafeMutablePointer<T>) {
        let block = 32
        parallelChunks((rows + block - 1) / block) { blocks in
            for rb in blocks {
                let r0 = rb * block, r1 = min(rows, r0 + block)
                var c0 = 0
                while c0 < columns {
                    let c1 = min(columns, c0 + block)
                    for r in r0..<r1 { for c in c0..<c1 { out[c * rows + r] = input[r * columns + c] } }
                    c0 = c1
                }
            }
        }
    }
}
