import CFHEKernels

/// The right operand of the server's integer GEMM: a rows × columns matrix of values mod 2^64
/// (their top `bits` bits, rounded), split into the digits of one weight layout's kernel.
struct GEMMOperand {
    enum Layout {
        /// 16-column tiles for the tiled GEMM.
        case tiles
        /// Column-major digits for the GEMV (few columns).
        case columns
    }
    let kernel: ServerKernel
    let layout: Layout
    let columns: Int
    let limbs: Int
    private(set) var wide: [Int16] = []
    private(set) var narrow: [UInt8] = []

    /// An upper bound of the bytes the digits of a rows × columns operand take, whichever the
    /// kernel and layout.
    static func largestBytes(rows: Int, columns: Int, bits: Int) -> Int {
        let (wide, narrow) = (ServerKernel.int16.limbs(bits: bits), ServerKernel.bytes.limbs(bits: bits))
        return max(2 * nb_fhe_packed_limbs_count(rows, columns, wide), 2 * wide * columns * (rows + 1),
                   nb_fhe_packed_bytes_count(rows, columns, narrow), narrow * columns * (rows + 3))
    }

    /// Rows of the kernel's layout that one packing call covers (a pair or a quad).
    private static func group(_ kernel: ServerKernel) -> Int { kernel == .bytes ? 4 : 2 }

    /// From a materialized rows × columns matrix (row-major).
    init(_ values: UnsafeBufferPointer<UInt64>, rows: Int, columns: Int, bits: Int, kernel: ServerKernel, layout: Layout = .tiles) {
        precondition(values.count == rows * columns)
        (self.kernel, self.layout, self.columns) = (kernel, layout, columns)
        limbs = kernel.limbs(bits: bits)
        let (limbs, base) = (limbs, values.baseAddress!)
        switch (kernel, layout) {
        case (.int16, .tiles):
            wide = [Int16](repeating: 0, count: nb_fhe_packed_limbs_count(rows, columns, limbs))
            wide.withUnsafeMutableBufferPointer { o in
                parallelChunks((rows + 1) / 2) { r in nb_fhe_pack_limbs_range(base, rows, columns, limbs, o.baseAddress!, r.lowerBound, r.upperBound) }
            }
        case (.bytes, .tiles):
            narrow = [UInt8](repeating: 0, count: nb_fhe_packed_bytes_count(rows, columns, limbs))
            narrow.withUnsafeMutableBufferPointer { o in
                parallelChunks((rows + 3) / 4) { r in nb_fhe_pack_bytes_range(base, rows, columns, limbs, o.baseAddress!, r.lowerBound, r.upperBound) }
            }
        case (.int16, .columns):
            wide = [Int16](repeating: 0, count: limbs * columns * (rows + (rows & 1)))
            wide.withUnsafeMutableBufferPointer { nb_fhe_pack_limbs_columns(base, rows, columns, limbs, $0.baseAddress!) }
        case (.bytes, .columns):
            narrow = [UInt8](repeating: 0, count: limbs * columns * ((rows + 3) & ~3))
            narrow.withUnsafeMutableBufferPointer { nb_fhe_pack_bytes_columns(base, rows, columns, limbs, $0.baseAddress!) }
        }
    }

    /// From `bits`-bit values packed LSB-first (a wire body), rows × columns: byte tiles are
    /// read straight from the packed bits; the other layouts unpack them first.
    init(packed: [UInt8], rows: Int, columns: Int, bits: Int, kernel: ServerKernel, layout: Layout = .tiles) {
        guard kernel == .bytes, layout == .tiles, bits <= 56 else {
            let values = Parallel.unpackBits(packed, count: rows * columns, bits: bits)
            self = values.withUnsafeBufferPointer { GEMMOperand($0, rows: rows, columns: columns, bits: bits, kernel: kernel, layout: layout) }
            return
        }
        precondition(packed.count == packedByteCount(rows * columns, bits: bits))
        (self.kernel, self.layout, self.columns) = (kernel, layout, columns)
        limbs = kernel.limbs(bits: bits)
        let limbs = limbs
        narrow = [UInt8](repeating: 0, count: nb_fhe_packed_bytes_count(rows, columns, limbs))
        packed.withUnsafeBufferPointer { input in
            narrow.withUnsafeMutableBufferPointer { o in
                parallelChunks((rows + 3) / 4) { r in
                    nb_fhe_pack_bytes_from_bits(input.baseAddress!, input.count, UInt32(bits), rows, columns, limbs, o.baseAddress!, r.lowerBound, r.upperBound)
                }
            }
        }
    }

