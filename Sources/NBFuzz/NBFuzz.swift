import FuzzEntries
import Foundation

// `nb-fuzz`: the fuzz targets of `FuzzEntries`.
//
// Built by `make fuzz` with `-sanitize=fuzzer,address -DNB_LIBFUZZER -parse-as-library`, it is a
// libFuzzer binary whose target is `NB_FUZZ_TARGET` (nbct, server, gguf, safetensors,
// notebook, keyring). Built normally, it replays files (`nb-fuzz TARGET FILE...`) and writes
// valid inputs to start a corpus from (`nb-fuzz --write-seeds DIR`).

#if NB_LIBFUZZER
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let target = ProcessInfo.processInfo.environment["NB_FUZZ_TARGET"] ?? "nbct"
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzEntries.run(target, bytes)
    return 0
}

// SwiftPM links an executable's `main` to `<Module>_main`; here that hands over to libFuzzer's
// driver with the target above.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

@_cdecl("NBFuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc, vector = argv
    return runFuzzerDriver(&count, &vector) { data, size in fuzzOne(data, size) }
}
#else
@main
struct NBFuzz {
    static func main() throws {
        if CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--write-seeds" {
            let written = try FuzzEntries.writeSeeds(to: URL(fileURLWithPath: CommandLine.arguments[2], isDirectory: true))
            print("nb-fuzz: wrote \(written) seed inputs under \(CommandLine.arguments[2])")
            return
        }
        let arguments = CommandLine.arguments.dropFirst()
        guard let target = arguments.first, FuzzEntries.names.contains(target) else {
            FileHandle.standardError.write(Data("usage: nb-fuzz TARGET FILE... (targets: \(FuzzEntries.names.joined(separator: ", ")))\n".utf8))
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("nb-fuzz: cannot read \(path)\n".utf8))
                exit(2)
            }
            FuzzEntries.run(target, [UInt8](data))
        }
        print("nb-fuzz: \(arguments.count - 1) input\(arguments.count == 2 ? "" : "s") of \(target) ran without a crash")
    }
}
#endif
