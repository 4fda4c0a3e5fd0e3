// The manifest: an immutable description of shards and of the samples inside them.
//
// On-disk format (JSON, documented in man/shelbyfs-manifest.5):
//   {"format": "shelbyfs-manifest", "version": 1, "block_size": 1048576,
//    "shards":  [{"name", "location", "size", "xxh3_128", "blocks": ["<hex>", ...]}],
//    "samples": [{"path", "shard", "offset", "size", "xxh3_128"}]}
// "blocks" holds the XXH3-128 of each block_size-long piece of the shard (the
// last one shorter), so every range the mount fetches can be verified.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shelbyfs/hash.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

inline constexpr std::string_view kManifestFormat = "shelbyfs-manifest";
inline constexpr std::uint32_t kManifestVersion = 1;
inline constexpr std::uint64_t kDefaultBlockSize = 1024 * 1024;

struct ShardInfo {
    std::string name;      ///< file name shown under <mnt>/shards/, a single path component
    std::string location;  ///< relative to the manifest, absolute path, or URL
    std::uint64_t size = 0;
    ContentHash hash;
    std::vector<ContentHash> blocks;  ///< one per block_size piece
};

struct SampleInfo {
    std::string path;  ///< relative path, '/'-separated, no '.', '..' or empty components
    std::uint32_t shard = 0;
    std::uint64_t offset = 0;  ///< of the sample's data inside the shard
    std::uint64_t size = 0;
    ContentHash hash;
};

/// A parsed, validated manifest. Immutable after parse(); safe to share
/// between threads for reading.
struct Manifest {
    std::uint32_t version = kManifestVersion;
    std::uint64_t block_size = kDefaultBlockSize;
    std::vector<ShardInfo> shards;
    std::vector<SampleInfo> samples;

    /// Parse and validate JSON text. `origin` names the manifest in messages
    /// ("manifest.json: samples[3] (\"a/../b\"): path has a '..' component").
    /// Fails with InvalidArgument naming the first problem found. Streams the
    /// text through a SAX reader (no DOM), so peak memory is the text plus
    /// the result.
    static Result<Manifest> parse(std::string_view json, std::string_view origin);
    /// Check the invariants parse() enforces; used by parse and by writers.
    Result<void> validate(std::string_view origin) const;
    /// Serialize deterministically (fixed key order, two-space indent, trailing newline).
    std::string to_json() const;
};

/// True if `location` starts with a URL scheme ("http://", "https://", ...).
bool is_url(std::string_view location);
/// Resolve a shard location against the manifest's own location: absolute
/// paths and URLs pass through; relative ones are taken from the directory
/// (or URL "directory") that holds the manifest.
std::string resolve_location(std::string_view manifest_location, std::string_view location);

}  // namespace shelbyfs