    /// Tiles from a generator: `fill(first, count, into)` writes rows [first, first + count) of
    /// the matrix (all columns, row-major) into `into`; groups of rows are packed in parallel,
    /// so the whole matrix never exists at 64 bits per value.
    init(rows: Int, columns: Int, bits: Int, kernel: ServerKernel,
         fill: (_ first: Int, _ count: Int, _ into: UnsafeMutableBufferPointer<UInt64>) -> Void) {
        (self.kernel, self.layout, self.columns) = (kernel, .tiles, columns)
        limbs = kernel.limbs(bits: bits)
        let (limbs, g) = (limbs, Self.group(kernel))
        nonisolated(unsafe) let fill = fill
        func pack(_ out: UnsafeMutableRawPointer) {
            parallelChunks((rows + g - 1) / g) { groups in
                var buffer = [UInt64](repeating: 0, count: g * columns)
                buffer.withUnsafeMutableBufferPointer { t in
                    for group in groups {
                        let first = g * group, count = min(g, rows - first)
                        fill(first, count, UnsafeMutableBufferPointer(rebasing: t[0..<(count * columns)]))
                        // The packers index rows from the matrix's start: shift the pointer back.
                        let shifted = t.baseAddress! - first * columns
                        if kernel == .bytes {
                            nb_fhe_pack_bytes_range(shifted, rows, columns, limbs, out.assumingMemoryBound(to: UInt8.self), group, group + 1)
                        } else {
                            nb_fhe_pack_limbs_range(shifted, rows, columns, limbs, out.assumingMemoryBound(to: Int16.self), group, group + 1)
                        }
                    }
                }
            }
        }
        if kernel == .bytes {
            narrow = [UInt8](repeating: 0, count: nb_fhe_packed_bytes_count(rows, columns, limbs))
            narrow.withUnsafeMutableBytes { pack($0.baseAddress!) }
        } else {
            wide = [Int16](repeating: 0, count: nb_fhe_packed_limbs_count(rows, columns, limbs))
            wide.withUnsafeMutableBytes { pack($0.baseAddress!) }
        }
    }
}

extension ServerWeights {
    /// out[o][c] += Σ_k W[o][k]·v[k][c] (mod 2^64) for the outputs in `range`; `out` is
    /// outputs × operand.columns, row-major.
    func accumulate(_ v: GEMMOperand, into out: UnsafeMutablePointer<UInt64>, outputs range: Range<Int>) {
        precondition(v.kernel == kernel, "digits for the \(v.kernel) kernel, weights laid out for \(kernel)")
        let (lo, hi) = (range.lowerBound, range.upperBound)
        switch (kernel, v.layout) {
        case (.int16, .tiles):
            values.withUnsafeBufferPointer { w in nb_fhe_limb_gemm(w.baseAddress!, paddedInputs, v.wide, v.columns, v.limbs, out, lo, hi) }
        case (.bytes, .tiles):
            bytes.withUnsafeBufferPointer { w in nb_fhe_byte_gemm(w.baseAddress!, paddedInputs, v.narrow, v.columns, v.limbs, out, lo, hi) }
        case (.int16, .columns):
            values.withUnsafeBufferPointer { w in nb_fhe_limb_gemv(w.baseAddress!, paddedInputs, v.wide, v.columns, v.limbs, out, lo, hi) }
        case (.bytes, .columns):
            bytes.withUnsafeBufferPointer { w in nb_fhe_byte_gemv(w.baseAddress!, paddedInputs, v.narrow, v.columns, v.limbs, out, lo, hi) }
        }
    }

    /// The whole product W·v (outputs × v.columns), the outputs split over the cores.
    func product(_ v: GEMMOperand) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: outputs * v.columns)
        out.withUnsafeMutableBufferPointer { o in
            parallelChunks(outputs, align: v.layout == .tiles ? 6 : 8) { accumulate(v, into: o.baseAddress!, outputs: $0) }
        }
        return out
    }
}

extension ServerWeights {
    /// The online product W·u mod 2^k for k ≤ 32 with byte weights, packed at k bits (the
    /// ``MaskedOutput`` body): every digit of u in one pass over the weights, in 32-bit lanes
    /// that wrap (exact mod 2^32, which holds 2^k), so no 64-bit results exist at all.
    func wrappingProduct(_ input: MaskedInput) -> [UInt8] {
        precondition(kernel == .bytes && input.bits <= 32 && input.features == inputs)
        let (rows, bits, limbs) = (input.rows, input.bits, ServerKernel.bytes.limbs(bits: input.bits))
        let tiles = (rows + 15) / 16
        let digits = input.body.withUnsafeBufferPointer { body in
            Parallel.uninitialized(nb_masked_digits_count(inputs, rows, limbs)) { (d: UnsafeMutableBufferPointer<UInt8>) in
                parallelChunks(tiles) { r in
                    nb_masked_pack_digits(body.baseAddress!, body.count, UInt32(bits), inputs, rows, limbs, d.baseAddress!, r.lowerBound, r.upperBound)
                }
            }
        }
        let products = digits.withUnsafeBufferPointer { d in
            bytes.withUnsafeBufferPointer { w in
                Parallel.uninitialized(outputs * rows) { (out: UnsafeMutableBufferPointer<UInt32>) in
                    parallelChunks(outputs, align: 6) { r in
                        nb_masked_gemm32(w.baseAddress!, paddedInputs, d.baseAddress!, rows, limbs, out.baseAddress!, r.lowerBound, r.upperBound)
                    }
                }
            }
        }
        return products.withUnsafeBufferPointer { v in
            Parallel.uninitialized(packedByteCount(v.count, bits: bits)) { (o: UnsafeMutableBufferPointer<UInt8>) in
                parallelChunks(v.count, align: 8) { r in
                    nb_masked_pack_bits32(v.baseAddress! + r.lowerBound, r.count, UInt32(bits), o.baseAddress! + r.lowerBound * bits / 8)
                }
            }
        }
    }
}
