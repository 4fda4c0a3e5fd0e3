// `shelbyfs pack`: turn a directory tree of samples into tar shards and a manifest.
#pragma once

#include <cstdint>
#include <string>

#include "shelbyfs/manifest.h"
#include "shelbyfs/progress.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

struct PackOptions {
    std::string src_dir;
    std::string out_dir;
    std::uint64_t shard_size = 64ull * 1024 * 1024;
    std::uint64_t block_size = kDefaultBlockSize;
    std::string base_url;  ///< empty: shard locations relative to the manifest
    Progress progress = Progress::Auto;  ///< Auto: only when stderr is a terminal
};

struct PackSummary {
    std::uint64_t files = 0;
    std::uint64_t bytes = 0;  ///< sample bytes
    std::uint64_t shards = 0;
    std::uint64_t shard_bytes = 0;
    double seconds = 0;
};

/// Pack src_dir into out_dir/shard-NNNNNN.tar and out_dir/manifest.json.
/// Deterministic: the same tree (names and contents) gives byte-identical
/// output. On any failure nothing half-written is left: shards are written
/// under temporary names and renamed, the manifest last. Errors name the file.
Result<PackSummary> pack(const PackOptions& options);

}  // namespace shelbyfs
