// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "nb",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "nb", targets: ["Runner"]),
        .executable(name: "nb-fuzz", targets: ["NBFuzz"]),
        .library(name: "Engine", targets: ["Engine"]),
        .library(name: "Notebook", targets: ["Notebook"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        // The deployment's HTTP server (`nb serve`); no optional traits (swift-configuration).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        // Below Hummingbird: the connection handler of `nb serve` (idle time, drain, closing on
        // errors) and its graceful shutdown.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // `nb serve --metrics`.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The `remote` mode's HTTP client (bounded answers, one deadline per exchange).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // System libraries, found with pkg-config (Debian: libcmark-gfm-dev,
        // libcmark-gfm-extensions-dev, libopenblas-dev).
        .systemLibrary(
            name: "CCmarkGFM", path: "Sources/CCmarkGFM", pkgConfig: "libcmark-gfm",
            providers: [.apt(["libcmark-gfm-dev", "libcmark-gfm-extensions-dev"])]),
        .systemLibrary(
            name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]),

        // Small C kernels with a run-time CPU check and a portable fallback.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),

        // The encrypted matmul's kernels: limb GEMM, bit packing, noise, FFTW negacyclic
        // products (Debian: libfftw3-dev).
        .target(name: "CFHEKernels", cSettings: [.unsafeFlags(["-O3"])],
                linkerSettings: [.linkedLibrary("fftw3"), .linkedLibrary("m")]),

        // Token-packed GLWE over Z_2^64: keys, encryption, the server's product, wire format.
        .target(
            name: "FHE",
            dependencies: ["CFHEKernels", .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "_CryptoExtras", package: "swift-crypto")]),

        // Tensors, data sets, models, training (grows with the engine issues). Swift code is
        // built with its checks (bounds, overflow) like FHE above: both read untrusted bytes
        // (wire format, HTTP bodies, GGUF, safetensors, state files, mask stores), and the hot
        // loops are the C kernels (CKernels, CFHEKernels) and OpenBLAS; dropping the checks
        // (-Ounchecked) was measured to gain little (README, Security).
        .target(
            name: "Engine",
            dependencies: ["COpenBLAS", "CKernels", "FHE", .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "AsyncHTTPClient", package: "async-http-client"),
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio")]),

        // Markdown -> cells -> steps -> state -> HTML report.
        .target(
            name: "Notebook",
            dependencies: [
                "CCmarkGFM", "Engine", "FHE",
                .product(name: "Yams", package: "Yams"),
            ]),

        // `nb serve`: a deployment's server folder over HTTP (Hummingbird).
        .target(
            name: "Serve",
            dependencies: ["Engine", "FHE", .product(name: "Hummingbird", package: "hummingbird"),
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "Prometheus", package: "swift-prometheus")]),

        // The `nb` executable.
        .executableTarget(
            name: "Runner",
            dependencies: [
                "Notebook", "Engine", "Serve",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        // The readers of untrusted bytes as fuzz targets, and `nb-fuzz` to run them (libFuzzer
        // under `make fuzz`, a corpus replayer otherwise).
        .target(name: "FuzzEntries", dependencies: ["Engine", "FHE", "Notebook"]),
        .executableTarget(name: "NBFuzz", dependencies: ["FuzzEntries"]),

        .executableTarget(
            name: "Benchmarks", dependencies: ["Notebook", "Engine", "FHE", "CCmarkGFM", "COpenBLAS"], path: "Benchmarks"),

        .testTarget(name: "NotebookTests", dependencies: ["Notebook", "Engine", "FHE", "FuzzEntries", "Serve"],
                    exclude: ["Support/png_stats.py"], resources: [.copy("Fixtures")]),
        .testTarget(name: "FHETests", dependencies: ["FHE", "CFHEKernels", "COpenBLAS"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "CKernels"], resources: [.copy("Fixtures")]),
    ]
)
