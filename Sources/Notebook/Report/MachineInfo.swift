import Engine
import Foundation

/// Facts about the machine and the build for report headers and `nb --version`.
public struct MachineInfo: Codable, Equatable, Sendable {
    public var hostname: String
    public var cpu: String
    public var cores: Int
    public var memoryGiB: Double
    public var os: String
    public var blas: String

    public static func current() -> MachineInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        let osRelease = (try? String(contentsOfFile: "/etc/os-release", encoding: .utf8)) ?? ""
        let os = osRelease.split(separator: "\n").first { $0.hasPrefix("PRETTY_NAME=") }
            .map { $0.dropFirst("PRETTY_NAME=".count).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) } ?? "unknown OS"
        return MachineInfo(
            hostname: ProcessInfo.processInfo.hostName,
            cpu: model, cores: ProcessInfo.processInfo.activeProcessorCount,
            memoryGiB: Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30),
            os: os, blas: BLAS.summary)
    }

    public var summary: String {
        "\(hostname): \(cpu), \(cores) cores, \(String(format: "%.0f", memoryGiB)) GiB, \(os)"
    }
}

/// The version of nb; part of every cell key, so a new engine re-runs cached cells.
public enum NbVersion {
    public static let string = "0.2.0"  // part of every cell key: a new version re-runs old state
}

/// The git commit of the directory holding a notebook, when it is in a repository.
enum GitInfo {
    static func commit(in directory: URL) -> String? {
        guard let head = run(["rev-parse", "--short=12", "HEAD"], in: directory) else { return nil }
        let dirty = (run(["status", "--porcelain", "--untracked-files=no"], in: directory) ?? "").isEmpty ? "" : " (modified)"
        return head + dirty
    }

    private static func run(_ arguments: [String], in directory: URL) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/git")
        process.arguments = ["-C", directory.path] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
