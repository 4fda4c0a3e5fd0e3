// The checkpoint index: immutable, append-only records in the store.
//
// Store layout (under the checkpoint location):
//   objects/<32 hex>                 file contents, named by XXH3-128 (`xxhsum -H2`)
//   index/<time>-<writer>-<seq>.json one record per namespace change, never rewritten
// A mount lists index/, reads every record and replays them in name order
// (time, then writer, then sequence) to rebuild names, versions and xattrs.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "shelbyfs/hash.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

inline constexpr std::string_view kIndexFormat = "shelbyfs-checkpoint-index";
inline constexpr int kIndexVersion = 1;
inline constexpr std::string_view kObjectsPrefix = "objects/";
inline constexpr std::string_view kIndexPrefix = "index/";
/// Temporary names of streamed uploads, renamed to objects/ when complete.
inline constexpr std::string_view kUploadsPrefix = "uploads/";

/// user.* extended attributes, name -> raw value bytes.
using XattrMap = std::map<std::string, std::string>;

/// The content and recorded metadata of one published version of a file.
struct ObjectRef {
    ContentHash hash;
    std::uint64_t size = 0;
    std::uint64_t block_size = 0;
    std::vector<ContentHash> blocks;  ///< hash of each block_size piece
};

/// One change to the namespace. Paths are relative to <mnt>/checkpoints,
/// '/'-separated, validated like manifest sample paths.
struct IndexOp {
    enum class Kind { Put, Meta, Unlink, Mkdir, Rmdir };
    Kind kind = Kind::Put;
    std::string path;
    ObjectRef object;             ///< Put; Meta names the version it annotates by object.hash
    mode_t mode = 0644;           ///< Put, Meta, Mkdir (permission bits only)
    std::int64_t mtime_ns = 0;    ///< Put, Meta
    XattrMap xattrs;              ///< Put, Meta: the whole user.* set of that version
};

struct IndexRecord {
    std::int64_t time_ns = 0;  ///< when it was written (wall clock), also in the key
    std::string writer;        ///< 16 hex digits naming the mount that wrote it
    std::uint64_t seq = 0;     ///< per-writer sequence number, also in the key
    std::vector<IndexOp> ops;  ///< applied in order, all or nothing

    /// The key under which the record is stored: "index/<20-digit time>-<writer>-<8-digit seq>.json".
    std::string key() const;
    std::string to_json() const;
    /// Parse and validate; errors name `origin` and what is wrong.
    static Result<IndexRecord> parse(std::string_view json, std::string_view origin);
};

/// The key of a content object: "objects/<hex>".
std::string object_key(const ContentHash& hash);

/// File name of a version under .versions/<path>/: "YYYYmmddTHHMMSS.ffffffZ-<16 hex>",
/// UTC, so names sort by time.
std::string version_name(std::int64_t time_ns, const ContentHash& hash);

/// A path as records carry it: non-empty, '/'-separated, no '.', '..' or empty
/// components, no NUL, each component at most 255 bytes.
bool valid_checkpoint_path(std::string_view path);

}  // namespace shelbyfs
