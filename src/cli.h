// Command-line parsing for the shelbyfs executable (not part of the core library).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "shelbyfs/pack.h"

namespace shelbyfs::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

struct MountCommand {
    std::string manifest;    ///< path or URL, as given
    std::string mountpoint;  ///< as given
    bool foreground = false;
    bool fuse_debug = false;
    std::uint64_t cache_size = 512ull * 1024 * 1024;
    bool cache_size_given = false;
    std::uint64_t memory_limit = 0;  ///< 0: none; else sets the cache size (see cli usage)
    std::uint32_t prefetch = 32;  ///< most blocks prefetched ahead of a sequential reader; 0 = off
    unsigned threads = 16;
    std::uint64_t read_ahead = 1024 * 1024;  ///< the kernel's read-ahead for the mount; 0 = its default
    int retries = 5;
    double timeout_s = 30;
    double connect_timeout_s = 10;
    std::string log_file;
    bool debug = false;
    /// Where checkpoints go: a directory or URL; empty = beside the manifest;
    /// "off" = checkpoints/ stays an empty read-only directory.
    std::string checkpoints;
    std::string spool_dir;  ///< empty = $XDG_CACHE_HOME or ~/.cache /shelbyfs/spool
    std::uint64_t spool_size = 8ull << 30;
    std::string cache_dir;  ///< persistent block cache; empty = none
    std::uint64_t disk_cache_size = 10ull << 30;
    std::vector<std::string> fuse_args;  ///< "-o", "opt" pairs passed to libfuse
    std::string config_path;             ///< --config; empty: the default file
    std::string profile;                 ///< --profile or -o profile=
    std::vector<std::string> options_given;  ///< every -o item, in order (to re-apply over a profile)
};

/// Rebuild `m`'s settings from a profile's mount options, then the command
/// line's -o items (which win; cache_size and memory_limit replace each
/// other). Returns an error message, or "" on success.
std::string apply_profile_options(MountCommand& m, const std::vector<std::pair<std::string, std::string>>& options,
                                  const std::string& profile_origin);

/// The cache size -o memory_limit=`limit` gives.
std::uint64_t memory_limit_cache_size(std::uint64_t limit);

struct PackCommand {
    PackOptions options;
};

struct HelpCommand {
    std::string text;
};

struct VersionCommand {};

/// `shelbyfs push <out-dir> <dest>`.
struct PushCommand {
    std::string out_dir;
    std::string dest;
    int jobs = 4;
    Progress progress = Progress::Auto;
    std::string config_path;
    std::string profile;
};

/// `shelbyfs verify <manifest>`.
struct VerifyCommand {
    std::string manifest;
    int jobs = 4;
    Progress progress = Progress::Auto;
    std::string config_path;
    std::string profile;
};

/// `shelbyfs bench ARGS...`: runs tools/bench.py with ARGS.
struct BenchCommand {
    std::vector<std::string> args;
};

using Command =
    std::variant<MountCommand, PackCommand, PushCommand, VerifyCommand, HelpCommand, VersionCommand, BenchCommand>;

/// Parse argv. On a usage error returns the message (without "shelbyfs: ").
struct ParseResult {
    std::optional<Command> command;
    std::string error;
};
ParseResult parse(int argc, char** argv);

std::string usage();

}  // namespace shelbyfs::cli
